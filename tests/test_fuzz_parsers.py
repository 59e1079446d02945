"""Fuzz tests of the parsers that take input hostcollector does not control.

- Domain metadata (`tenancy.parse_tenant`): whoever writes a domain's metadata element (the
  cloud, sometimes on a tenant's say) decides its text. Any text returns a claim or None, and a
  claim's values are bounded by MAX_LABEL_VALUE_CHARS.
- The domain XML (`domain_xml.domain_devices`): any text returns the devices it names, or none.
- RTM_NEWLINK messages (`rtnetlink.parse_link`, then `sriov.build_pf_sample` against a sysfs tree
  on disk): any attribute values decode as pyroute2's own decoder reads them, any bytes decode
  without raising, and no value in a message makes the source do unbounded work.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from hostcollector.config import AttributionConfig, MetadataRuleConfig
from hostcollector.model import TenantClaim
from hostcollector.sources.domain_xml import DomainDevices, domain_devices, pci_address
from hostcollector.sources.rtnetlink import (
    LINK_STATES,
    LINK_STATS64,
    UNSUPPORTED,
    VfInfo,
    link_counters,
    parse_link,
)
from hostcollector.sources.sriov import build_pf_sample
from hostcollector.sources.sriov_sysfs import PhysicalFunction, discover_pfs, read_vf_sysfs_stats
from hostcollector.tenancy import MAX_LABEL_VALUE_CHARS, NOVA_1_1, compile_rules, parse_tenant
from tests.sriov_fixtures import RTM_NEWLINK, SCENARIO, link_message, make_sysfs

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- domain metadata ------------------------------------------------------------------------------

DEEP_NS = "https://cloud.example.com/xmlns/deep/1"
DEEP_PATH = "/".join(["level"] * 40)
RULES = compile_rules(
    AttributionConfig(
        metadata_rules=(
            MetadataRuleConfig("deep", DEEP_NS, f"{DEEP_PATH}/@id", {"tier": DEEP_PATH}),
        )
    )
)
NAMESPACES = (NOVA_1_1, DEEP_NS)

# Every str, lone surrogates included: a JSON recording (`dump --raw`) decodes "\ud800" to one.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=2000)
# XML 1.0's Char production: C1 controls, bidi overrides, BOMs and noncharacters among them.
XML_CHARS = st.one_of(
    st.sampled_from("\t\n\r\x7f\x85\x9b\u2028\u202e\ufeff"),
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFD),
    st.characters(min_codepoint=0x10000),
)


@st.composite
def hostile_values(draw: st.DrawFn) -> str:
    """Short, blank, padded, or a megabyte long."""
    text: str = draw(st.text(XML_CHARS, max_size=40))
    return text * draw(st.sampled_from((1, 1, 1, 2, 300, 30_000)))


def text_node(value: str) -> str:
    # A raw \r in element text reads back as \n (end-of-line handling): escape it too.
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def attribute(value: str) -> str:
    # A raw tab, CR or LF in an attribute reads back as a space (attribute normalization).
    for char, ref in (("&", "&amp;"), ('"', "&quot;"), ("<", "&lt;"), ("\t", "&#9;")):
        value = value.replace(char, ref)
    return '"' + value.replace("\n", "&#10;").replace("\r", "&#13;") + '"'


def nested(depth: int, inner: str) -> str:
    return "<x>" * depth + inner + "</x>" * depth


# Out of the rule's path (nested in <x>): never read, however deep.
DECOY = "<owner><project uuid='decoy'/></owner>"


def expected(value: str) -> str | None:
    return value.strip()[:MAX_LABEL_VALUE_CHARS] or None


def assert_bounded(claim: TenantClaim | None) -> None:
    if claim is None:
        return
    assert 0 < len(claim.tenant_id) <= MAX_LABEL_VALUE_CHARS
    for _label, value in claim.labels:
        assert 0 < len(value) <= MAX_LABEL_VALUE_CHARS


@FUZZ
@example({NOVA_1_1: "<instance><owner><project uuid='\ud800'/></owner></instance>"})
@given(by_namespace=st.dictionaries(st.sampled_from(NAMESPACES), st.none() | ANY_TEXT))
def test_any_metadata_text_gives_a_bounded_claim_or_none(
    by_namespace: dict[str, str | None],
) -> None:
    assert_bounded(parse_tenant(by_namespace, RULES))


@FUZZ
@given(
    project=hostile_values(),
    name=hostile_values(),
    flavor=hostile_values(),
    decoy_depth=st.sampled_from((1, 50, 50_000)),
    prefixed=st.booleans(),
)
def test_hostile_values_in_nova_metadata_are_read_exactly_and_bounded(
    project: str, name: str, flavor: str, decoy_depth: int, prefixed: bool
) -> None:
    ns = f' xmlns:n="{NOVA_1_1}"' if prefixed else ""
    p = "n:" if prefixed else ""
    xml = (
        f"<{p}instance{ns}>{nested(decoy_depth, DECOY)}"
        f"<{p}name>{text_node(name)}</{p}name><{p}flavor name={attribute(flavor)}/>"
        f"<{p}owner><{p}project uuid={attribute(project)}>p</{p}project></{p}owner>"
        f"</{p}instance>"
    )
    claim = parse_tenant({NOVA_1_1: xml}, RULES)
    assert_bounded(claim)
    if expected(project) is None:
        assert claim is None
        return
    assert claim is not None and claim.tenant_id == expected(project)
    labels = dict(claim.labels)
    assert labels.get("display_name") == expected(name)
    assert labels.get("flavor") == expected(flavor)


@FUZZ
@given(value=hostile_values(), depth=st.sampled_from((0, 1, 39, 40, 41, 2_000)))
def test_a_deeply_nested_rule_path(value: str, depth: int) -> None:
    levels = "<level>" * 40 + f"<level id={attribute(value)}>" + "</level>" * 41
    claim = parse_tenant({DEEP_NS: f"<root>{nested(depth, '')}{levels}</root>"}, RULES)
    assert_bounded(claim)
    assert claim is None or claim.tenant_id == expected(value)


@FUZZ
@given(
    base=st.text(XML_CHARS.filter(lambda c: c not in '&%"<'), min_size=1, max_size=20),
    fanout=st.integers(1, 12),
    levels=st.integers(1, 9),
)
def test_entity_expansion_is_bounded(base: str, fanout: int, levels: int) -> None:
    entities = [f'<!ENTITY e0 "{base}">']
    for level in range(1, levels + 1):
        entities.append(f'<!ENTITY e{level} "{f"&e{level - 1};" * fanout}">')
    top = f"&e{levels};"
    xml = (
        f"<!DOCTYPE instance [{''.join(entities)}]>"
        f"<instance><name>{top}</name><owner><project uuid='{top}'/></owner></instance>"
    )
    assert_bounded(parse_tenant({NOVA_1_1: xml}, RULES))


# -- the domain XML's host devices ----------------------------------------------------------------

HEX_ATTR = st.one_of(
    st.integers(0, 0xFFFF).map(hex),
    st.integers(-(2**70), 2**70).map(hex),
    st.text(string.hexdigits + "xX_-+ ", max_size=12),
    hostile_values(),
)


@FUZZ
@example("<domain><devices><hostdev type='mdev'><source><address uuid='\ud800'/>")
@given(xml=ANY_TEXT)
def test_any_domain_xml_text_names_devices_or_none(xml: str) -> None:
    devices = domain_devices(xml)
    assert isinstance(devices, DomainDevices)


@st.composite
def hostdev(draw: st.DrawFn) -> tuple[str, str | None]:
    """(the device's XML, the address the parser must find, where it is a valid one)."""
    kind = draw(st.sampled_from(("pci", "interface", "mdev")))
    if kind == "mdev":
        uuid = draw(st.uuids().map(str) | hostile_values())
        return (
            f"<hostdev mode='subsystem' type='mdev'><source><address uuid={attribute(uuid)}/>"
            "</source></hostdev>",
            None,
        )
    parts = [draw(HEX_ATTR) for _ in range(4)]
    address = " ".join(
        f"{name}={attribute(value)}"
        for name, value in zip(("domain", "bus", "slot", "function"), parts, strict=True)
    )
    if kind == "pci":
        xml = (
            f"<hostdev mode='subsystem' type='pci'><source><address {address}/></source></hostdev>"
        )
    else:
        xml = f"<interface type='hostdev'><source><address type='pci' {address}/></source></interface>"
    try:
        valid = pci_address(*parts) if all(int(p, 16) >= 0 for p in parts) else None
    except ValueError:
        valid = None
    return xml, valid


@FUZZ
@given(devices=st.lists(hostdev(), max_size=8), depth=st.sampled_from((0, 1, 20_000)))
def test_hostile_device_addresses(devices: list[tuple[str, str | None]], depth: int) -> None:
    xml = f"<domain>{nested(depth, '')}<devices>{''.join(x for x, _ in devices)}</devices></domain>"
    found = domain_devices(xml)
    assert all(isinstance(address, str) for address in found.pci + found.mdev)
    for _xml, valid in devices:
        if valid is not None:
            assert valid in found.pci


# -- RTM_NEWLINK ----------------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
VF_STAT_NAMES = (
    "IFLA_VF_STATS_RX_PACKETS",
    "IFLA_VF_STATS_TX_PACKETS",
    "IFLA_VF_STATS_RX_BYTES",
    "IFLA_VF_STATS_TX_BYTES",
    "IFLA_VF_STATS_BROADCAST",
    "IFLA_VF_STATS_MULTICAST",
    "IFLA_VF_STATS_RX_DROPPED",
    "IFLA_VF_STATS_TX_DROPPED",
)
OUR_VF_STATS = (
    "receive_packets",
    "transmit_packets",
    "receive_bytes",
    "transmit_bytes",
    "receive_broadcast",
    "receive_multicast",
    "receive_drop",
    "transmit_drop",
)


@pytest.fixture(scope="module")
def sysfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sysfs(tmp_path_factory.mktemp("sysfs"))


@pytest.fixture(scope="module")
def pf(sysfs: Path) -> PhysicalFunction:
    return discover_pfs(sysfs)[0]  # 4 VFs, the first with i40e-style sysfs stats elsewhere


class CountedSysfsStats:
    """read_vf_sysfs_stats on the tree on disk, failing once asked more than `limit` times."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root, self.limit, self.calls = root, limit, 0

    def __call__(self, pf: str, vf: int) -> dict[str, int] | None:
        self.calls += 1
        assert self.calls <= self.limit, f"more than {self.limit} sysfs lookups for one PF"
        return read_vf_sysfs_stats(self.root, pf, vf)


def assert_builds(data: bytes, pf: PhysicalFunction, sysfs: Path) -> None:
    """The source's path for one PF: decode, then join with sysfs; bounded, and never raising."""
    link = parse_link(data)
    assert len(link.vfs) <= len(data) // 4  # every VF costs an attribute header at least
    # the kernel path's tap read: the same name and counters, whatever the message holds
    quick = link_counters(data)
    assert (quick.name, quick.link_stats, quick.vfs) == (link.name, link.link_stats, ())
    lookups = CountedSysfsStats(sysfs, limit=len(pf.vf_pci))
    stats, vfs = build_pf_sample(pf, link, lookups)
    assert len(vfs) <= len(link.vfs) + len(pf.vf_pci)
    assert stats.vfs_reported <= len(link.vfs)


@st.composite
def vf_info(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    index = draw(U32)
    chosen = draw(
        st.lists(
            st.sampled_from(("mac", "vlan", "rate", "spoofchk", "link", "trust", "stats")),
            unique=True,
        )
    )
    attrs: list[tuple[str, dict[str, Any]]] = []
    for name in chosen:
        if name == "mac":
            mac = ":".join(f"{b:02x}" for b in draw(st.binary(min_size=6, max_size=6)))
            attrs.append(("IFLA_VF_MAC", {"vf": index, "mac": mac}))
        elif name == "vlan":
            attrs.append(("IFLA_VF_VLAN", {"vf": index, "vlan": draw(U32), "qos": draw(U32)}))
        elif name == "rate":
            rates = {"min_tx_rate": draw(U32), "max_tx_rate": draw(U32)}
            attrs.append(("IFLA_VF_RATE", {"vf": index, **rates}))
        elif name == "spoofchk":
            setting = draw(st.sampled_from((0, 1, 2, UNSUPPORTED)) | U32)
            attrs.append(("IFLA_VF_SPOOFCHK", {"vf": index, "spoofchk": setting}))
        elif name == "link":
            state = draw(st.sampled_from((0, 1, 2, 3)) | U32)
            attrs.append(("IFLA_VF_LINK_STATE", {"vf": index, "link_state": state}))
        elif name == "trust":
            setting = draw(st.sampled_from((0, 1, UNSUPPORTED)) | U32)
            attrs.append(("IFLA_VF_TRUST", {"vf": index, "trust": setting}))
        else:
            counters = draw(st.lists(st.sampled_from(VF_STAT_NAMES), unique=True))
            attrs.append(("IFLA_VF_STATS", {"attrs": [(c, draw(U64)) for c in counters]}))
    return attrs


def encode_link(
    ifname: str, num_vf: int | None, stats64: dict[str, int], vfs: list[list[Any]]
) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"] = 4
    attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", ifname), ("IFLA_STATS64", stats64)]
    if num_vf is not None:
        attrs.append(("IFLA_NUM_VF", num_vf))
    attrs.append(("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": a}) for a in vfs]}))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


