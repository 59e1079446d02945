"""Snapshots built from recorded lab data through the real parsing and attribution code."""

from __future__ import annotations

from typing import Any

from hostcollector.attribution import attribute_vms
from hostcollector.config import AttributionConfig, MetadataRuleConfig
from hostcollector.model import (
    DomainStats,
    LibvirtHealth,
    Snapshot,
    SourceStatus,
    TenantMapStatus,
    VmFreshness,
)
from hostcollector.selfmetrics import libvirt_samples, source_samples
from hostcollector.sources.libvirt_stats import parse_domain_stats
from hostcollector.tenancy import compile_rules, parse_tenant
from tests.conftest import load_raw

LAB_ATTRIBUTION = AttributionConfig(
    metadata_rules=(
        MetadataRuleConfig(
            "tenancy", "https://cloud.example.com/xmlns/tenancy/1", "tenant/@id", {"tier": "tier"}
        ),
    ),
    info_labels=("flavor", "project_name", "tier"),
)
SOURCE_UP = SourceStatus("libvirt", True, 3, 0.25, 1795929818.5, None, (("timeout", 1),))
TAKEN_AT = 1795929820.0
SAMPLED_AT = 1795929818.25
QUARANTINED = "b1b1b1b1-0000-4000-8000-000000000002"
HEALTH = LibvirtHealth(1, (("stats", 1),), 1, 1, 2)


def lab_freshness(raw: list[dict[str, Any]]) -> dict[str, VmFreshness]:
    """All fresh but hc-lab-b1, quarantined with 30 s old values."""
    return {
        e["uuid"]: VmFreshness(SAMPLED_AT - 30, True, False)
        if e["uuid"] == QUARANTINED
        else VmFreshness(SAMPLED_AT, False, False)
        for e in raw
    }


def snapshot_from_raw(
    raw: list[dict[str, Any]] | None = None,
    attribution: AttributionConfig = LAB_ATTRIBUTION,
    extra_domains: tuple[DomainStats, ...] = (),
) -> Snapshot:
    raw = load_raw() if raw is None else raw
    rules = compile_rules(attribution)
    domains = [parse_domain_stats(e["uuid"], e["name"], e["stats"]) for e in raw]
    domains += extra_domains
    claims = {"metadata": {e["uuid"]: parse_tenant(e["metadata"], rules) for e in raw}}
    vms = attribute_vms(
        domains, claims, attribution.order, attribution.info_labels, lab_freshness(raw), TAKEN_AT
    )
    return Snapshot(
        taken_at=TAKEN_AT,
        vms=vms,
        sources=(SOURCE_UP,),
        tenant_map=TenantMapStatus(configured=False),
        build=(("version", "0.1.0"), ("python_version", "3.11.7")),
        libvirt=HEALTH,
        self_series=(*source_samples(SOURCE_UP), *libvirt_samples(HEALTH)),
    )


def one_series(text: str, name: str, **labels: str) -> tuple[dict[str, str], float]:
    """The one sample of family `name` in an exposition whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    (found,) = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return found
