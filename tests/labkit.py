"""Helpers for tests against the real lab hypervisor (tests/lab/up.sh): virsh, a daemon, scrapes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

LAB_DIR = Path(__file__).parent / "lab"
URI = "qemu:///system"

_spec = importlib.util.spec_from_file_location("domxml", LAB_DIR / "domxml.py")
assert _spec and _spec.loader
domxml: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(domxml)

LAB_VMS: list[dict[str, Any]] = domxml.LAB_VMS
ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"


def virsh(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def domstats(name: str) -> dict[str, int | str]:
    """`virsh domstats` of one domain, typed like the bulk API returns it."""
    stats: dict[str, int | str] = {}
    for line in virsh("-r", "domstats", name).splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            stats[key] = int(value) if value.lstrip("-").isdigit() else value
    return stats


def require_lab() -> None:
    """Skip without the lab; fail instead where CI says the lab must be there."""
    required = os.environ.get("HOSTCOLLECTOR_LAB") == "required"
    problem = None
    if shutil.which("virsh") is None:
        problem = "virsh is not installed"
    else:
        try:
            running = set(virsh("-r", "list", "--name").split())
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            problem = f"libvirtd does not answer: {exc}"
        else:
            missing = {vm["name"] for vm in LAB_VMS} - running
            if missing:
                problem = f"lab VMs not running: {sorted(missing)} (run tests/lab/up.sh)"
    if problem:
        if required:
            pytest.fail(f"the lab is required here but {problem}")
        pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def pick(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    wanted = set(labels.items())
    return [
        (dict(key_labels), value)
        for (key_name, key_labels), value in samples.items()
        if key_name == name and wanted <= key_labels
    ]


def one(samples: Samples, name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: expected one series, found {found}"
    return found[0][1]


@dataclass
class Daemon:
    url: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    interval: float
    # With TLS and tokens on: how this test client connects, and the token it sends.
    client_context: ssl.SSLContext | None = None
    token: str | None = None

    def get(self, path: str = "/metrics", timeout: float = 5) -> bytes:
        request = urllib.request.Request(self.url + path)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=timeout, context=self.client_context) as r:
            body: bytes = r.read()
            return body

    def scrape(self) -> Samples:
        return parse(self.get().decode())

    def snapshot_time(self) -> float:
        return one(self.scrape(), "hostcollector_snapshot_timestamp_seconds")

    def wait_polls(self, count: int) -> Samples:
        """Return the first scrape after `count` more libvirt polls have completed.

        Counting polls, not seconds, keeps "within N intervals" checks honest on a busy machine.
        """
        start = one(self.scrape(), "hostcollector_source_polls_total", source="libvirt")
        deadline = time.monotonic() + count * self.interval * 10 + 30
        while time.monotonic() < deadline:
            samples = self.scrape()
            if one(samples, "hostcollector_source_polls_total", source="libvirt") >= start + count:
                return samples
            time.sleep(self.interval / 10)
        raise AssertionError(f"fewer than {count} polls completed in time")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_daemon(
    tmp: Path,
    interval: float = 2.0,
    sources_extra: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    tls: dict[str, str] | None = None,
    client_context: ssl.SSLContext | None = None,
    token: str | None = None,
    listen_extra: dict[str, Any] | None = None,
    **attribution: Any,
) -> Iterator[Daemon]:
    """`extra`: more top-level config sections (remote_write, auth, ...); `tls`: the
    listen.tls section, reached with `client_context` (and `token` with auth on);
    `listen_extra`: more listen keys."""
    port = free_port()
    libvirt = {
        "interval_seconds": interval,
        "timeout_seconds": interval * 0.8,
        **(sources_extra or {}),
    }
    config = {
        "listen": {
            "address": "127.0.0.1",
            "port": port,
            **({"tls": tls} if tls else {}),
            **(listen_extra or {}),
        },
        "sources": {"libvirt": libvirt},
        "attribution": {
            "metadata_rules": [
                {
                    "name": "tenancy",
                    "namespace": domxml.TENANCY_NS,
                    "tenant": "tenant/@id",
                    "labels": {"tier": "tier"},
                }
            ],
            "info_labels": ["flavor", "project_name", "tier"],
            **attribution,
        },
        "logging": {"level": "info"},
        **(extra or {}),
    }
    config_path = tmp / "hostcollector.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "hostcollector.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hostcollector", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if tls else "http"
    daemon = Daemon(
        f"{scheme}://127.0.0.1:{port}", config_path, log_path, process, interval,
        client_context, token,
    )  # fmt: skip
    try:
        wait_until(lambda: _first_poll_done(daemon), 30, "the daemon to serve its first poll")
        yield daemon
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_poll_done(daemon: Daemon) -> bool:
    if daemon.process.poll() is not None:
        raise AssertionError(f"daemon exited {daemon.process.returncode}:\n{daemon.log()}")
    try:
        samples = daemon.scrape()
    except OSError:
        return False
    return (
        bool(pick(samples, "hostcollector_source_polls_total"))
        and one(samples, "hostcollector_source_polls_total", source="libvirt") >= 1
    )


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def sample_times(samples: Samples) -> dict[str, float]:
    """When each VM's values were sampled, by UUID."""
    return {
        labels["vm_uuid"]: value
        for labels, value in pick(samples, "hostcollector_vm_sample_timestamp_seconds")
    }


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def scratch_vm(name: str, uuid: str, style: str, **tenant: str) -> Iterator[str]:
    """A transient, paused, OS-less domain: a real QEMU process, cheap to start."""
    disk = f"{domxml.DISK_DIR}/{name}.qcow2"
    domxml.make_disk(disk)
    xml = domxml.domain_xml(
        name,
        uuid,
        tenant_style=style,
        ip=None,
        mac=domxml.scratch_mac(name),
        disk_path=disk,
        paused_noos=True,
        **_tenant_defaults(name, style, tenant),
    )
    xml_path = Path(disk).with_suffix(".xml")
    xml_path.write_text(xml)
    virsh("create", "--paused", str(xml_path))
    try:
        yield uuid
    finally:
        virsh("destroy", name, check=False)
        Path(disk).unlink(missing_ok=True)
        xml_path.unlink(missing_ok=True)


