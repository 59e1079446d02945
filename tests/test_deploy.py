"""Fleet deployment (issue 7): the Ansible role applied to this machine, the Prometheus rules and
the Grafana dashboard.

The static checks run everywhere. The role tests change this machine (Debian packages, the
`hostcollector` system user, /var/lib/hostcollector; the virtualenv, config and unit go to a
temporary directory) and run only with HOSTCOLLECTOR_DEPLOY set: `make test-deploy` sets it to
`required`, where a missing prerequisite fails instead of skipping.
"""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hostcollector.auth import parse_tokens
from hostcollector.config import Config, config_to_dict, load_config, parse_config
from hostcollector.exposition import ALL_FAMILIES

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
ROLE = ANSIBLE / "roles" / "hostcollector"
PROMETHEUS = REPO / "conf" / "prometheus"
MDWE_EXEC = Path(__file__).resolve().parent / "mdwe_exec.py"
SYSTEM_PYTHON = "/usr/bin/python3"
USER = "hostcollector"

DEPLOY = os.environ.get("HOSTCOLLECTOR_DEPLOY", "")
REQUIRED = DEPLOY == "required"


def need(condition: bool, reason: str) -> None:
    """Skip without the prerequisite, or fail when `make test-deploy` requires it."""
    if not condition:
        if REQUIRED:
            pytest.fail(f"HOSTCOLLECTOR_DEPLOY=required but {reason}")
        pytest.skip(reason)


# --- PromQL: which metric names an expression reads -----------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed), by elimination."""
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # $instance, ${datasource}, $__rate_interval
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        following = expr[match.end() :].lstrip()
        if following.startswith("("):  # a function or aggregation
            continue
        if word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        start = match.start()
        if start and (expr[start - 1].isdigit() or expr[start - 1] == "."):
            continue  # 1e3, 2^30 and the like
        names.add(word)
    return names


def test_metric_names_extraction() -> None:
    assert metric_names(
        'sum by (tenant_id) (rate(hostcollector_vm_cpu_time_seconds_total{instance=~"$instance"}'
        "[$__rate_interval])) * on (instance, vm_uuid) group_left (name) hostcollector_vm_info"
    ) == {"hostcollector_vm_cpu_time_seconds_total", "hostcollector_vm_info"}
    assert metric_names("time() - hostcollector_snapshot_timestamp_seconds > 3 * 15") == {
        "hostcollector_snapshot_timestamp_seconds"
    }
    assert metric_names('-tenant:x:rate5m{a="b"} / 2^30 and bool up') == {"tenant:x:rate5m", "up"}


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return data


def recorded_names() -> set[str]:
    return {r["record"] for g in rules()["groups"] for r in g["rules"] if "record" in r}


