"""SR-IOV through the real netlink decoding path, on messages in the kernel's binary layout and
a sysfs tree on disk (tests/sriov_fixtures.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_vfs
from hostcollector.exposition import render
from hostcollector.model import PfStats, SriovSample
from hostcollector.sources.domain_xml import domain_devices
from hostcollector.sources.rtnetlink import parse_link
from hostcollector.sources.sriov import build_pf_sample
from hostcollector.sources.sriov_sysfs import discover_pfs, read_vf_sysfs_stats
from tests.replay import RecordedLinks, poll_sriov
from tests.snapshots import snapshot_from_raw
from tests.sriov_fixtures import FIXTURE, SCENARIO, link_message, make_sysfs, recording, vf_counters


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    return make_sysfs(tmp_path / "root")


def test_the_fixture_file_is_what_the_builder_makes() -> None:
    assert json.loads(FIXTURE.read_text()) == {"sriov": recording()}, (
        "run python -m tests.sriov_fixtures"
    )


def test_sysfs_discovery(sysfs: Path) -> None:
    # a PF with VFs disabled is no PF to poll
    disabled = sysfs / "sys/devices/pci0000:00/0000:86:00.0"
    disabled.mkdir()
    (disabled / "sriov_numvfs").write_text("0\n")
    (sysfs / "sys/class/net/ens7").mkdir()
    (sysfs / "sys/class/net/ens7/ifindex").write_text("9\n")
    os.symlink("../../devices/pci0000:00/0000:86:00.0", sysfs / "sys/class/net/ens7/device")

    pfs = discover_pfs(sysfs)
    assert [(p.name, p.ifindex, p.pci_address, p.numvfs) for p in pfs] == [
        ("enp59s0f0", 4, "0000:3b:00.0", 4),
        ("enp59s0f1", 5, "0000:3b:00.1", 2),
        ("enp94s0f0", 6, "0000:5e:00.0", 256),
    ]
    assert pfs[0].vf_pci == {
        0: "0000:3b:02.0",
        1: "0000:3b:02.1",
        2: "0000:3b:02.2",
        3: "0000:3b:02.3",
    }
    assert pfs[2].vf_pci[255] == "0000:5f:21.7"
    assert discover_pfs(sysfs / "nowhere") == []


def test_vf_counters_and_config_from_netlink(sysfs: Path) -> None:
    pf = discover_pfs(sysfs)[0]
    stats, vfs = build_pf_sample(pf, parse_link(link_message(SCENARIO[0])), lambda *_: None)
    assert stats == PfStats(
        "enp59s0f0", "0000:3b:00.0", 4, 4, False, 6_000_000, 4000, 3_600_000, 3600
    )
    assert [vf.index for vf in vfs] == [0, 1, 2, 3]
    vf = vfs[1]
    expected = vf_counters(SCENARIO[0], 1)
    assert (vf.pci_address, vf.stats_source) == ("0000:3b:02.1", "netlink")
    assert (vf.receive_packets, vf.transmit_bytes) == (expected["rx_packets"], expected["tx_bytes"])
    assert (vf.receive_drop, vf.transmit_drop) == (expected["rx_dropped"], expected["tx_dropped"])
    assert (vf.mac, vf.vlan, vf.spoof_check, vf.trust, vf.link_state) == (
        "52:54:00:04:00:01",
        101,
        True,
        False,
        "auto",
    )
    assert vfs[0].max_tx_rate_mbps == 1000


def test_kernel_without_drop_counters_has_no_drop_series(sysfs: Path) -> None:
    pf = discover_pfs(sysfs)[1]
    _, vfs = build_pf_sample(pf, parse_link(link_message(SCENARIO[1])), lambda *_: None)
    assert all(vf.receive_drop is None and vf.transmit_drop is None for vf in vfs)
    assert all(vf.receive_bytes is not None for vf in vfs)


def test_truncated_vf_list_is_detected_and_filled_from_sysfs_never_zeros(sysfs: Path) -> None:
    pf = discover_pfs(sysfs)[2]
    link = parse_link(link_message(SCENARIO[2]))
    assert (link.num_vf, len(link.vfs)) == (256, 220)
    stats, vfs = build_pf_sample(pf, link, lambda name, vf: read_vf_sysfs_stats(sysfs, name, vf))
    assert stats.truncated and (stats.numvfs, stats.vfs_reported) == (256, 220)
    by_index = {vf.index: vf for vf in vfs}
    assert sorted(by_index) == list(range(240))  # 240-255: no counters anywhere, so absent
    assert {by_index[i].stats_source for i in range(220)} == {"netlink"}
    filled = by_index[231]
    expected = vf_counters(SCENARIO[2], 231)
    assert filled.stats_source == "sysfs" and filled.pci_address == "0000:5f:1e.7"
    assert (filled.receive_bytes, filled.transmit_drop) == (
        expected["rx_bytes"],
        expected["tx_dropped"],
    )
    assert filled.receive_broadcast is None  # the driver's sysfs has none: absent, not zero


def test_mlx5_style_sysfs_stats_file(tmp_path: Path) -> None:
    stats = tmp_path / "sys/class/net/p0/device/sriov/3/stats"
    stats.parent.mkdir(parents=True)
    stats.write_text(
        "tx_packets    : 12\ntx_bytes : 3400\nrx_packets: 7\nrx_bytes: 900\nrx_broadcast : 2\n"
    )
    assert read_vf_sysfs_stats(tmp_path, "p0", 3) == {
        "transmit_packets": 12,
        "transmit_bytes": 3400,
        "receive_packets": 7,
        "receive_bytes": 900,
        "receive_broadcast": 2,
    }
    assert read_vf_sysfs_stats(tmp_path, "p0", 4) is None


def test_source_polls_one_pf_at_a_time_and_records_raw(sysfs: Path) -> None:
    links = RecordedLinks()
    sample = poll_sriov(sysfs, links, record_raw=True)
    assert links.asked == [4, 5, 6]
    assert [pf.name for pf in sample.pfs] == ["enp59s0f0", "enp59s0f1", "enp94s0f0"]
    assert len(sample.vfs) == 4 + 2 + 240
    # `dump --raw` writes exactly what the fixture holds: recordings from hardware drop in
    assert list(sample.raw or ()) == recording()


def test_pfs_and_vfs_coming_and_going(sysfs: Path) -> None:
    # a PF that vanished between sysfs and netlink (driver reload) is skipped
    links = RecordedLinks()
    del links.by_index[5]
    assert [pf.name for pf in poll_sriov(sysfs, links).pfs] == ["enp59s0f0", "enp94s0f0"]
    # sriov_numvfs lowered to 2 while the kernel still listed 4: no truncation, unknown PCI
    (sysfs / "sys/devices/pci0000:00/0000:3b:00.0/sriov_numvfs").write_text("2\n")
    for index in (2, 3):
        (sysfs / f"sys/devices/pci0000:00/0000:3b:00.0/virtfn{index}").unlink()
    sample = poll_sriov(sysfs)
    first = [vf for vf in sample.vfs if vf.pf == "enp59s0f0"]
    assert [vf.pci_address for vf in first] == ["0000:3b:02.0", "0000:3b:02.1", None, None]
    assert not sample.pfs[0].truncated
    # every PF gone: no data, no error
    shutil.rmtree(sysfs / "sys/class/net")
    assert poll_sriov(sysfs) == SriovSample((), (), None)


def test_hostdev_addresses_from_domain_xml() -> None:
    xml = """<domain type='kvm'><devices>
      <hostdev mode='subsystem' type='pci' managed='yes'>
        <source><address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></hostdev>
      <interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/>
        <source><address type='pci' domain='0x0000' bus='0x3c' slot='0x02' function='0x0'/></source>
        <vlan><tag id='42'/></vlan></interface>
      <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
        <source><address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>
      <hostdev mode='subsystem' type='usb'><source><address bus='1' device='2'/></source></hostdev>
      <interface type='bridge'><source bridge='br0'/></interface>
    </devices></domain>"""
    assert domain_devices(xml).pci == ("0000:3b:02.1", "0000:3c:02.0")
    assert domain_devices("<domain").pci == ()


def test_vfs_attributed_to_vms_and_tenants_and_rendered(sysfs: Path) -> None:
    sample = poll_sriov(sysfs)
    base = snapshot_from_raw()
    acme = next(vm for vm in base.vms if vm.stats.name == "hc-lab-a1")
    globex = next(vm for vm in base.vms if vm.stats.name == "hc-lab-b1")
    pci_devices = {
        acme.stats.uuid: ("0000:3b:02.1",),
        globex.stats.uuid: ("0000:3c:02.0", "0000:86:00.0"),
    }
    vfs = attribute_vfs(sample.vfs, pci_devices, base.vms)
    snapshot = dataclasses.replace(base, pfs=sample.pfs, vfs=vfs)
    text = render(snapshot).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def series(name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(k), v)
            for (n, k), v in samples.items()
            if n == name and set(labels.items()) <= set(k)
        ]

    ((labels, value),) = series("hostcollector_vf_receive_bytes_total", pf="enp59s0f0", vf="1")
    assert labels["vm_uuid"] == acme.stats.uuid and labels["tenant_id"] == acme.tenant_id != ""
    assert value == vf_counters(SCENARIO[0], 1)["rx_bytes"]
    ((labels, _),) = series("hostcollector_vf_info", pf="enp59s0f1", vf="0")
    assert (labels["tenant_id"], labels["vlan"], labels["stats_source"]) == (
        globex.tenant_id,
        "0",
        "netlink",
    )
    assert series("hostcollector_vf_receive_drop_total", pf="enp59s0f1") == []
    assert series("hostcollector_vfs_unattributed")[0][1] == 246 - 2
    assert series("hostcollector_pf_vf_list_truncated", pf="enp94s0f0")[0][1] == 1
    assert series("hostcollector_pf_vfs_reported", pf="enp94s0f0")[0][1] == 220
    # VFs 240-255 of the truncated PF: no series at all, never zeros
    assert series("hostcollector_vf_info", pf="enp94s0f0", vf="250") == []
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text.encode(), capture_output=True
        )
        assert check.returncode == 0 and not check.stdout and not check.stderr, check


def pyroute2_decode(data: bytes) -> dict[str, object]:
    """pyroute2's own generic decoder, as the oracle for hostcollector's struct decoder."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg(data)
    msg.decode()
    vfs = []
    for info in msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO"):
        stats = info.get_attr("IFLA_VF_STATS")
        vfs.append(
            {
                "index": info.get_attr("IFLA_VF_MAC")["vf"],
                "mac": info.get_attr("IFLA_VF_MAC")["mac"],
                "vlan": info.get_attr("IFLA_VF_VLAN")["vlan"],
                "max_tx_rate_mbps": info.get_attr("IFLA_VF_RATE")["max_tx_rate"],
                "spoof_check": bool(info.get_attr("IFLA_VF_SPOOFCHK")["spoofchk"]),
                "trust": bool(info.get_attr("IFLA_VF_TRUST")["trust"]),
                "receive_bytes": stats.get_attr("IFLA_VF_STATS_RX_BYTES"),
                "transmit_packets": stats.get_attr("IFLA_VF_STATS_TX_PACKETS"),
                "receive_multicast": stats.get_attr("IFLA_VF_STATS_MULTICAST"),
                "receive_drop": stats.get_attr("IFLA_VF_STATS_RX_DROPPED"),
            }
        )
    return {
        "name": msg.get_attr("IFLA_IFNAME"),
        "num_vf": msg.get_attr("IFLA_NUM_VF"),
        "rx_bytes": msg.get_attr("IFLA_STATS64")["rx_bytes"],
        "vfs": vfs,
    }


@pytest.mark.parametrize("pf", SCENARIO, ids=lambda pf: pf.name)
def test_struct_decoder_agrees_with_pyroute2(pf) -> None:  # type: ignore[no-untyped-def]
    data = link_message(pf)
    ours = parse_link(data)
    oracle = pyroute2_decode(data)
    assert (ours.name, ours.num_vf, ours.link_stats["rx_bytes"]) == (
        oracle["name"],
        oracle["num_vf"],
        oracle["rx_bytes"],
    )
    keys = (
        "index",
        "mac",
        "vlan",
        "max_tx_rate_mbps",
        "spoof_check",
        "trust",
        "receive_bytes",
        "transmit_packets",
        "receive_multicast",
        "receive_drop",
    )
    assert [{k: getattr(vf, k) for k in keys} for vf in ours.vfs] == oracle["vfs"]


def test_truncated_or_garbled_messages_end_the_list_not_the_poll() -> None:
    data = link_message(SCENARIO[0])
    for cut in (40, len(data) // 2, len(data) - 3):
        link = parse_link(data[:cut])  # never raises; keeps what was complete
        assert len(link.vfs) <= 4