def _tenant_defaults(name: str, style: str, tenant: dict[str, str]) -> dict[str, str]:
    if style in ("nova11", "nova10"):
        base = {
            "display_name": name,
            "project_name": "scratch",
            "user_id": "0" * 32,
            "user_name": "scratch",
            "flavor": "m1.tiny",
        }
        return base | tenant
    if style == "custom":
        return {"tier": "bronze"} | tenant
    return tenant


def defined_domain_xml(name: str, uuid: str, tenant: str, device: str, flavor: str) -> str:
    """XML of a never-started nova 1.1 domain of `tenant` holding one host `device`: enough for
    libvirtd to report its definition (hostdevs, metadata) without the device existing."""
    xml: str = domxml.domain_xml(
        name,
        uuid,
        tenant_style="nova11",
        ip=None,
        mac=domxml.scratch_mac(name),
        disk_path="/nonexistent.qcow2",
        paused_noos=True,
        project_id=tenant,
        project_name="p",
        user_id="u",
        user_name="u",
        flavor=flavor,
        display_name=name,
    )
    return xml.replace("</devices>", device + "</devices>")


@dataclass
class FleetHost:
    """One daemon of a fleet on the lab: its host identity, and when it started writing."""

    instance: str
    daemon: Daemon
    started: float


@contextlib.contextmanager
def run_fleet(
    tmp: Path,
    instances: list[str],
    remote_write: Callable[[str, Path], dict[str, Any]],
    interval: float = 2.0,
) -> Iterator[list[FleetHost]]:
    """One daemon per host identity, all on the lab's libvirt, each in its own directory with
    its own port; `remote_write(instance, directory)` is that daemon's remote_write section."""
    with contextlib.ExitStack() as stack:
        hosts = []
        for instance in instances:
            directory = tmp / instance
            directory.mkdir()
            extra = {"remote_write": remote_write(instance, directory)}
            daemon = stack.enter_context(run_daemon(directory, interval=interval, extra=extra))
            hosts.append(FleetHost(instance, daemon, time.time()))
        yield hosts


def undelivered(samples: Samples) -> dict[str, float]:
    """Every remote-write counter of samples or queue files failed or dropped, by series,
    that is not 0."""
    return {
        f"{name}{dict(labels)}": value
        for (name, labels), value in samples.items()
        if name.startswith("hostcollector_remote_write_")
        and ("dropped" in name or "failed" in name)
        and value != 0
    }


# Lab host B (tests/lab/second-host.sh): a second libvirtd in its own namespaces, for live
# migration between it and the lab's libvirtd (host A, URI above).
SECOND_HOST = LAB_DIR / "second-host.sh"
HOST_A_MIGRATION_ADDR = "10.98.0.1"
HOST_B_MIGRATION_ADDR = "10.98.0.2"
HOST_B_HOSTNAME = "hc-lab-b"
HOST_B_HOST_UUID = "b0b0b0b0-0000-4000-8000-00000000b00b"
# B's socket lies in its bind-mounted /run, reachable from host A's namespaces: this is the
# `sources.libvirt.uri` for a hostcollector daemon that plays host B's collector.
HOST_B_SOCKET = "/var/lib/hostcollector-lab/host-b/run/libvirt/libvirt-sock"
HOST_B_URI = f"qemu+unix:///system?socket={HOST_B_SOCKET}"
HOST_B_TCP_URI = f"qemu+tcp://{HOST_B_MIGRATION_ADDR}/system"
# Where each host's QEMU listens for an incoming migration: over the veth pair, since B's
# hostname (which libvirt would hand out otherwise) resolves nowhere.
_MIGRATION_ADDR = {
    URI: HOST_A_MIGRATION_ADDR,
    HOST_B_URI: HOST_B_MIGRATION_ADDR,
    HOST_B_TCP_URI: HOST_B_MIGRATION_ADDR,
}


