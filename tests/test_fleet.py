"""The role rolled out over SSH to a fleet of hosts with real systemd as PID 1 (issue 13).

Three systemd-nspawn hosts booted by the project's own scripts (tests/fleet/, tests/fleetkit.py),
each seeing the lab's libvirtd through its read-only socket only. The tests run in order and
build on each other, as a fleet's life does: --check on fresh hosts, the first rollout (offline,
from a wheelhouse built here), limits and hardening read where they are enforced, an idempotent
re-run and --check --diff, a config change, an upgrade, a broken build stopped at the canary and
rolled back, the watchdog, and Prometheus scraping the hosts the rollout listed.

Figures (durations, memory per host) go to bench-results/fleet-suite.json.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleetkit import Fleet

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
PORT = 9730
VENV = "/opt/hostcollector/venv"
WATCHDOG_SECONDS = 6
FIGURES: dict[str, Any] = {}
REQUIRED = os.environ.get("HOSTCOLLECTOR_LAB") == "required"


def need(condition: bool, reason: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(f"HOSTCOLLECTOR_LAB=required but {reason}")
        pytest.skip(reason)


# --- The controller's side: wheelhouses and the playbook --------------------------------------


def build_release(workdir: Path, name: str, version: str, patch: str = "") -> Path:
    """A wheelhouse of this checkout at `version`; `patch` is Python appended to cli.py."""
    src = workdir / f"src-{name}"
    shutil.copytree(REPO / "hostcollector", src / "hostcollector",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, src / file)
    init = src / "hostcollector" / "__init__.py"
    init.write_text(
        re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text())
    )
    if patch:
        cli = src / "hostcollector" / "cli.py"
        cli.write_text(cli.read_text() + "\n" + patch)
    out = workdir / f"wheelhouse-{name}"
    subprocess.run(
        [ANSIBLE / "build-wheelhouse", src, out],
        check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")},
    )  # fmt: skip
    return out


# A build whose daemon exits at start: systemd's restart fails, the canary fails its check.
BROKEN = """
def _run(config):  # noqa: F811 - this build is broken on purpose (tests/test_fleet.py)
    print("hostcollector: this build is broken on purpose", file=sys.stderr)
    return 3
