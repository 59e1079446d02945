"""InfiniBand (IPoIB) PFs through the same path as Ethernet ones: kernel-layout RTM_NEWLINK
messages (tests/sriov_fixtures.py's ipoib_message) and a sysfs tree on disk, beside the Ethernet
scenario, which must come out as it did."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_vfs
from hostcollector.exposition import render
from hostcollector.sources.rtnetlink import format_guid, parse_link
from hostcollector.sources.sriov_sysfs import discover_pfs
from tests.replay import RecordedLinks, poll_sriov
from tests.snapshots import snapshot_from_raw
from tests.sriov_fixtures import (
    IPOIB_ADDRESS,
    IPOIB_PF,
    SCENARIO,
    ib_guids,
    ifla_vf_guid,
    ipoib_message,
    make_sysfs,
    recording,
    vf_counters,
)

PFS = [*SCENARIO, IPOIB_PF]
IB_ADDRESS_TEXT = ":".join(f"{b:02x}" for b in IPOIB_ADDRESS)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    return make_sysfs(tmp_path / "root", PFS)


def test_ipoib_pf_is_discovered_by_sriov_capability_and_its_pkey_child_is_not(
    sysfs: Path,
) -> None:
    pfs = {pf.name: pf for pf in discover_pfs(sysfs)}
    # class 0x020700 (InfiniBand), not Ethernet's 0x0200: found all the same
    assert sorted(pfs) == ["enp59s0f0", "enp59s0f1", "enp94s0f0", "ibp175s0"]
    ib = pfs["ibp175s0"]
    assert (ib.ifindex, ib.pci_address, ib.numvfs) == (7, "0000:af:00.0", 3)
    assert ib.vf_pci == {0: "0000:b0:02.0", 1: "0000:b0:02.1", 2: "0000:b0:02.2"}
    # ibp175s0.8001 has the same device/sriov_numvfs; polling it would list every VF twice
    assert (sysfs / "sys/class/net/ibp175s0.8001/device/sriov_numvfs").read_text() == "3\n"


def test_ipoib_message_decodes_link_type_address_counters_and_guids() -> None:
    link = parse_link(ipoib_message(IPOIB_PF))
    assert (link.name, link.link_type, link.num_vf) == ("ibp175s0", "infiniband", 3)
    assert [vf.index for vf in link.vfs] == [0, 1, 2]
    vf = link.vfs[1]
    expected = vf_counters(IPOIB_PF, 1)
    assert (vf.receive_packets, vf.transmit_packets, vf.receive_bytes, vf.transmit_bytes) == (
        expected["rx_packets"],
        expected["tx_packets"],
        expected["rx_bytes"],
        expected["tx_bytes"],
    )
    assert vf.receive_multicast == expected["multicast"] == 2
    # the kernel sent BROADCAST/RX_DROPPED/TX_DROPPED as 0 (never filled by mlx5_ib): absent
    assert (vf.receive_broadcast, vf.receive_drop, vf.transmit_drop) == (None, None, None)
    # the 20-byte address in ifla_vf_mac's 32, not its first 6 bytes
    assert vf.mac == IB_ADDRESS_TEXT and len(vf.mac.split(":")) == 20
    assert (vf.node_guid, vf.port_guid) == ("0c:42:a1:ff:fe:5e:2c:01", "0c:42:a1:ff:fe:5e:2d:01")
    assert (vf.spoof_check, vf.trust) == (False, False)
    # VF 2's GUIDs were never set: the kernel sends 0, shown as no GUID
    assert (link.vfs[2].node_guid, link.vfs[2].port_guid) == (None, None)


def test_guid_layout_and_format_as_iproute2() -> None:
    # iproute2's get_guid reads "0c:42:..." most significant byte first into the u64
    assert format_guid(0x0C42A1FFFE5E2C01) == "0c:42:a1:ff:fe:5e:2c:01"
    assert format_guid(0) is None
    payload = ifla_vf_guid(1, 0x0C42A1FFFE5E2C01)
    assert len(payload) == 16 and payload[4:8] == b"\0\0\0\0"
    # a message whose GUID attributes have a size no ABI gives struct ifla_vf_guid: ignored
    data = ipoib_message(IPOIB_PF)
    at = data.index(struct.pack("=HH", 20, 10))  # the first IFLA_VF_IB_NODE_GUID
    bad = bytearray(data)
    struct.pack_into("=H", bad, at, 12)  # claims 8 bytes of payload; the rest is skipped
    assert parse_link(bytes(bad)).vfs[0].node_guid is None


def test_ipoib_guids_agree_with_pyroute2() -> None:
    # pyroute2 0.9.7 decodes vf_ib_*_guid as {u32; u8[32]} and reads the GUID from bytes 8-16
    # of the payload (reading past the 16-byte attribute into the next one): the value agrees
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg(ipoib_message(IPOIB_PF))
    msg.decode()
    assert msg["ifi_type"] == 32
    oracle = [
        (
            info.get_attr("IFLA_VF_IB_NODE_GUID")["ib_node_guid"],
            info.get_attr("IFLA_VF_IB_PORT_GUID")["ib_port_guid"],
        )
        for info in msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")
    ]
    ours = [(vf.node_guid, vf.port_guid) for vf in parse_link(ipoib_message(IPOIB_PF)).vfs]
    zero = "00:00:00:00:00:00:00:00"
    assert [(n or zero, p or zero) for n, p in ours] == oracle
    assert oracle[0] == tuple(format_guid(g) for g in ib_guids(0))


def test_ipoib_vf_counters_and_guids_reach_the_vms_tenant_ethernet_unchanged(
    sysfs: Path,
) -> None:
    sample = poll_sriov(sysfs, RecordedLinks(recording(PFS)))
    ethernet_only = poll_sriov(
        make_sysfs(sysfs.parent / "ethernet", SCENARIO), RecordedLinks(recording(SCENARIO))
    )
    assert [vf for vf in sample.vfs if vf.pf != "ibp175s0"] == list(ethernet_only.vfs)
    assert {vf.link_type for vf in ethernet_only.vfs} == {"ether"}
    assert all(vf.node_guid is None for vf in ethernet_only.vfs)

    base = snapshot_from_raw()
    acme = next(vm for vm in base.vms if vm.stats.name == "hc-lab-a1")
    vfs = attribute_vfs(sample.vfs, {acme.stats.uuid: ("0000:b0:02.1",)}, base.vms)
    text = render(dataclasses.replace(base, pfs=sample.pfs, vfs=vfs)).decode()
    samples = [
        (s.name, s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("pf") == "ibp175s0"
    ]

    def series(name: str, vf: str) -> list[tuple[dict[str, str], float]]:
        return [(labels, v) for n, labels, v in samples if n == name and labels["vf"] == vf]

    ((labels, value),) = series("hostcollector_vf_receive_bytes_total", "1")
    assert (labels["vm_uuid"], labels["tenant_id"]) == (acme.stats.uuid, acme.tenant_id)
    assert acme.tenant_id and value == vf_counters(IPOIB_PF, 1)["rx_bytes"]
    ((labels, _),) = series("hostcollector_vf_receive_multicast_packets_total", "1")
    assert labels["tenant_id"] == acme.tenant_id
    ((info, _),) = series("hostcollector_vf_info", "1")
    assert (info["link_type"], info["node_guid"], info["port_guid"], info["tenant_id"]) == (
        "infiniband",
        "0c:42:a1:ff:fe:5e:2c:01",
        "0c:42:a1:ff:fe:5e:2d:01",
        acme.tenant_id,
    )
    assert info["mac"] == IB_ADDRESS_TEXT
    ((unset, _),) = series("hostcollector_vf_info", "2")
    assert (unset["node_guid"], unset["port_guid"], unset["vm_uuid"]) == ("", "", "")
    for absent in (
        "hostcollector_vf_receive_drop_total",
        "hostcollector_vf_transmit_drop_total",
        "hostcollector_vf_receive_broadcast_packets_total",
    ):
        assert [n for n, *_ in samples if n == absent] == []
    ethernet_info = [
        s.labels
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hostcollector_vf_info" and s.labels["pf"] == "enp59s0f0"
    ]
    assert {(i["link_type"], i["node_guid"], i["port_guid"]) for i in ethernet_info} == {
        ("ether", "", "")
    }