def known_names() -> set[str]:
    return {family.name for family in ALL_FAMILIES} | recorded_names() | {"up"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((PROMETHEUS / "dashboard.json").read_text())
    queries = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = (
                variable["query"]["query"]
                if isinstance(variable["query"], dict)
                else variable["query"]
            )
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, f"template variable {variable['name']}: unexpected query {query!r}"
            queries.append(match.group(1))
    return queries


def test_dashboard_names_only_exported_metrics() -> None:
    dashboard = json.loads((PROMETHEUS / "dashboard.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"instance", "tenant_id", "vm_uuid"} <= variables
    queries = dashboard_queries()
    assert len(queries) > 30
    known = known_names()
    unknown = {q: sorted(metric_names(q) - known) for q in queries if metric_names(q) - known}
    assert not unknown, f"dashboard queries name metrics hostcollector does not export: {unknown}"
    used = set().union(*(metric_names(q) for q in queries))
    assert {
        "hostcollector_vm_cpu_time_seconds_total",
        "tenant:hostcollector_vm_cpu_seconds:rate5m",
    } <= used


def test_rules_name_only_exported_metrics() -> None:
    known = known_names()
    for group in rules()["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('record') or rule['alert']}: unknown metrics {unknown}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    firing, silent = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - silent == set(), "alerts without a not-firing test"
    assert (firing | silent) - alerts == set(), "tests for alerts that do not exist"


def test_dashboard_and_rule_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule, Grafana variables filled in)."""
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool is not installed (Debian package prometheus)")
    assert promtool
    filled = [
        q.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$tenant_id", ".*")
        .replace("$vm_uuid", ".*")
        for q in dashboard_queries()
    ]  # fmt: skip
    group = {
        "name": "dashboard",
        "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(filled)],
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- The role's variables against hostcollector's config schema -------------------------------

# Role variable -> config key path, for every option of hostcollector's config.
CONFIG_VARS = {
    "hostcollector_listen_address": "listen.address",
    "hostcollector_listen_port": "listen.port",
    "hostcollector_listen_tls_cert_file": "listen.tls.cert_file",
    "hostcollector_listen_tls_key_file": "listen.tls.key_file",
    "hostcollector_listen_tls_client_ca_file": "listen.tls.client_ca_file",
    "hostcollector_listen_max_connections": "listen.max_connections",
    "hostcollector_listen_idle_timeout_seconds": "listen.idle_timeout_seconds",
    "hostcollector_libvirt_enabled": "sources.libvirt.enabled",
    "hostcollector_libvirt_uri": "sources.libvirt.uri",
    "hostcollector_libvirt_interval_seconds": "sources.libvirt.interval_seconds",
    "hostcollector_libvirt_timeout_seconds": "sources.libvirt.timeout_seconds",
    "hostcollector_libvirt_stats_groups": "sources.libvirt.stats_groups",
    "hostcollector_libvirt_slow_stats_groups": "sources.libvirt.slow_stats_groups",
    "hostcollector_libvirt_slow_stats_every": "sources.libvirt.slow_stats_every",
    "hostcollector_libvirt_nowait": "sources.libvirt.nowait",
    "hostcollector_libvirt_kernel_path": "sources.libvirt.kernel_path",
    "hostcollector_libvirt_metadata_refresh_seconds": "sources.libvirt.metadata_refresh_seconds",
    "hostcollector_libvirt_parallel_calls": "sources.libvirt.parallel_calls",
    "hostcollector_libvirt_quarantine_seconds": "sources.libvirt.quarantine_seconds",
    "hostcollector_libvirt_max_sample_age_seconds": "sources.libvirt.max_sample_age_seconds",
    "hostcollector_libvirt_sysfs_root": "sources.libvirt.sysfs_root",
    "hostcollector_sriov_enabled": "sources.sriov.enabled",
    "hostcollector_sriov_interval_seconds": "sources.sriov.interval_seconds",
    "hostcollector_sriov_timeout_seconds": "sources.sriov.timeout_seconds",
    "hostcollector_sriov_sysfs_root": "sources.sriov.sysfs_root",
    "hostcollector_nvml_enabled": "sources.nvml.enabled",
    "hostcollector_nvml_interval_seconds": "sources.nvml.interval_seconds",
    "hostcollector_nvml_timeout_seconds": "sources.nvml.timeout_seconds",
    "hostcollector_nvml_library_path": "sources.nvml.library_path",
    "hostcollector_nvml_sysfs_root": "sources.nvml.sysfs_root",
    "hostcollector_attribution_order": "attribution.order",
    "hostcollector_attribution_builtin_nova": "attribution.builtin_nova",
    "hostcollector_attribution_metadata_rules": "attribution.metadata_rules",
    "hostcollector_attribution_mapping_file": "attribution.mapping_file",
    "hostcollector_attribution_info_labels": "attribution.info_labels",
    "hostcollector_auth_tokens_file": "auth.tokens_file",
    "hostcollector_remote_write_interval_seconds": "remote_write.interval_seconds",
    "hostcollector_remote_write_queue_dir": "remote_write.queue_dir",
    "hostcollector_remote_write_endpoints": "remote_write.endpoints",
    "hostcollector_remote_write_external_labels": "remote_write.external_labels",
    "hostcollector_log_level": "logging.level",
    "hostcollector_log_format": "logging.format",
}


def lookup(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


def role_defaults() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return data


def config_leaves(node: Any, prefix: str = "") -> list[str]:
    """Key paths of every option of the schema (a list of rules is one option)."""
    paths = []
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        path = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            paths.extend(config_leaves(value, path + "."))
        else:
            paths.append(path)
    return paths


def lock_pins() -> list[str]:
    lock = ROLE / "files" / "requirements.lock"
    return [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]


def test_lock_pins_every_runtime_dependency_within_pyproject() -> None:
    """The role's lock is the whole runtime closure, each pin allowed by pyproject.toml."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(p.split("==")[0]): p.split("==")[1] for p in lock_pins()}
    assert all("==" in p for p in lock_pins())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {text}"
    assert "libvirt-python" not in pins, "the hypervisors use Debian's python3-libvirt"
    # What `make lock` would write from this venv: the lock is current.
    current = subprocess.run(
        [sys.executable, str(ANSIBLE / "lock.py")], capture_output=True, text=True, check=True
    ).stdout
    assert current == (ROLE / "files" / "requirements.lock").read_text(), "run `make lock`"


def test_role_renders_every_config_option() -> None:
    """A new option (or source) of hostcollector needs a role variable, the template and argument_specs."""
    missing = sorted(set(config_leaves(Config())) - set(CONFIG_VARS.values()))
    assert not missing, f"config options without a hostcollector_ role variable: {missing}"
    template = (ROLE / "templates" / "hostcollector.yml.j2").read_text()
    for variable in CONFIG_VARS:
        assert variable in template, f"{variable} is not rendered by hostcollector.yml.j2"


# Options that are null by default: an empty string in the role, null in the file.
NULL_AS_EMPTY = (
    "attribution.mapping_file",
    "sources.nvml.library_path",
    "listen.tls.cert_file",
    "listen.tls.key_file",
    "listen.tls.client_ca_file",
    "auth.tokens_file",
)


def test_role_defaults_equal_hostcollector_defaults() -> None:
    defaults = role_defaults()
    config = config_to_dict(Config())
    for variable, path in CONFIG_VARS.items():
        expected = lookup(config, path)
        value = defaults[variable]
        if path in NULL_AS_EMPTY:
            value = value or None  # empty in the role, null in the file
        assert value == expected, f"{variable} defaults to {value!r}, hostcollector to {expected!r}"


def test_argument_specs_document_every_default() -> None:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = role_defaults()
    assert set(options) == set(defaults)
    kinds = {
        "str": str,
        "path": str,
        "int": int,
        "float": float,
        "bool": bool,
        "list": list,
        "dict": dict,
    }
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        assert option["default"] == defaults[name], f"{name}: argument_specs default differs"
        assert isinstance(defaults[name], kinds[option["type"]]), f"{name}: not a {option['type']}"


# --- The role applied to this machine -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Deployment:
    root: Path
    inventory: Path
    variables: dict[str, Any]
    port: int
    first_run: subprocess.CompletedProcess[str]

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "hostcollector.yml"

    @property
    def unit(self) -> Path:
        return self.root / "systemd" / "hostcollector.service"

    @property
    def sd_file(self) -> Path:
        return self.root / "prometheus" / "hostcollector_targets.json"

    def apply(self, extra: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return run_playbook(self.inventory, {**self.variables, **(extra or {})}, self.root)


def run_playbook(
    inventory: Path, variables: dict[str, Any], root: Path
) -> subprocess.CompletedProcess[str]:
    varfile = root / "vars.json"
    varfile.write_text(json.dumps(variables))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=SYSTEM_PYTHON,
    )
    return subprocess.run(
        ["ansible-playbook", "-c", "local", "-i", str(inventory), str(ANSIBLE / "playbooks" / "site.yml"),
         "-e", f"@{varfile}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=800,
    )  # fmt: skip


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    match = re.search(r"^localhost\s+:\s+(.*)$", result.stdout, re.MULTILINE)
    assert match, f"no play recap:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployment]:
    need(bool(DEPLOY), "applies the Ansible role to this machine; run by `make test-deploy`")
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook is not installed")
    # Not under pytest's 0700 tmp: the service user must reach the venv and the config.
    root = Path(tempfile.mkdtemp(prefix="hostcollector-deploy-", dir="/tmp"))
    root.chmod(0o755)
    (root / "systemd").mkdir()
    inventory = root / "inventory.yml"
    inventory.write_text(
        "hypervisors:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {SYSTEM_PYTHON}\n"
    )
    port = free_port()
    variables = {
        "hostcollector_manage_service": False,
        "hostcollector_package_source": str(REPO),
        "hostcollector_virtualenv": str(root / "venv"),
        "hostcollector_config_file": str(root / "etc" / "hostcollector.yml"),
        "hostcollector_systemd_unit_dir": str(root / "systemd"),
        "hostcollector_listen_port": port,
        "hostcollector_libvirt_interval_seconds": 2,
        "hostcollector_libvirt_timeout_seconds": 1.5,
        # The lab's custom namespace (conf/lab.yml), to render a metadata rule.
        "hostcollector_attribution_metadata_rules": [
            {
                "name": "tenancy",
                "namespace": "https://cloud.example.com/xmlns/tenancy/1",
                "tenant": "tenant/@id",
                "labels": {"tier": "tier"},
            }
        ],
        "hostcollector_attribution_info_labels": ["flavor", "project_name", "tier"],
        "hostcollector_prometheus_sd_file": str(root / "prometheus" / "hostcollector_targets.json"),
    }
    first = run_playbook(inventory, variables, root)
    try:
        yield Deployment(root, inventory, variables, port, first)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_first_run_installs_user_venv_config_and_unit(deployed: Deployment) -> None:
    result = deployed.first_run
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert recap(result)["failed"] == 0

    account = pwd.getpwnam(USER)
    assert account.pw_uid != 0 and account.pw_shell == "/usr/sbin/nologin"
    assert account.pw_dir == "/var/lib/hostcollector"
    assert not [p for p in Path(account.pw_dir).iterdir() if p.name.startswith(".")], (
        "home has content"
    )

    version = subprocess.run(
        [deployed.venv / "bin" / "hostcollector", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("hostcollector "), version
    # No compiler: Debian's libvirt binding through the venv's system site packages, and the
    # dependencies at exactly the role's pins.
    libvirt = subprocess.run(
        [deployed.venv / "bin" / "python", "-c", "import libvirt; print(libvirt.__file__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert libvirt.stdout.startswith("/usr/lib/python3/dist-packages/"), libvirt
    frozen = subprocess.run(
        [deployed.venv / "bin" / "pip", "freeze", "--local"], capture_output=True, text=True
    ).stdout.splitlines()
    for pin in lock_pins():
        assert pin in frozen or pin.replace("_", "-") in frozen, f"{pin} not installed as pinned"

    assert deployed.config.stat().st_mode & 0o777 == 0o640
    check = subprocess.run(
        [deployed.venv / "bin" / "hostcollector", "check-config", deployed.config],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr

    unit = deployed.unit.read_text()
    for line in (
        f"User={USER}",
        f"ExecStart={deployed.venv}/bin/hostcollector run --config {deployed.config}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "CapabilityBoundingSet=\n",
        "StateDirectory=hostcollector",
        "MemoryDenyWriteExecute=yes",
        "DeviceAllow=char-nvidia-frontend rw",
        "CPUQuota=50%",
        "MemoryMax=256M",
        "LimitNOFILE=16384",
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
    ):
        assert line in unit, f"unit lacks {line!r}"
    assert not re.search(r"^PrivateDevices=", unit, re.MULTILINE)
    # The default remote-write queue is under StateDirectory=hostcollector.
    assert not re.search(r"^ReadWritePaths=", unit, re.MULTILINE)


def test_rendered_config_is_what_the_variables_say(deployed: Deployment) -> None:
    rendered = config_to_dict(load_config(deployed.config))
    expected = config_to_dict(Config())
    for variable, path in CONFIG_VARS.items():
        if variable in deployed.variables:
            *parents, key = path.split(".")
            node = expected
            for parent in parents:
                node = node[parent]
            node[key] = deployed.variables[variable]
    assert rendered == expected


def test_service_discovery_file_feeds_prometheus(deployed: Deployment, tmp_path: Path) -> None:
    targets = json.loads(deployed.sd_file.read_text())
    assert targets == [{"targets": [f"localhost:{deployed.port}"], "labels": {}}]
    need(shutil.which("promtool") is not None, "promtool is not installed")
    config = yaml.safe_load((PROMETHEUS / "scrape.yml").read_text())
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(deployed.sd_file)]
    config["rule_files"] = [str(PROMETHEUS / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "WARNING" not in check.stdout + check.stderr, (
        check.stdout + check.stderr
    )


def test_systemd_analyze_verifies_the_unit(deployed: Deployment) -> None:
    need(
        shutil.which("systemd-analyze") is not None,
        "systemd-analyze is not installed (Debian package systemd)",
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(deployed.unit)], capture_output=True, text=True
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def libvirt_answers(as_user: bool) -> bool:
    prefix = ["runuser", f"--user={USER}", "--"] if as_user else []
    try:
        probe = subprocess.run(
            ["timeout", "10", *prefix, "virsh", "--readonly", "--connect=qemu:///system", "uri"],
            capture_output=True, text=True,
        )  # fmt: skip
    except FileNotFoundError:
        return False
    return probe.returncode == 0


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
        body: bytes = response.read()
        return body.decode()


def libvirt_up(body: str) -> int | None:
    match = re.search(r'^hostcollector_source_up\{source="libvirt"\} (\d)', body, re.MULTILINE)
    return int(match.group(1)) if match else None


def serve(command: list[str], port: int, log: Path, as_user: bool) -> str:
    """Run the daemon until it reports libvirt as this machine's libvirt is; return /metrics."""
    expected = 1 if libvirt_answers(as_user) else 0
    with log.open("w") as out:
        daemon = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        body, up = "", None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()}"
            try:
                body = scrape(port)
            except OSError:
                time.sleep(0.3)
                continue
            up = libvirt_up(body)
            if up == expected:
                break
            time.sleep(0.5)
        if up is not None and up != expected:
            # libvirtd may be restarted by concurrent lab fault tests: ask again.
            expected = 1 if libvirt_answers(as_user) else 0
        assert up == expected, (
            f"hostcollector_source_up{{libvirt}} is {up}, libvirt answers: {expected}\n{log.read_text()}"
        )
        assert scrape(port, "/-/healthy") == "ok\n"
        assert (
            "hostcollector_build_info{" in body
            and "hostcollector_snapshot_timestamp_seconds " in body
        )
        return body
    finally:
        stop(daemon)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.terminate()
    try:
        daemon.wait(10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def test_installed_daemon_serves_metrics(deployed: Deployment, tmp_path: Path) -> None:
    """As root, against this machine's libvirt (the lab, if up): source_up says whether libvirt answers."""
    command = [
        str(deployed.venv / "bin" / "hostcollector"),
        "run",
        "--config",
        str(deployed.config),
    ]
    serve(command, deployed.port, tmp_path / "daemon.log", as_user=False)


def test_daemon_runs_as_the_unit_would(deployed: Deployment, tmp_path: Path) -> None:
    """As the service user with no new privileges, no capabilities and systemd's W^X filter."""
    seccomp = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    need(seccomp.returncode == 0, "python3-seccomp is not installed (MemoryDenyWriteExecute check)")
    command = [
        SYSTEM_PYTHON, str(MDWE_EXEC),
        "setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--no-new-privs",
        "--bounding-set=-all", "--inh-caps=-all", "--",
        str(deployed.venv / "bin" / "hostcollector"), "run", "--config", str(deployed.config),
    ]  # fmt: skip
    serve(command, deployed.port, tmp_path / "daemon.log", as_user=True)


def test_second_run_changes_nothing(deployed: Deployment) -> None:
    result = deployed.apply()
    assert result.returncode == 0, result.stdout[-6000:]
    changed = re.findall(r"^TASK \[(.*?)\].*?\nchanged:", result.stdout, re.MULTILINE | re.DOTALL)
    assert recap(result)["changed"] == 0, f"changed on the second run: {changed}"


# A token given where its SHA-256 belongs: refused, and never echoed.
PLAINTEXT = "plaintext-bearer-token-0123"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"hostcollector_libvirt_stats_groups": ["state", "cpu_totl"]},
            ["hostcollector_libvirt_stats_groups", "cpu_totl"],
            id="misspelled-stats-group",
        ),
        pytest.param(
            {"hostcollector_libvirt_interval_seconds": "fast"},
            ["hostcollector_libvirt_interval_seconds", "float"],
            id="string-interval",
        ),
        pytest.param(
            {"hostcollector_libvirt_intervall_seconds": 5},
            ["Unknown variable(s) hostcollector_libvirt_intervall_seconds"],
            id="misspelled-variable",
        ),
        pytest.param(
            {"hostcollector_libvirt_timeout_seconds": 30},
            ["hostcollector_libvirt_timeout_seconds must be > 0 and at most"],
            id="timeout-above-interval",
        ),
        pytest.param(
            {"hostcollector_attribution_info_labels": ["flavor", "job"]},
            ["failed to validate", "attribution.info_labels: 'job' is reserved"],
            id="check-config-rejects",
        ),
        pytest.param(
            {"hostcollector_auth_tokens": [{"name": "p", "sha256": PLAINTEXT, "scope": "all"}]},
            ["hostcollector_auth_tokens: entry 0 (p): sha256 is not 64 hex digits"],
            id="token-in-clear",
        ),
    ],
)
def test_bad_variable_fails_and_keeps_the_old_config(
    deployed: Deployment, extra: dict[str, Any], expected: list[str]
) -> None:
    before = {p: p.read_bytes() for p in (deployed.config, deployed.unit)}
    result = deployed.apply(extra)
    assert result.returncode != 0
    assert recap(result)["failed"] == 1
    for text in expected:
        assert text in result.stdout, f"{text!r} not in:\n{result.stdout[-4000:]}"
    assert PLAINTEXT not in result.stdout + result.stderr, "a token echoed"
    assert {p: p.read_bytes() for p in before} == before, "a failed run changed the config or unit"


def get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_role_deploys_tokens_and_remote_write(deployed: Deployment, tmp_path: Path) -> None:
    """Two tokens (scope all, scope tenant) and two remote write endpoints, the queue outside the
    state directory: the config passes check-config, the tokens file holds digests only (root,
    the service's group, 0640), the unit may write the queue, and the daemon, as the service
    user, wants a token and feeds the queue."""
    tokens = {"all": secrets.token_urlsafe(24), "tenant": secrets.token_urlsafe(24)}
    digest = {scope: hashlib.sha256(token.encode()).hexdigest() for scope, token in tokens.items()}
    tenant = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
    queue = deployed.root / "remote-write"
    closed = free_port()  # nothing listens: every batch fails and stays queued
    endpoints = [
        {"name": "sre", "url": f"http://127.0.0.1:{closed}/api/v1/write"},
        {
            "name": "tenants",
            "url": f"http://127.0.0.1:{closed}/api/v1/push",
            "split_by_tenant": True,
            "headers": {"X-Scope-OrgID": "{tenant}"},
            "tenant_ids_file": str(deployed.root / "tenant-ids.json"),
            "tls": {"ca_file": None},
            "timeout_seconds": 5,
            "max_queue_bytes": 64 * 1024 * 1024,
            "concurrency": 2,
        },
    ]
    result = deployed.apply(
        {
            "hostcollector_auth_tokens": [
                {"name": "prometheus", "sha256": digest["all"].upper(), "scope": "all"},
                {"name": "acme-portal", "sha256": digest["tenant"], "scope": "tenant",
                 "tenant": tenant},
            ],
            "hostcollector_remote_write_interval_seconds": 1,
            "hostcollector_remote_write_queue_dir": str(queue),
            "hostcollector_remote_write_endpoints": endpoints,
        }
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]

    check = subprocess.run(
        [deployed.venv / "bin" / "hostcollector", "check-config", deployed.config],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    config = load_config(deployed.config)
    tokens_file = deployed.config.parent / "tokens.yml"
    assert config.auth.tokens_file == str(tokens_file)
    expected = parse_config(
        yaml.safe_dump({"remote_write": {"interval_seconds": 1, "queue_dir": str(queue),
                                         "endpoints": endpoints}})
    )  # fmt: skip
    assert config.remote_write == expected.remote_write

    info = tokens_file.stat()
    assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, info.st_mode & 0o777) == (
        0,
        USER,
        0o640,
    )
    text = tokens_file.read_text()
    assert not any(token in text for token in tokens.values()), "a token in clear"
    assert {d: (s.name, s.tenant) for d, s in parse_tokens(text.encode()).items()} == {
        digest["all"]: ("prometheus", None),
        digest["tenant"]: ("acme-portal", tenant),
    }

    unit = deployed.unit.read_text()
    assert f"ReadWritePaths={queue}\n" in unit
    assert queue.is_dir() and queue.owner() == USER and queue.stat().st_mode & 0o777 == 0o750
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(deployed.unit)], capture_output=True, text=True
        )
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    log = tmp_path / "daemon.log"
    command = [
        "setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--no-new-privs", "--",
        str(deployed.venv / "bin" / "hostcollector"), "run", "--config", str(deployed.config),
    ]  # fmt: skip
    with log.open("w") as out:
        daemon = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 'endpoint="tenants"' not in body:
            assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()}"
            try:
                status, body = get(deployed.port, "/metrics", tokens["all"])
            except OSError:
                time.sleep(0.3)
                continue
            assert status == 200, body
            time.sleep(0.3)
        assert 'hostcollector_remote_write_queue_batches{endpoint="sre"}' in body, log.read_text()
        assert get(deployed.port, "/-/healthy") == (200, "ok\n")
        assert get(deployed.port, "/metrics")[0] == 401
        assert get(deployed.port, "/metrics", "not-a-token")[0] == 401
        status, scoped = get(deployed.port, "/metrics", tokens["tenant"])
        assert status == 200 and "hostcollector_build_info" not in scoped
        assert {p.name for p in queue.iterdir()} <= {"sre", "tenants"}
    finally:
        stop(daemon)


def test_ansible_readme_variables_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ANSIBLE / "variables_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_role_knows_hostcollector_stats_groups() -> None:
    from hostcollector.config import STATS_GROUPS

    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())[
        "_hostcollector_stats_groups"
    ]
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    choices = specs["argument_specs"]["main"]["options"]["hostcollector_libvirt_stats_groups"][
        "choices"
    ]
    assert internal == choices == list(STATS_GROUPS)