"""


class Controller:
    def __init__(self, fleet: Fleet, workdir: Path) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.sd_file = workdir / "prometheus" / "hostcollector_targets.json"
        self.variables: dict[str, Any] = {
            "hostcollector_listen_address": "{{ ansible_host }}",
            "hostcollector_libvirt_interval_seconds": 2,
            "hostcollector_libvirt_timeout_seconds": 1.5,
            "hostcollector_systemd_watchdog_seconds": WATCHDOG_SECONDS,
            "hostcollector_health_check_retries": 30,
            "hostcollector_health_check_delay": 1,
            "hostcollector_prometheus_sd_file": str(self.sd_file),
            "hostcollector_prometheus_labels": {"fleet": "nspawn"},
        }

    def play(self, *flags: str, **extra: Any) -> subprocess.CompletedProcess[str]:
        varfile = self.workdir / "vars.json"
        varfile.write_text(json.dumps({**self.variables, **extra}))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # The shipped ansible.cfg (roles_path, SSH pipelining), as an operator runs it.
        env.update(ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_HOST_KEY_CHECKING="0",
                   ANSIBLE_FORKS="5")  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(
            ["ansible-playbook", "-i", str(self.fleet.inventory_path),
             str(ANSIBLE / "playbooks" / "site.yml"), "-e", f"@{varfile}", *flags],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
        )  # fmt: skip
        result.seconds = time.monotonic() - started  # type: ignore[attr-defined]
        return result


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    hosts = {}
    for name, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", result.stdout, re.MULTILINE):
        hosts[name] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    assert hosts, f"no play recap:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return hosts


def played(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-8000:] + result.stderr[-3000:]


# --- The hosts' side ----------------------------------------------------------------------------


def get(address: str, path: str, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}:{PORT}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def unit_show(fleet: Fleet, host: Any, *props: str) -> dict[str, str]:
    out = fleet.ssh(
        host, "systemctl show hostcollector.service " + " ".join(f"-p {p}" for p in props)
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def main_pid(fleet: Fleet, host: Any) -> int:
    return int(unit_show(fleet, host, "MainPID")["MainPID"])


def version_on(fleet: Fleet, host: Any) -> str:
    return fleet.ssh(host, f"{VENV}/bin/hostcollector --version").stdout.split()[-1]


def assert_one_batch_after_another(fleet: Fleet) -> None:
    """Each host's daemon (re)started only after the host before it was ready: serial [1, 10%]
    on three hosts is three batches of one. Type=notify: active means READY=1 was sent. The
    hosts share the machine's kernel, so their monotonic timestamps compare."""
    timeline = []
    for host in fleet.hosts:
        show = unit_show(
            fleet, host, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic"
        )
        timeline.append(
            (
                int(show["ExecMainStartTimestampMonotonic"]),
                int(show["ActiveEnterTimestampMonotonic"]),
            )
        )
    for (_, ready_before), (start_next, _) in itertools.pairwise(timeline):
        assert start_next > ready_before, (
            f"a batch started before the one before was ready: {timeline}"
        )


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    need(os.geteuid() == 0, "boots systemd-nspawn hosts: needs root")
    need(
        shutil.which("ansible-playbook") is not None,
        "ansible-playbook is not installed (make test-deploy installs it)",
    )
    need(
        Path("/var/run/libvirt/libvirt-sock-ro").exists(),
        "the lab's libvirtd is not running (tests/lab/up.sh)",
    )
    fleet = Fleet()
    # Fresh hosts every time: hosts left by an interrupted run hold an old rollout, and a bind
    # of the libvirt socket from before a libvirtd restart points at nothing.
    fleet.down()
    started = time.monotonic()
    fleet.up(3)
    FIGURES["boot_3_hosts_seconds"] = round(time.monotonic() - started, 1)
    try:
        yield fleet
    finally:
        fleet.down()
        results = REPO / "bench-results"
        results.mkdir(exist_ok=True)
        (results / "fleet-suite.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="module")
def releases() -> Iterator[dict[str, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="hostcollector-releases-"))
    started = time.monotonic()
    built = {
        "a": build_release(workdir, "a", "0.1.0"),
        "b": build_release(workdir, "b", "0.1.1.dev1"),
        "broken": build_release(workdir, "broken", "0.1.2.dev1", BROKEN),
    }
    FIGURES["build_3_wheelhouses_seconds"] = round(time.monotonic() - started, 1)
    try:
        yield built
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def controller(fleet: Fleet, releases: dict[str, Path]) -> Iterator[Controller]:
    workdir = Path(tempfile.mkdtemp(prefix="hostcollector-controller-"))
    c = Controller(fleet, workdir)
    c.variables["hostcollector_wheelhouse"] = str(releases["a"])
    try:
        yield c
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- The rollout ---------------------------------------------------------------------------------


def test_check_on_fresh_hosts_changes_nothing(controller: Controller) -> None:
    result = controller.play("--check", "--diff")
    assert result.returncode == 0, played(result)
    for host in controller.fleet.hosts:
        assert recap(result)[host.name]["failed"] == 0
        gone = controller.fleet.ssh(
            host,
            "test ! -e /opt/hostcollector && test ! -e /etc/systemd/system/hostcollector.service && ! id hostcollector",
            check=False,
        )
        assert gone.returncode == 0, f"--check changed {host.name}"


def test_first_rollout_canary_then_batches(controller: Controller) -> None:
    fleet = controller.fleet
    result = controller.play()
    FIGURES["first_rollout_seconds"] = round(result.seconds, 1)  # type: ignore[attr-defined]
    assert result.returncode == 0, played(result)
    counts = recap(result)
    for host in fleet.hosts:
        assert counts[host.name]["failed"] == 0 and counts[host.name]["changed"] > 0
        show = unit_show(fleet, host, "ActiveState", "SubState", "Type", "WatchdogUSec")
        assert (show["ActiveState"], show["SubState"], show["Type"]) == (
            "active",
            "running",
            "notify",
        )
        assert show["WatchdogUSec"] in (f"{WATCHDOG_SECONDS}s", str(WATCHDOG_SECONDS * 1_000_000))
    assert_one_batch_after_another(fleet)
    batches = re.findall(r"^PLAY \[Roll out hostcollector\]", result.stdout, re.MULTILINE)
    assert len(batches) == 3, "not three batches"


def test_every_host_ready_and_sees_the_lab_read_only(controller: Controller) -> None:
    fleet = controller.fleet
    for host in fleet.hosts:
        assert get(host.address, "/-/ready")[0] == 200
        status, body = get(host.address, "/metrics")
        assert status == 200
        assert 'hostcollector_source_up{source="libvirt"} 1' in body, body[:2000]
        assert re.search(r'hostcollector_vm_info\{[^}]*name="hc-lab-', body), "no lab VM seen"
        # Only the read-only socket is there: the read-write one does not exist in the host.
        assert (
            fleet.ssh(
                host,
                "test -S /run/libvirt/libvirt-sock-ro && test ! -e /run/libvirt/libvirt-sock",
                check=False,
            ).returncode
            == 0
        )
        rw = fleet.ssh(host, "sudo virsh -c qemu:///system list --all", check=False)
        assert rw.returncode != 0


def test_limits_in_force_in_the_cgroup(controller: Controller) -> None:
    for host in controller.fleet.hosts:
        quota = int(controller.fleet.read_cgroup(host, "hostcollector.service", "cpu.cfs_quota_us"))
        period = int(
            controller.fleet.read_cgroup(host, "hostcollector.service", "cpu.cfs_period_us")
        )
        assert quota / period == pytest.approx(0.5), (quota, period)  # CPUQuota=50%
        limit = int(
            controller.fleet.read_cgroup(host, "hostcollector.service", "memory.limit_in_bytes")
        )
        assert limit == 256 * 1024 * 1024  # MemoryMax=256M
        # The daemon reads the same limit and exports it for the MemoryNearLimit alert.
        _, body = get(host.address, "/metrics")
        assert (
            f"hostcollector_memory_limit_bytes {limit}" in body
            or f"hostcollector_memory_limit_bytes {float(limit)}" in body
        )
        assert re.search(r"^process_resident_memory_bytes \d", body, re.MULTILINE)
        # LimitNOFILE=16384 reached the daemon (the filter leaves prlimit64 to it).
        assert re.search(r"^process_max_fds 16384", body, re.MULTILINE), "process_max_fds"


# Run under a copy of the installed unit (same hardening, this ExecStart): what the unit's
# directives do to a process under this systemd, which /proc cannot show of the daemon itself.
PROBE = r"""
import ctypes, errno, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
p = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
print("wx_mmap", "refused" if p in (None, ctypes.c_void_p(-1).value) else "allowed", errno.errorcode.get(ctypes.get_errno(), ""))
try:
    open("/usr/lib/hostcollector-probe", "w")
    print("usr_write allowed")
except OSError as exc:
    print("usr_write refused", errno.errorcode[exc.errno])
PR_GET_NO_NEW_PRIVS = 39
print("no_new_privs", libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
print("mount_syscall", "refused" if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0 else "allowed")
# The kernel path's reads of a process of another user (a QEMU runs as libvirt-qemu; here
# PID 1, root's): no ProtectProc=/ProcSubset= hides them
try:
    for name in ("stat", "task/1/stat", "task/1/schedstat", "cgroup", "cmdline"):
        open(f"/proc/1/{name}", "rb").read()
    print("proc_of_another_user readable", os.getuid())
except OSError as exc:
    print("proc_of_another_user refused", exc)
from hostcollector.sources.tap_counters import LinkDump
print("link_dump", len(LinkDump().messages()), "links")
"""


def test_hardening_in_force(controller: Controller) -> None:
    fleet = controller.fleet
    host = fleet.hosts[0]
    pid = main_pid(fleet, host)
    status = fleet.ssh(host, f"sudo cat /proc/{pid}/status").stdout
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), "NoNewPrivileges"
    assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), (
        "no seccomp filter (SystemCallFilter, MemoryDenyWriteExecute)"
    )
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), "capabilities"
    # ProtectSystem=strict, in the daemon's own mount namespace.
    usr = fleet.ssh(host, f"sudo nsenter -t {pid} -m findmnt -n -o OPTIONS --target /usr").stdout
    assert usr.split(",")[0] == "ro", usr
    probe = base64.b64encode(PROBE.encode()).decode()
    fleet.ssh(host, f"echo {probe} | base64 -d | sudo tee /usr/local/lib/hc-probe.py >/dev/null")
    fleet.ssh(host, "sed -e 's|^ExecStart=.*|ExecStart=" + VENV + "/bin/python /usr/local/lib/hc-probe.py|' "
              "-e 's|^Type=.*|Type=oneshot|' -e '/^Watchdog/d' -e '/^Restart/d' "
              "/etc/systemd/system/hostcollector.service | sudo tee /etc/systemd/system/hc-probe.service >/dev/null && "
              "sudo systemctl daemon-reload && sudo systemctl start hc-probe.service")  # fmt: skip
    out = fleet.ssh(host, "sudo journalctl -u hc-probe.service -o cat --no-pager").stdout
    fleet.ssh(
        host,
        "sudo rm -f /etc/systemd/system/hc-probe.service /usr/local/lib/hc-probe.py && sudo systemctl daemon-reload",
    )
    assert "wx_mmap refused EPERM" in out, out  # MemoryDenyWriteExecute
    assert "usr_write refused EROFS" in out, out  # ProtectSystem=strict
    assert "no_new_privs 1" in out, out
    assert "mount_syscall refused" in out, out  # SystemCallFilter ~@privileged... (@mount)
    # the kernel path (sources.libvirt.kernel_path): another user's /proc, as the service user
    readable = re.search(r"^proc_of_another_user readable (\d+)$", out, re.MULTILINE)
    assert readable and readable.group(1) != "0", out
    assert re.search(r"^link_dump [1-9]\d* links$", out, re.MULTILINE), out


