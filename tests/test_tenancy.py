"""Tenant rules over metadata recorded from the lab, the mapping file, and their order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hostcollector.attribution import attribute_vms
from hostcollector.config import AttributionConfig, MetadataRuleConfig
from hostcollector.model import DomainStats, TenantClaim
from hostcollector.tenancy import NOVA_1_0, NOVA_1_1, compile_rules, parse_tenant
from hostcollector.tenant_map import TenantMapFile, parse_tenant_map
from tests.conftest import by_name

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
TENANCY_NS = "https://cloud.example.com/xmlns/tenancy/1"
TENANCY_RULE = MetadataRuleConfig("tenancy", TENANCY_NS, "tenant/@id", {"tier": "tier"})
RULES = compile_rules(AttributionConfig(metadata_rules=(TENANCY_RULE,)))


def test_nova_1_1(lab_raw: list[dict[str, Any]]) -> None:
    claim = parse_tenant(by_name(lab_raw, "hc-lab-a1")["metadata"], RULES)
    assert claim is not None
    assert claim.tenant_id == ACME
    assert claim.origin == "metadata:nova-1.1"
    assert dict(claim.labels) == {
        "project_name": "acme",
        "user_id": "9d8c7b6a5f4e4d3c8b2a1f0e9d8c7b6a",
        "flavor": "g1.small",
        "display_name": "acme-train-1",
    }


def test_nova_1_0(lab_raw: list[dict[str, Any]]) -> None:
    claim = parse_tenant(by_name(lab_raw, "hc-lab-b1")["metadata"], RULES)
    assert claim is not None
    assert (claim.tenant_id, claim.origin) == (GLOBEX, "metadata:nova-1.0")
    assert dict(claim.labels)["flavor"] == "m1.tiny"


def test_custom_namespace_rule(lab_raw: list[dict[str, Any]]) -> None:
    claim = parse_tenant(by_name(lab_raw, "hc-lab-c1")["metadata"], RULES)
    assert claim == TenantClaim(GLOBEX, "metadata:tenancy", (("tier", "gold"),))
    # without the rule the same VM has no tenant
    assert (
        parse_tenant(by_name(lab_raw, "hc-lab-c1")["metadata"], compile_rules(AttributionConfig()))
        is None
    )


def test_no_metadata_no_tenant(lab_raw: list[dict[str, Any]]) -> None:
    assert parse_tenant(by_name(lab_raw, "hc-lab-orphan")["metadata"], RULES) is None


def test_namespace_qualified_xml_is_read_too() -> None:
    xml = (
        f'<nova:instance xmlns:nova="{NOVA_1_1}"><nova:owner>'
        '<nova:project uuid="p1">acme</nova:project></nova:owner></nova:instance>'
    )
    claim = parse_tenant({NOVA_1_1: xml}, RULES)
    assert claim is not None and claim.tenant_id == "p1"


def test_upgraded_fleet_prefers_1_1_over_1_0() -> None:
    owner = '<instance><owner><project uuid="{}"/></owner></instance>'
    claim = parse_tenant({NOVA_1_0: owner.format("old"), NOVA_1_1: owner.format("new")}, RULES)
    assert claim is not None and claim.tenant_id == "new"


@pytest.mark.parametrize(
    "xml",
    [
        "<instance><owner><project uuid=''/></owner></instance>",  # empty tenant
        "<instance><owner/></instance>",  # no project
        "<instance><owner><project uuid='x'>",  # malformed
        "",
    ],
)
def test_unusable_metadata_means_no_claim(xml: str) -> None:
    assert parse_tenant({NOVA_1_1: xml}, RULES) is None


def test_label_values_are_bounded() -> None:
    xml = f"<instance><name>{'x' * 5000}</name><owner><project uuid='p'/></owner></instance>"
    claim = parse_tenant({NOVA_1_1: xml}, RULES)
    assert claim is not None and len(dict(claim.labels)["display_name"]) == 256


# -- mapping file ----------------------------------------------------------------------------


def test_mapping_file_formats() -> None:
    claims = parse_tenant_map(
        b'{"D0D0D0D0-0000-4000-8000-000000000004": "t-1",'
        b' "e1": {"tenant_id": "t-2", "labels": {"flavor": "big"}}}'
    )
    assert claims["d0d0d0d0-0000-4000-8000-000000000004"] == TenantClaim("t-1", "mapping_file")
    assert claims["e1"] == TenantClaim("t-2", "mapping_file", (("flavor", "big"),))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1]", "top level must be an object"),
        (b'{"a": 1}', "a: expected a tenant id string"),
        (b'{"a": ""}', "a: empty tenant id"),
        (b'{"a": {"tenant_id": "t", "team": "x"}}', "a: unknown keys ['team']"),
        (
            b'{"a": {"tenant_id": "t", "labels": {"x": 1}}}',
            "a.labels: must map label names to strings",
        ),
        (b'{"a": "t"', "not valid JSON"),
    ],
)
def test_bad_mapping_file_is_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_tenant_map(data)


def test_mapping_file_reloads_on_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text('{"vm-1": "t-1"}')
    tenant_map = TenantMapFile(str(path))
    assert tenant_map.current()["vm-1"].tenant_id == "t-1"

    path.write_text('{"vm-1": "t-2", "vm-2": "t-3"}')
    os.utime(path, ns=(1, 2_000_000_000))  # a distinct mtime even on coarse clocks
    assert tenant_map.current()["vm-1"].tenant_id == "t-2"
    assert tenant_map.status().entries == 2 and tenant_map.status().reloads_total == 2

    path.write_text('{"vm-1": ')  # the control plane is half way through writing it
    assert tenant_map.current()["vm-1"].tenant_id == "t-2"
    assert tenant_map.current()["vm-1"].tenant_id == "t-2"
    status = tenant_map.status()
    assert status.errors_total == 1  # once per bad version, not once per poll
    assert status.last_error is not None and "keeping the last good one" in status.last_error

    path.unlink()
    assert tenant_map.current()["vm-2"].tenant_id == "t-3"
    assert tenant_map.status().errors_total == 2


def test_unconfigured_map_is_empty() -> None:
    tenant_map = TenantMapFile(None)
    assert tenant_map.current() == {}
    assert not tenant_map.status().configured


# -- attribution ------------------------------------------------------------------------------


def test_order_decides_and_unknown_vms_stay_exported() -> None:
    domains = [DomainStats("vm-a", "a"), DomainStats("vm-b", "b"), DomainStats("vm-c", "c")]
    metadata = {
        "vm-a": TenantClaim("meta-t", "metadata:nova-1.1", (("flavor", "f1"),)),
        "vm-b": None,
    }
    mapping = {
        "vm-a": TenantClaim("map-t", "mapping_file"),
        "vm-b": TenantClaim("map-b", "mapping_file"),
    }
    claims = {"metadata": metadata, "mapping_file": mapping}

    first_metadata = attribute_vms(
        domains, claims, ("metadata", "mapping_file"), ("flavor", "tier")
    )
    assert [(vm.tenant_id, vm.tenant_source) for vm in first_metadata] == [
        ("meta-t", "metadata:nova-1.1"),
        ("map-b", "mapping_file"),
        ("", ""),
    ]
    # every VM carries every allow-listed label, empty when unknown
    assert first_metadata[0].info_labels == (("flavor", "f1"), ("tier", ""))
    assert first_metadata[2].info_labels == (("flavor", ""), ("tier", ""))

    first_mapping = attribute_vms(domains, claims, ("mapping_file", "metadata"), ())
    assert [vm.tenant_id for vm in first_mapping] == ["map-t", "map-b", ""]
