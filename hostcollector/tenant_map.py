"""The control plane's VM -> tenant map: a JSON file, reloaded when it changes.

Format: {"<vm uuid>": "<tenant id>"} or {"<vm uuid>": {"tenant_id": "...", "labels": {...}}}.
A file that does not parse, or holds a bad entry, is rejected whole and the last good map stays
in force: a half-written file from the control plane must never strip tenants from VMs. So is one
that names a VM twice (as a JSON key twice, or as one UUID in two letter cases): which claim
wins would be an accident.
"""

from __future__ import annotations

from collections.abc import Iterator

from hostcollector.model import TenantClaim, TenantMapStatus
from hostcollector.reloading import ReloadingFiles, json_object, read_bytes
from hostcollector.selfmetrics import Sample, tenant_map_samples
from hostcollector.tenancy import MAX_LABEL_VALUE_CHARS

# A hypervisor holds hundreds of VMs; 4 MiB is ~30,000 entries with labels, ~70,000 without.
# Measured: a file this size parses in ~0.14 s of a reload thread (the parser holds the GIL for
# ~20 ms of it) and ~30 MB at the peak; past it the file is refused, so the map alone can never
# push the daemon towards the unit's MemoryMax.
MAX_MAP_BYTES = 4 * 1024 * 1024


def parse_tenant_map(data: bytes) -> dict[str, TenantClaim]:
    """Parse the file's bytes; raise ValueError naming every bad entry."""
    document = json_object(data, "top level must be an object of VM UUID -> tenant")
    claims: dict[str, TenantClaim] = {}
    problems: list[str] = []
    for uuid, entry in document.items():
        labels: dict[str, object] = {}
        if isinstance(entry, str):
            tenant = entry
        elif isinstance(entry, dict) and isinstance(entry.get("tenant_id"), str):
            tenant = entry["tenant_id"]
            labels = entry.get("labels") or {}
            unknown = set(entry) - {"tenant_id", "labels"}
            if unknown:
                problems.append(f"{uuid}: unknown keys {sorted(unknown)}")
                continue
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                problems.append(f"{uuid}.labels: must map label names to strings")
                continue
        else:
            problems.append(f'{uuid}: expected a tenant id string or {{"tenant_id": ...}}')
            continue
        if not tenant:
            problems.append(f"{uuid}: empty tenant id")
            continue
        if uuid.lower() in claims:
            problems.append(f"{uuid}: the same VM is listed twice (UUIDs ignore letter case)")
            continue
        claims[uuid.lower()] = TenantClaim(
            tenant[:MAX_LABEL_VALUE_CHARS],
            "mapping_file",
            tuple(sorted((k, str(v)[:MAX_LABEL_VALUE_CHARS]) for k, v in labels.items())),
        )
    if problems:
        raise ValueError("; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    return claims


class TenantMapFile(ReloadingFiles[dict[str, TenantClaim]]):
    """Holds the last good map; `current()` re-reads the file only when its stat changed."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        super().__init__(
            f"tenant map {path}",
            (path,) if path else (),
            lambda: parse_tenant_map(read_bytes(path or "", MAX_MAP_BYTES)),
            {},
            max_bytes=MAX_MAP_BYTES,
        )

    def status(self) -> TenantMapStatus:
        return TenantMapStatus(
            configured=self.path is not None,
            entries=len(self._value),
            loaded=self.loaded,
            reloads_total=self.reloads_total,
            errors_total=self.errors_total,
            last_reload_success_timestamp_seconds=self.last_success,
            last_error=self.last_error,
        )

    def collect(self) -> Iterator[Sample]:
        return tenant_map_samples(self.status())