def exposure(fleet: Fleet, host: Any, unit: str) -> float:
    out = fleet.ssh(host, f"sudo systemd-analyze security --no-pager {unit}", check=False)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    return float(match.group(1))


def test_systemd_analyze_security_score(controller: Controller) -> None:
    fleet = controller.fleet
    host = fleet.hosts[0]
    now = exposure(fleet, host, "hostcollector.service")
    # The same unit without what this change added (the filter and its errno), loaded beside
    # it: the score before, measured on the same systemd.
    fleet.ssh(host, "grep -v -e '^SystemCallFilter=' -e '^SystemCallErrorNumber=' "
              "/etc/systemd/system/hostcollector.service | sudo tee /etc/systemd/system/hc-before.service >/dev/null "
              "&& sudo systemctl daemon-reload")  # fmt: skip
    try:
        before = exposure(fleet, host, "hc-before.service")
    finally:
        fleet.ssh(
            host, "sudo rm -f /etc/systemd/system/hc-before.service && sudo systemctl daemon-reload"
        )
    FIGURES["systemd_analyze_security_exposure"] = {"before": before, "after": now}
    assert now < before
    assert now <= 2.0, f"exposure {now} (README: 1.7)"


def test_second_run_and_check_diff_change_nothing(controller: Controller) -> None:
    pids = {h.name: main_pid(controller.fleet, h) for h in controller.fleet.hosts}
    again = controller.play()
    FIGURES["idempotent_rerun_seconds"] = round(again.seconds, 1)  # type: ignore[attr-defined]
    assert again.returncode == 0, played(again)
    for host in controller.fleet.hosts:
        assert recap(again)[host.name]["changed"] == 0, played(again)
    check = controller.play("--check", "--diff")
    assert check.returncode == 0, played(check)
    for host in controller.fleet.hosts:
        assert recap(check)[host.name]["changed"] == 0, played(check)
    assert not re.search(r"^[-+]{3} (before|after)", check.stdout, re.MULTILINE), "a diff was shown"
    assert pids == {h.name: main_pid(controller.fleet, h) for h in controller.fleet.hosts}