def pyroute2_reads(data: bytes) -> tuple[str, int | None, dict[str, int], list[VfInfo]]:
    """What pyroute2's generic decoder reads, in hostcollector's terms: the oracle."""
    msg = ifinfmsg(data)
    msg.decode()
    stats64 = msg.get_attr("IFLA_STATS64")
    vfs = []
    for info in msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO"):
        fields: dict[str, Any] = {"index": None}
        if (vlan := info.get_attr("IFLA_VF_VLAN")) is not None:
            fields |= {"index": vlan["vf"], "vlan": vlan["vlan"], "qos": vlan["qos"]}
        if (mac := info.get_attr("IFLA_VF_MAC")) is not None:
            fields["index"] = mac["vf"]
            if mac["mac"] != "00:00:00:00:00:00":
                fields["mac"] = mac["mac"]
        if (rate := info.get_attr("IFLA_VF_RATE")) is not None:
            fields["min_tx_rate_mbps"] = rate["min_tx_rate"]
            fields["max_tx_rate_mbps"] = rate["max_tx_rate"]
        for attr, key, field in (
            ("IFLA_VF_SPOOFCHK", "spoofchk", "spoof_check"),
            ("IFLA_VF_TRUST", "trust", "trust"),
        ):
            if (setting := info.get_attr(attr)) is not None and setting[key] != UNSUPPORTED:
                fields[field] = bool(setting[key])
        if (link := info.get_attr("IFLA_VF_LINK_STATE")) is not None:
            fields["link_state"] = LINK_STATES.get(link["link_state"])
        if (counters := info.get_attr("IFLA_VF_STATS")) is not None:
            for attr, field in zip(VF_STAT_NAMES, OUR_VF_STATS, strict=True):
                if (value := counters.get_attr(attr)) is not None:
                    fields[field] = value
        vfs.append(VfInfo(**fields))
    return (
        msg.get_attr("IFLA_IFNAME"),
        msg.get_attr("IFLA_NUM_VF"),
        {name: stats64[name] for name in (*LINK_STATS64, "rx_missed_errors")},
        vfs,
    )


