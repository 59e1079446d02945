"""Bearer tokens and what each may see.

The tokens file holds SHA-256 digests, never tokens, so reading it (or a backup of it) gives
no access:

    tokens:
      - name: prometheus          # for logs and errors; never the secret
        sha256: 9f86d08...        # printf %s "$TOKEN" | sha256sum
        scope: all                # every tenant and the host itself
      - name: acme-portal
        sha256: 60303ae...
        scope: tenant
        tenant: 6f1c3b2a...       # only this tenant's VMs, GPUs and VFs

It is re-read when it changes; a bad file is rejected whole and the last good one stays.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hostcollector import metrics
from hostcollector.reloading import ReloadingFiles, read_bytes
from hostcollector.selfmetrics import Sample, counts_by_reason
from hostcollector.yaml_input import load_yaml, quote

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # the token's name, safe to log
    tenant: str | None  # None: everything (the host and every tenant)


ALL = Scope("(no authentication)", None)


def parse_tokens(data: bytes) -> dict[str, Scope]:
    """sha256 hex -> scope; raise ValueError naming every bad entry (and nothing else, whatever
    the bytes: a reload must reject a bad file, never fail the request that noticed it)."""
    scopes: dict[str, Scope] = {}
    names: set[str] = set()
    problems = []
    for i, entry in enumerate(token_entries(data)):
        where = f"tokens[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        name, digest, scope = entry.get("name"), entry.get("sha256"), entry.get("scope")
        unknown = set(entry) - {"name", "sha256", "scope", "tenant"}
        if unknown:
            problems.append(f"{where}: unknown keys {_quoted_keys(unknown)}")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: required")
        elif name in names:
            problems.append(f"{where}.name: {quote(name)} is used twice")
        names.add(str(name))
        if not isinstance(digest, str) or not SHA256_HEX.match(digest.lower()):
            problems.append(f"{where}.sha256: expected 64 hex digits (printf %s TOKEN | sha256sum)")
            continue
        digest = digest.lower()
        if digest in scopes:
            problems.append(f"{where}.sha256: the same token is listed twice")
        tenant = entry.get("tenant")
        if scope == "all" and tenant is None:
            scopes[digest] = Scope(str(name), None)
        elif scope == "tenant" and isinstance(tenant, str) and tenant:
            scopes[digest] = Scope(str(name), tenant)
        else:
            problems.append(f"{where}: scope must be 'all', or 'tenant' with a non-empty tenant")
    if problems:
        # One line per file, not one per entry of a file of thousands.
        shown = "; ".join(problems[:20])
        raise ValueError(shown + (f" ... ({len(problems)} problems)" if len(problems) > 20 else ""))
    return scopes


def token_entries(data: bytes) -> list[Any]:
    """The entries of a file shaped `tokens: [...]` (this one, and vmauth.py's tenant keys);
    ValueError if it is not that shape."""
    document = load_yaml(data)
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
        raise ValueError("expected a mapping with a list under 'tokens'")
    if set(document) != {"tokens"}:
        raise ValueError(f"unknown top-level keys {_quoted_keys(set(document) - {'tokens'})}")
    entries: list[Any] = document["tokens"]
    return entries


def _quoted_keys(keys: set[object]) -> str:
    # Keys of any YAML type (1, null, a date): sorted by their text, as sorting them may not.
    shown = sorted(quote(key) for key in keys)
    return "[" + ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "") + "]"


class TokenFile(ReloadingFiles[dict[str, Scope]]):
    def __init__(self, path: str) -> None:
        # Checked at most once a second: a request costs no stat() under load.
        super().__init__(
            f"tokens file {path}",
            (path,),
            lambda: parse_tokens(read_bytes(path)),
            {},
            min_check_seconds=1.0,
        )

    def lookup(self, token: str) -> Scope | None:
        # A dict lookup by digest: comparing digests leaks nothing useful about the token.
        return self.current().get(hashlib.sha256(token.encode()).hexdigest())


BEARER = re.compile(r"^Bearer ([!-~]+)$")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None if absent or malformed."""
    if not header:
        return None
    match = BEARER.match(header.strip())
    return match[1] if match else None


class DeniedRequests:
    """Requests the HTTP side refused, by reason: missing or invalid token (401), or outside the
    token's scope (403)."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()

    def deny(self, reason: str) -> None:
        self.by_reason[reason] += 1

    def collect(self) -> Iterator[Sample]:
        return counts_by_reason(metrics.HTTP_REQUESTS_DENIED_TOTAL, self.by_reason.items())