def virsh_at(uri: str, *args: str, check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"virsh -c {uri} {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def domstate_reason(uri: str, name: str) -> tuple[str, str] | None:
    """`virsh domstate --reason` as (state, reason), or None where the domain does not exist."""
    result = subprocess.run(
        ["virsh", "-c", uri, "domstate", "--reason", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        if "failed to get domain" in result.stderr:
            return None
        raise AssertionError(f"virsh -c {uri} domstate {name} failed: {result.stderr.strip()}")
    state, _, reason = result.stdout.strip().partition(" (")
    return state, reason.rstrip(")")


def second_host(action: str) -> str:
    """Run `second-host.sh up|down|status`; it prints nothing on success but for status."""
    result = subprocess.run(
        [str(SECOND_HOST), action], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"second-host.sh {action} failed:\n{result.stderr}")
    return result.stdout


def require_host_a() -> None:
    """Skip (fail where the lab is required) unless host A's libvirtd answers, as root, with
    the lab's guest kernel built: migration needs no lab VM, only the lab's hypervisor."""
    required = os.environ.get("HOSTCOLLECTOR_LAB") == "required"
    problem = None
    if os.geteuid() != 0:
        problem = "host B (second-host.sh) needs root"
    elif shutil.which("virsh") is None:
        problem = "virsh is not installed"
    elif not Path(domxml.DEFAULT_KERNEL).exists():
        problem = f"{domxml.DEFAULT_KERNEL} missing (run tests/lab/up.sh)"
    else:
        try:
            virsh("-r", "list", "--name")
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            problem = f"libvirtd does not answer: {exc}"
    if problem:
        if required:
            pytest.fail(f"the lab is required here but {problem}")
        pytest.skip(problem)


def migrate(name: str, src_uri: str, dst_uri: str, bandwidth_mib: int | None = None) -> float:
    """Live-migrate `name` from `src_uri` to `dst_uri`; returns the seconds it took.

    Direct (client-driven) migration: this client connects to both libvirtds, so host A's
    needs no TCP listener (p2p from B to A would). QEMU's data goes over the veth pair.
    `--unsafe`: both hosts see the disk on one local filesystem, which libvirt cannot know
    ("Migration without shared storage is unsafe").
    """
    args = ["migrate", "--live", "--unsafe", name, dst_uri]
    args += ["--migrateuri", f"tcp://{_MIGRATION_ADDR[dst_uri]}"]
    if bandwidth_mib is not None:
        args += ["--bandwidth", str(bandwidth_mib)]
    started = time.monotonic()
    virsh_at(src_uri, *args, timeout=300)
    return time.monotonic() - started


@contextlib.contextmanager
def booted_scratch_vm(name: str, uuid: str, ip: str, **tenant: str) -> Iterator[str]:
    """A transient scratch domain on host A booting the lab's guest (load loop: disk, ping),
    waited for until its console says ready. Cleaned up on whichever host it ends on."""
    disk = f"{domxml.DISK_DIR}/{name}.qcow2"
    console = Path(domxml.CONSOLE_DIR) / f"{name}.log"
    domxml.make_disk(disk)
    xml = domxml.domain_xml(
        name,
        uuid,
        tenant_style="nova11",
        ip=ip,
        mac=domxml.scratch_mac(name),
        disk_path=disk,
        **_tenant_defaults(name, "nova11", {"project_id": ACME} | tenant),
    )
    xml_path = Path(disk).with_suffix(".xml")
    xml_path.write_text(xml)
    virsh("create", str(xml_path))
    try:
        wait_until(
            lambda: console.exists() and "ready ip=" in console.read_text(errors="replace"),
            60,
            f"{name}'s guest to boot",
        )
        yield uuid
    finally:
        for uri in (URI, HOST_B_URI):
            virsh_at(uri, "destroy", name, check=False)
        Path(disk).unlink(missing_ok=True)
        xml_path.unlink(missing_ok=True)


def collect_once(config: Any) -> Any:
    """A collector built as the daemon builds it (wiring), after one poll of every source."""
    import asyncio

    from hostcollector.wiring import build_collector

    async def go() -> Any:
        collector = build_collector(config)
        try:
            await collector.poll_all_once()
        finally:
            await collector.stop()
        return collector

    return asyncio.run(go())