def test_config_change_restarts_each_host_once_batch_by_batch(controller: Controller) -> None:
    fleet = controller.fleet
    before = {h.name: unit_show(fleet, h, "InvocationID", "NRestarts") for h in fleet.hosts}
    mark = fleet.ssh(fleet.hosts[0], "date +%s.%N").stdout.strip()
    controller.variables["hostcollector_libvirt_interval_seconds"] = 3
    result = controller.play()
    assert result.returncode == 0, played(result)
    for host in fleet.hosts:
        after = unit_show(fleet, host, "InvocationID")
        assert after["InvocationID"] != before[host.name]["InvocationID"], (
            f"{host.name} not restarted"
        )
        starts = fleet.ssh(
            host,
            f"sudo journalctl -u hostcollector.service --since=@{mark} -o cat --no-pager | grep -c '^Started hostcollector'",
            check=False,
        )
        assert starts.stdout.strip() == "1", f"{host.name} started {starts.stdout.strip()} times"
        assert (
            "interval_seconds: 3"
            in fleet.ssh(host, "sudo cat /etc/hostcollector/hostcollector.yml").stdout
        )
    assert_one_batch_after_another(fleet)


def test_upgrade_rolls_through_the_batches(
    controller: Controller, releases: dict[str, Path]
) -> None:
    fleet = controller.fleet
    controller.variables["hostcollector_wheelhouse"] = str(releases["b"])
    result = controller.play()
    FIGURES["upgrade_seconds"] = round(result.seconds, 1)  # type: ignore[attr-defined]
    assert result.returncode == 0, played(result)
    assert_one_batch_after_another(fleet)
    for host in fleet.hosts:
        assert version_on(fleet, host) == "0.1.1.dev1"
        assert get(host.address, "/-/ready")[0] == 200
        wheels = fleet.ssh(host, f"ls {VENV}/dist/wheelhouse").stdout
        assert (
            "hostcollector-0.1.1.dev1-py3-none-any.whl" in wheels
            and "hostcollector-0.1.0-" not in wheels
        )


