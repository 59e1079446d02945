"""The control plane's VM -> tenant map: a JSON file, reloaded when it changes.

Format: {"<vm uuid>": "<tenant id>"} or {"<vm uuid>": {"tenant_id": "...", "labels": {...}}}.
A file that does not parse, or holds a bad entry, is rejected whole and the last good map stays
in force: a half-written file from the control plane must never strip tenants from VMs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import orjson

from hostcollector.model import TenantClaim, TenantMapStatus
from hostcollector.tenancy import MAX_LABEL_VALUE_CHARS

log = logging.getLogger(__name__)


def parse_tenant_map(data: bytes) -> dict[str, TenantClaim]:
    """Parse the file's bytes; raise ValueError naming every bad entry."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("top level must be an object of VM UUID -> tenant")
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
        claims[uuid.lower()] = TenantClaim(
            tenant[:MAX_LABEL_VALUE_CHARS],
            "mapping_file",
            tuple(sorted((k, str(v)[:MAX_LABEL_VALUE_CHARS]) for k, v in labels.items())),
        )
    if problems:
        raise ValueError("; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    return claims


class TenantMapFile:
    """Holds the last good map; `current()` re-reads the file only when its stat changed."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._claims: dict[str, TenantClaim] = {}
        self._seen: tuple[int, int, int] | None = None
        self._loaded = False
        self._reloads = 0
        self._errors = 0
        self._last_success: float | None = None
        self._last_error: str | None = None

    def current(self) -> Mapping[str, TenantClaim]:
        if self.path is None:
            return self._claims
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._fail(f"cannot stat {self.path}: {exc.strerror}")
            return self._claims
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return self._claims
        self._seen = seen
        try:
            with open(self.path, "rb") as handle:
                claims = parse_tenant_map(handle.read())
        except (OSError, ValueError) as exc:
            self._fail(f"tenant map {self.path} rejected, keeping the last good one: {exc}")
            return self._claims
        self._claims = claims
        self._loaded = True
        self._reloads += 1
        self._last_success = time.time()
        if self._last_error is not None:
            log.info("tenant map %s loaded again: %d entries", self.path, len(claims))
        self._last_error = None
        return self._claims

    def _fail(self, message: str) -> None:
        # One log line and one error per distinct bad version of the file, not one per poll.
        if self._last_error == message:
            return
        self._errors += 1
        self._last_error = message
        log.warning("%s", message)

    def status(self) -> TenantMapStatus:
        return TenantMapStatus(
            configured=self.path is not None,
            entries=len(self._claims),
            loaded=self._loaded,
            reloads_total=self._reloads,
            errors_total=self._errors,
            last_reload_success_timestamp_seconds=self._last_success,
            last_error=self._last_error,
        )
