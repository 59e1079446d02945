"""Tenant claims from libvirt domain metadata: pure parsing, no libvirt.

A rule names a namespace and where, inside that namespace's metadata element, the tenant id and
any extra labels live. Nova's 1.1 (Wallaby on) and 1.0 namespaces are built in, since upgraded
fleets hold both; any other cloud's element is a configured rule.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hostcollector.config import AttributionConfig, MetadataRuleConfig
from hostcollector.model import TenantClaim

NOVA_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_1_0 = "http://openstack.org/xmlns/libvirt/nova/1.0"
_NOVA_LABELS = {
    "project_name": "owner/project",
    "user_id": "owner/user/@uuid",
    "flavor": "flavor/@name",
    "display_name": "name",
}
BUILTIN_NOVA_RULES = (
    MetadataRuleConfig("nova-1.1", NOVA_1_1, "owner/project/@uuid", _NOVA_LABELS),
    MetadataRuleConfig("nova-1.0", NOVA_1_0, "owner/project/@uuid", _NOVA_LABELS),
)
# Label values are tenant-controlled; bound them so one VM cannot bloat every scrape.
MAX_LABEL_VALUE_CHARS = 256


@dataclass(frozen=True)
class _Path:
    steps: tuple[str, ...]  # element local names
    attribute: str | None

    @classmethod
    def parse(cls, text: str) -> _Path:
        parts = [part for part in text.strip("/").split("/") if part]
        attribute = None
        if parts and parts[-1].startswith("@"):
            attribute = parts.pop()[1:]
        return cls(tuple(parts), attribute)

    def read(self, root: ET.Element) -> str | None:
        node: ET.Element | None = root
        for step in self.steps:
            node = _child(node, step) if node is not None else None
        if node is None:
            return None
        value = node.get(self.attribute) if self.attribute else node.text
        if value is None:
            return None
        value = value.strip()
        return value[:MAX_LABEL_VALUE_CHARS] or None


def _child(node: ET.Element, local_name: str) -> ET.Element | None:
    # virDomainGetMetadata returns the element with its namespace stripped (libvirt 9.0 gives
    # "<instance><owner>..."), while XML written by hand may keep it: match local names only.
    # The namespace itself was already chosen by the metadata call.
    for child in node:
        if child.tag.rpartition("}")[2] == local_name:
            return child
    return None


@dataclass(frozen=True)
class MetadataRule:
    name: str
    namespace: str
    tenant: _Path
    labels: tuple[tuple[str, _Path], ...]

    @classmethod
    def compile(cls, rule: MetadataRuleConfig) -> MetadataRule:
        labels = tuple((label, _Path.parse(path)) for label, path in sorted(rule.labels.items()))
        return cls(rule.name, rule.namespace, _Path.parse(rule.tenant), labels)


def compile_rules(attribution: AttributionConfig) -> tuple[MetadataRule, ...]:
    configured: Iterable[MetadataRuleConfig] = attribution.metadata_rules
    if attribution.builtin_nova:
        configured = (*BUILTIN_NOVA_RULES, *configured)
    return tuple(MetadataRule.compile(rule) for rule in configured)


def parse_tenant(
    xml_by_namespace: Mapping[str, str | None], rules: Iterable[MetadataRule]
) -> TenantClaim | None:
    """The first rule whose namespace holds a tenant id wins.

    `xml_by_namespace` is what virDomainGetMetadata(ELEMENT, namespace) returned per namespace,
    None where the domain has no element there. Malformed XML is treated as absent: the domain
    is still exported, unattributed, rather than failing the poll.
    """
    for rule in rules:
        text = xml_by_namespace.get(rule.namespace)
        if not text:
            continue
        try:
            root = ET.fromstring(text)
        except (ET.ParseError, ValueError):  # ValueError: a lone surrogate, not even encodable
            continue
        tenant = rule.tenant.read(root)
        if tenant is None:
            continue
        labels = []
        for label, path in rule.labels:
            value = path.read(root)
            if value is not None:
                labels.append((label, value))
        return TenantClaim(tenant, f"metadata:{rule.name}", tuple(labels))
    return None
