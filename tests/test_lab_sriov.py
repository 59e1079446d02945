"""SR-IOV against this machine: the netlink path on real links in network namespaces, and VF
attribution through domains defined in the lab's libvirtd with hostdev VFs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostcollector.collector import Collector
from hostcollector.config import Config, LibvirtConfig, SourcesConfig, SriovConfig
from hostcollector.wiring import build_collector
from tests.labkit import defined_domain_xml, domxml, require_lab, virsh
from tests.replay import RecordedLinks
from tests.sriov_fixtures import HOSTDEV_VMS, SCENARIO, make_sysfs

pytestmark = [pytest.mark.lab]

NS_A, NS_B = "hc-sriov-a", "hc-sriov-b"
REPO = Path(__file__).parent.parent


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def veth_pair() -> Iterator[str]:
    """Two namespaces joined by a veth pair, with traffic between them. Yields NS_A."""
    if shutil.which("ip") is None or shutil.which("busybox") is None:
        pytest.fail("iproute2 and busybox are needed (tests/lab/install.sh installs them)")
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
    try:
        sh(
            "ip",
            "link",
            "add",
            "hcva",
            "netns",
            NS_A,
            "type",
            "veth",
            "peer",
            "name",
            "hcvb",
            "netns",
            NS_B,
        )
        for ns, dev, addr in ((NS_A, "hcva", "10.98.0.1/30"), (NS_B, "hcvb", "10.98.0.2/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh(
            "ip",
            "netns",
            "exec",
            NS_A,
            "busybox",
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-s",
            "1000",
            "10.98.0.2",
        )
        yield NS_A
    finally:
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


PROBE = """
import json, sys
from pathlib import Path
from hostcollector.sources.rtnetlink import parse_link
from hostcollector.sources.sriov import NetlinkLinks
index = int(Path('/sys/class/net/hcva/ifindex').read_text())
links = NetlinkLinks()
link = parse_link(links.fetch(index))
links.close()
sysfs = {n: int(Path('/sys/class/net/hcva/statistics', n).read_text())
         for n in ('rx_bytes', 'tx_bytes', 'rx_packets', 'tx_packets', 'rx_dropped', 'tx_dropped')}
print(json.dumps({'name': link.name, 'netlink': link.link_stats, 'sysfs': sysfs, 'vfs': len(link.vfs)}))
"""


def test_live_netlink_counters_match_sysfs(veth_pair: str) -> None:
    # `ip netns exec` mounts the namespace's own /sys, so both views are of the same link
    out = sh("ip", "netns", "exec", veth_pair, sys.executable, "-c", PROBE)
    seen = json.loads(out)
    assert seen["name"] == "hcva" and seen["vfs"] == 0
    assert seen["sysfs"]["tx_packets"] >= 20 and seen["sysfs"]["tx_bytes"] >= 20 * 1000
    for name, value in seen["sysfs"].items():
        assert seen["netlink"][name] == value, name


def test_source_on_a_host_without_vfs_reports_nothing_and_no_error() -> None:
    async def go() -> object:
        collector = build_collector(
            Config(sources=SourcesConfig(libvirt=LibvirtConfig(enabled=False)))
        )
        try:
            return await collector.pollers["sriov"].poll_once()
        finally:
            await collector.stop()

    sample = asyncio.run(go())
    assert sample is not None and sample.pfs == () and sample.vfs == ()  # type: ignore[attr-defined]


def hostdev_domain_xml(name: str, uuid: str, tenant: str, vf: tuple[str, int], how: str) -> str:
    pf = next(p for p in SCENARIO if p.name == vf[0])
    domain, bus, rest = pf.vf_pci(vf[1]).split(":")
    slot, function = rest.split(".")
    address = f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'"
    device = (
        f"<interface type='hostdev' managed='yes'><mac address='{domxml.scratch_mac(name)}'/>"
        f"<source><address type='pci' {address}/></source><vlan><tag id='42'/></vlan></interface>"
        if how == "interface"
        else f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address {address}/></source></hostdev>"
    )
    return defined_domain_xml(name, uuid, tenant, device, "vf.small")


@pytest.fixture
def hostdev_vms(tmp_path: Path) -> Iterator[None]:
    require_lab()
    for name, uuid, tenant, vf, how in HOSTDEV_VMS:
        path = tmp_path / f"{name}.xml"
        path.write_text(hostdev_domain_xml(name, uuid, tenant, vf, how))
        virsh("define", str(path))
    try:
        yield
    finally:
        for name, *_ in HOSTDEV_VMS:
            virsh("undefine", name, check=False)


def test_vfs_are_attributed_through_domains_in_libvirtd(hostdev_vms: None, tmp_path: Path) -> None:
    config = Config(
        sources=SourcesConfig(sriov=SriovConfig(sysfs_root=str(make_sysfs(tmp_path / "root"))))
    )

    async def go() -> Collector:
        collector = build_collector(config)
        collector.sources["sriov"]._links = RecordedLinks()  # type: ignore[attr-defined]
        try:
            await collector.poll_all_once()
        finally:
            await collector.stop()
        return collector

    snapshot = asyncio.run(go()).build_snapshot()
    owners = {(a.vf.pf, a.vf.index): (a.vm_uuid, a.tenant_id) for a in snapshot.vfs}
    for _name, uuid, tenant, vf, _how in HOSTDEV_VMS:
        assert owners[vf] == (uuid, tenant)
    unassigned = [key for key, (vm, _) in owners.items() if not vm]
    assert len(unassigned) == len(owners) - len(HOSTDEV_VMS)
    assert all(owners[key] == ("", "") for key in unassigned)
    vms = {vm.stats.uuid: vm for vm in snapshot.vms}
    for _name, uuid, tenant, _vf, _how in HOSTDEV_VMS:
        assert vms[uuid].tenant_id == tenant  # the shut-off domain is exported with its tenant
        assert vms[uuid].stats.state == 5


def test_source_reads_the_live_kernel_from_its_lane_thread(tmp_path: Path) -> None:
    """The full source, real socket: sysfs (on disk) claims loopback is a PF with 2 VFs."""
    root = tmp_path / "root"
    net = root / "sys/class/net/lo"
    device = root / "sys/devices/virtual/lo-as-pf"
    device.mkdir(parents=True)
    net.mkdir(parents=True)
    (net / "ifindex").write_text(Path("/sys/class/net/lo/ifindex").read_text())
    (device / "sriov_numvfs").write_text("2\n")
    (net / "device").symlink_to(device)
    config = Config(
        sources=SourcesConfig(
            libvirt=LibvirtConfig(enabled=False), sriov=SriovConfig(sysfs_root=str(root))
        )
    )

    async def go() -> object:
        collector = build_collector(config)
        try:
            return await collector.pollers["sriov"].poll_once()
        finally:
            await collector.stop()

    sample = asyncio.run(go())
    (pf,) = sample.pfs  # type: ignore[attr-defined]
    assert (pf.name, pf.numvfs, pf.vfs_reported, pf.truncated) == ("lo", 2, 0, True)
    assert pf.receive_bytes is not None and pf.receive_bytes > 0
    assert sample.vfs == ()  # type: ignore[attr-defined]