def test_broken_build_stops_at_the_canary_and_rollback_restores(
    controller: Controller, releases: dict[str, Path]
) -> None:
    fleet = controller.fleet
    canary, *others = fleet.hosts
    pids = {h.name: main_pid(fleet, h) for h in others}
    controller.variables["hostcollector_wheelhouse"] = str(releases["broken"])
    result = controller.play()
    assert result.returncode != 0, "a broken build rolled out"
    counts = recap(result)
    assert counts[canary.name]["failed"] == 1, played(result)
    assert "broken on purpose" in result.stdout, "the failure does not show the daemon's log"
    for host in others:
        # Not reached at all: still the old build, the same process, ready.
        assert host.name not in counts or counts[host.name]["changed"] == 0, played(result)
        assert version_on(fleet, host) == "0.1.1.dev1"
        assert main_pid(fleet, host) == pids[host.name]
        assert get(host.address, "/-/ready")[0] == 200
    # Rollback: the previous release again, everywhere.
    controller.variables["hostcollector_wheelhouse"] = str(releases["b"])
    back = controller.play()
    FIGURES["rollback_seconds"] = round(back.seconds, 1)  # type: ignore[attr-defined]
    assert back.returncode == 0, played(back)
    assert recap(back)[canary.name]["changed"] > 0
    for host in others:
        assert recap(back)[host.name]["changed"] == 0
    for host in fleet.hosts:
        assert version_on(fleet, host) == "0.1.1.dev1"
        assert get(host.address, "/-/ready")[0] == 200