@FUZZ
@example(ifname="p", num_vf=2**32 - 1, stats=[0] * 9, vfs=[])  # a VF count no PF can have
@given(
    ifname=st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=15),
    num_vf=st.none() | U32,
    stats=st.lists(U64, min_size=9, max_size=9),
    vfs=st.lists(vf_info(), max_size=24),
)
def test_any_attribute_values_decode_as_pyroute2_reads_them(
    ifname: str,
    num_vf: int | None,
    stats: list[int],
    vfs: list[list[Any]],
    pf: PhysicalFunction,
    sysfs: Path,
) -> None:
    counters = dict(zip((*LINK_STATS64, "rx_missed_errors"), stats, strict=True))
    data = encode_link(ifname, num_vf, counters, vfs)
    link = parse_link(data)
    assert (link.name, link.num_vf, link.link_stats, list(link.vfs)) == pyroute2_reads(data)
    assert_builds(data, pf, sysfs)


@FUZZ
@example(data=b"")
@example(data=b"\x10\x00")
@example(data=b"\x00\x00\x00")
@given(data=st.binary(max_size=600))
def test_any_bytes_decode_without_raising(data: bytes, pf: PhysicalFunction, sysfs: Path) -> None:
    assert_builds(data, pf, sysfs)


MESSAGES = [link_message(spec) for spec in SCENARIO[:2]]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real message with lengths, types and values overwritten, cut short or overlong."""
    data = bytearray(draw(st.sampled_from(MESSAGES)))
    for _ in range(draw(st.integers(1, 10))):
        at = draw(st.integers(0, len(data) - 1)) & ~3 if data else 0
        action = draw(st.sampled_from(("u16", "u32", "byte", "cut", "garbage")))
        if action == "u16" and at + 2 <= len(data):
            data[at : at + 2] = draw(
                st.sampled_from((0, 1, 3, 4, 5, 0xFFFF)) | st.integers(0, 0xFFFF)
            ).to_bytes(2, "little")
        elif action == "u32" and at + 4 <= len(data):
            data[at : at + 4] = draw(U32).to_bytes(4, "little")
        elif action == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[draw(st.integers(0, len(data))) :]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_mutated_messages_decode_without_raising(
    data: bytes, pf: PhysicalFunction, sysfs: Path
) -> None:
    assert_builds(data, pf, sysfs)
