"""Helpers for tests on the fleet test ground (tests/fleet/up.sh): hosts with real systemd.

Each host is a systemd-nspawn container with its own address on the bridge hcfleet0, reached
over SSH as `deploy` (NOPASSWD sudo) with the fleet's key, exactly as Ansible reaches it. The
scripts keep their state in FLEET_DIR; this module only reads it, so it also works on a fleet
that another process brought up.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLEET_SCRIPTS = Path(__file__).parent / "fleet"
FLEET_DIR = Path(os.environ.get("FLEET_DIR", "/var/lib/hostcollector-fleet"))
FLEET_CACHE = Path(os.environ.get("FLEET_CACHE", "/var/cache/hostcollector-fleet"))
HOST_PREFIX = "hc-fleet-"

# cgroup v1 hierarchy (mount under /sys/fs/cgroup) that holds a cgroup file, by file prefix.
_HIERARCHY_OF_PREFIX = {
    "memory": "memory",
    "cpu": "cpu",
    "cpuacct": "cpuacct",
    "cpuset": "cpuset",
    "pids": "pids",
    "devices": "devices",
    "blkio": "blkio",
    "freezer": "freezer",
    "cgroup": "systemd",  # cgroup.procs & co: the name=systemd hierarchy systemd tracks units in
    "tasks": "systemd",
}


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str


class Fleet:
    """The fleet as the scripts left it in `fleet_dir`; `up()`/`down()` run the scripts."""

    def __init__(self, fleet_dir: Path = FLEET_DIR, inventory_path: Path | None = None) -> None:
        self.fleet_dir = fleet_dir
        self.inventory_path = inventory_path or fleet_dir / "inventory.yml"
        self.key_path = FLEET_CACHE / "deploy_ed25519"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLEET_DIR": str(self.fleet_dir),
            "FLEET_CACHE": str(FLEET_CACHE),
            "FLEET_INVENTORY": str(self.inventory_path),
        }

    def up(self, n: int = 3, timeout: float = 600) -> None:
        """Boot hosts 1..n (idempotent). The first call on a machine builds the rootfs (~1 min)."""
        _run_script("up.sh", [str(n)], self._env(), timeout)

    def down(self, timeout: float = 180) -> None:
        _run_script("down.sh", [], self._env(), timeout)

    @property
    def hosts(self) -> list[FleetHost]:
        """The hosts up.sh made, in index order (hc-fleet-1, hc-fleet-2, ...)."""
        dirs = [d for d in self.fleet_dir.glob(HOST_PREFIX + "*") if (d / "address").is_file()]
        dirs.sort(key=lambda d: int(d.name.removeprefix(HOST_PREFIX)))
        return [FleetHost(d.name, (d / "address").read_text().strip()) for d in dirs]

    def host(self, name: str) -> FleetHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no fleet host {name!r} in {self.fleet_dir} (tests/fleet/up.sh)")

    def leader_pid(self, host: FleetHost | str) -> int:
        """The host's PID 1 as the machine sees it: `nsenter -t PID -a` enters the host."""
        name = host.name if isinstance(host, FleetHost) else host
        return int((self.fleet_dir / name / "leader.pid").read_text())

    def ssh(
        self,
        host: FleetHost | str,
        cmd: str,
        *,
        sudo: bool = False,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the shell command `cmd` on the host as deploy (as root through sudo if asked)."""
        target = host if isinstance(host, FleetHost) else self.host(host)
        remote = f"sudo -n sh -c {shlex.quote(cmd)}" if sudo else cmd
        argv = [
            "ssh",
            "-q",
            "-i",
            str(self.key_path),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.fleet_dir / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
            f"deploy@{target.address}",
            remote,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{target.name}: {cmd!r} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def read_cgroup(
        self, host: FleetHost | str, unit: str, file: str, hierarchy: str | None = None
    ) -> str:
        """A unit's cgroup file as the host sees it, e.g. ("x.service", "memory.limit_in_bytes").

        The hierarchy follows from the file's prefix unless given. A missing file fails: in v1 a
        controller's cgroup exists only when systemd realised the limit there.
        """
        prefix = file.split(".", 1)[0]
        tree = hierarchy or _HIERARCHY_OF_PREFIX.get(prefix)
        if tree is None:
            raise ValueError(f"which cgroup hierarchy holds {file!r}? pass hierarchy=")
        cmd = (
            f'cg=$(systemctl show -P ControlGroup {shlex.quote(unit)}) && [ -n "$cg" ] && '
            f'cat /sys/fs/cgroup/{tree}"$cg"/{shlex.quote(file)}'
        )
        return self.ssh(host, cmd).stdout.strip()

    def machine_cgroup(self, host: FleetHost | str, hierarchy: str) -> str:
        """The cgroup (path in `hierarchy`) the host's PID 1 is in, as the machine sees it."""
        for line in Path(f"/proc/{self.leader_pid(host)}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if hierarchy in controllers.split(",") or controllers == f"name={hierarchy}":
                return path
        raise KeyError(f"no {hierarchy} hierarchy in /proc/{self.leader_pid(host)}/cgroup")


def _run_script(script: str, args: list[str], env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(
        [str(FLEET_SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"tests/fleet/{script} failed ({result.returncode}):\n{result.stderr}")