def test_watchdog_restarts_a_stopped_daemon(controller: Controller) -> None:
    fleet = controller.fleet
    host = fleet.hosts[1]
    pid = main_pid(fleet, host)
    restarts = int(unit_show(fleet, host, "NRestarts")["NRestarts"])
    mark = fleet.ssh(host, "date +%s.%N").stdout.strip()
    fleet.ssh(host, f"sudo kill -STOP {pid}")
    stopped = time.monotonic()

    def replaced() -> bool:
        show = unit_show(fleet, host, "MainPID", "ActiveState", "NRestarts")
        return (
            show["MainPID"] not in ("0", str(pid))
            and show["ActiveState"] == "active"
            and int(show["NRestarts"]) > restarts
        )

    # Detected WatchdogSec after the last ping (pings come every half of it, so 3-6 s after the
    # stop); SIGABRT, and SIGCONT after it, so the stopped process dies at once; RestartSec=5s;
    # the start until READY=1.
    waited = wait_for(
        replaced, WATCHDOG_SECONDS + 5 + 5 + 30, "systemd restarted the stopped daemon"
    )
    FIGURES["watchdog_stop_to_ready_again_seconds"] = round(time.monotonic() - stopped, 1)
    log = fleet.ssh(
        host,
        f"sudo journalctl -u hostcollector.service --since=@{mark} -o cat --no-pager",
        check=False,
    ).stdout
    assert "Watchdog timeout" in log, log
    assert "SIGABRT" in log, log
    assert waited >= WATCHDOG_SECONDS / 2 + 5  # the watchdog's delay and RestartSec, no sooner
    assert get(host.address, "/-/ready")[0] == 200


def test_hosts_without_nvidia_or_sriov_start_cleanly(controller: Controller) -> None:
    fleet = controller.fleet
    for host in fleet.hosts:
        assert fleet.ssh(host, "ls /dev/nvidia* 2>/dev/null | wc -l").stdout.strip() == "0"
        assert (
            fleet.ssh(
                host, "ls /sys/class/net/*/device/sriov_numvfs 2>/dev/null | wc -l"
            ).stdout.strip()
            == "0"
        )
        status, body = get(host.address, "/metrics")
        assert status == 200 and get(host.address, "/-/ready")[0] == 200
        for source in ("nvml", "sriov"):
            assert re.search(rf'hostcollector_source_up\{{source="{source}"\}} [01]', body), source
        # The daemon's own lines (identifier hostcollector; systemd's are "systemd").
        errors = fleet.ssh(
            host,
            "sudo journalctl -u hostcollector.service -t hostcollector -p err -o cat --no-pager",
        ).stdout
        assert not errors.strip(), f"{host.name} logged errors:\n{errors}"


def test_logs_for_journald(controller: Controller) -> None:
    fleet = controller.fleet
    host = fleet.hosts[0]
    # The daemon's lines: journald parsed the <N> prefix (none left in the text), stamps them
    # itself (no second timestamp), and files "listening" at info.
    lines = fleet.ssh(
        host, "sudo journalctl -u hostcollector.service -t hostcollector -o cat --no-pager"
    ).stdout.splitlines()
    assert lines, "no log lines from the daemon"
    assert not [line for line in lines if re.match(r"<\d>|\d{4}-\d\d-\d\d", line)], lines[:10]
    entries = [json.loads(line) for line in fleet.ssh(
        host, "sudo journalctl -u hostcollector.service -t hostcollector -o json --no-pager").stdout.splitlines()]  # fmt: skip
    listening = [e for e in entries if "listening on" in e["MESSAGE"]]
    assert listening and {e["PRIORITY"] for e in listening} == {"6"}, listening[:2]
    # A warning and an info line through the daemon's logging setup (auto), as the service user
    # with stderr to the journal as the unit has it: `journalctl -p warning` finds the warning only.
    code = ("import logging; from hostcollector.logs import setup_logging; setup_logging('info', 'auto'); "
            "log = logging.getLogger('hostcollector.probe'); log.warning('probe warning'); log.info('probe info')")  # fmt: skip
    fleet.ssh(
        host,
        f"sudo systemd-run --wait --quiet --unit=hc-logprobe -p User=hostcollector -p StandardError=journal {VENV}/bin/python -c {shlex.quote(code)}",
    )
    warnings = fleet.ssh(host, "sudo journalctl -u hc-logprobe -p warning -o cat --no-pager").stdout
    infos = fleet.ssh(host, "sudo journalctl -u hc-logprobe -p info..info -o cat --no-pager").stdout
    assert "hostcollector.probe: probe warning" in warnings and "probe info" not in warnings, (
        warnings
    )
    assert "hostcollector.probe: probe info" in infos, infos


def test_prometheus_scrapes_the_hosts_the_rollout_listed(
    controller: Controller, tmp_path: Path
) -> None:
    fleet = controller.fleet
    targets = json.loads(controller.sd_file.read_text())
    listed = sorted(t for group in targets for t in group["targets"])
    assert listed == sorted(f"{h.address}:{PORT}" for h in fleet.hosts), listed
    need(
        shutil.which("prometheus") is not None,
        "Debian's prometheus is not installed (make bootstrap)",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "hostcollector", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "file_sd_configs": [{"files": [str(controller.sd_file)], "refresh_interval": "1s"}]}],
    }))  # fmt: skip
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def up() -> dict[str, float]:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/query?query=up"
                with urllib.request.urlopen(url, timeout=2) as r:
                    data = json.load(r)["data"]["result"]
            except (OSError, ValueError):
                return {}
            return {s["metric"]["instance"]: float(s["value"][1]) for s in data}

        wait_for(lambda: up() == dict.fromkeys(listed, 1.0), 60, "Prometheus scrapes all 3 hosts")
        # A host whose daemon is down is seen as such (the HostcollectorDown alert's input).
        fleet.ssh(fleet.hosts[2], "sudo systemctl stop hostcollector.service")
        wait_for(lambda: up().get(listed[2]) == 0.0, 30, "the stopped host is down in Prometheus")
        fleet.ssh(fleet.hosts[2], "sudo systemctl start hostcollector.service")
    finally:
        prom.send_signal(signal.SIGTERM)
        prom.wait(timeout=30)


def test_memory_per_host(controller: Controller) -> None:
    # What the machine charges each host: its memory cgroup (v1), page cache included
    # (tests/fleet/launch.sh puts host NAME in hostcollector-fleet/NAME).
    per_host = {
        h.name: int(
            Path(
                f"/sys/fs/cgroup/memory/hostcollector-fleet/{h.name}/memory.usage_in_bytes"
            ).read_text()
        )
        for h in controller.fleet.hosts
    }
    FIGURES["memory_per_host_mb"] = {n: round(b / 1e6, 1) for n, b in per_host.items()}
    # Of which resident (not page cache from the install): memory.stat's total_rss.
    for h in controller.fleet.hosts:
        stat = Path(f"/sys/fs/cgroup/memory/hostcollector-fleet/{h.name}/memory.stat").read_text()
        rss = int(re.search(r"^total_rss (\d+)$", stat, re.MULTILINE).group(1))  # type: ignore[union-attr]
        FIGURES.setdefault("host_rss_mb", {})[h.name] = round(rss / 1e6, 1)
    for host in controller.fleet.hosts:
        rss = re.search(
            r"^process_resident_memory_bytes (\S+)", get(host.address, "/metrics")[1], re.MULTILINE
        )
        assert rss
        FIGURES.setdefault("daemon_rss_mb", {})[host.name] = round(float(rss.group(1)) / 1e6, 1)
    assert all(b > 0 for b in per_host.values())
