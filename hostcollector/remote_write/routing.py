"""Where a tenant's batch goes: the endpoint's url and headers with {tenant} filled in.

A tenant id is input (domain metadata, the control plane's tenant_ids_file), and where it is
put decides whose space the series land in. So an id is only used if every store takes it
(`tenant_id_problem`), it is percent-encoded into the URL, and the URL as it will be sent is
checked to have the template's shape: a tenant that could resolve as a path segment ("..")
or split one would send its series to another tenant, or to the store's default space.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from yarl import URL

# Tenant ids a store accepts in a header or URL (Grafana Mimir's rule, the strictest common one;
# ":" too, for VictoriaMetrics cluster's "accountID:projectID"). \Z, not $: "$" takes a trailing
# newline. The characters only: tenant_id_problem also refuses "." and "..".
TENANT_ID = re.compile(r"^[A-Za-z0-9!._*'():-]{1,150}\Z")
TENANT_PLACEHOLDER = "{tenant}"
# Grafana Mimir refuses these ids (dskit ValidTenantID; __mimir_cluster is its own).
DOT_SEGMENTS = frozenset({".", ".."})
RESERVED_TENANT_IDS = frozenset({"__mimir_cluster"})
# {tenant} as yarl percent-encodes it: where it sits in the encoded template.
_ENCODED_PLACEHOLDER = "%7Btenant%7D"


class UnsafeRoute(ValueError):
    """The tenant cannot be put where the endpoint's template puts it."""


def tenant_id_problem(tenant: str) -> str | None:
    """Why a store would refuse the tenant id, or resolve it as something else; None if fine."""
    if not TENANT_ID.fullmatch(tenant):
        return "a store takes 1-150 of A-Z a-z 0-9 !._*'():-"
    if tenant in DOT_SEGMENTS:
        return "a dot segment: in a URL path it names another path"
    if tenant in RESERVED_TENANT_IDS:
        return "reserved by Grafana Mimir"
    return None


def url_problem(url: str) -> str | None:
    """What makes an endpoint's url unusable as a template (a config check); None if fine."""
    try:
        Route(url, {})
    except ValueError as exc:
        return str(exc)
    return None


class Route:
    """One endpoint's url and header templates, parsed once."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._template = URL(url)  # the operator's text, encoded the way yarl sends it
        self._headers = dict(headers)
        self._templated = TENANT_PLACEHOLDER in url or any(
            TENANT_PLACEHOLDER in value for value in headers.values()
        )
        self._encoded = str(self._template)
        # Each {tenant} found again, encoded, in the path or the query, and nowhere else: in the
        # host it would pick the server; a literal %7Btenant%7D would be taken for one.
        wanted = url.count(TENANT_PLACEHOLDER)
        path, query = self._template.raw_path, self._template.raw_query_string
        in_place = path.count(_ENCODED_PLACEHOLDER) + query.count(_ENCODED_PLACEHOLDER)
        if in_place != wanted or self._encoded.count(_ENCODED_PLACEHOLDER) != wanted:
            raise ValueError(f"{TENANT_PLACEHOLDER} may only be in the path or the query")

    def url(self, tenant: str) -> URL:
        """The URL to send the tenant's batch to, encoded (aiohttp sends it as it is: no
        normalisation on the way). UnsafeRoute if it would not have the template's shape."""
        if _ENCODED_PLACEHOLDER not in self._encoded:
            return self._template
        self._check_tenant(tenant)
        encoded = quote(tenant, safe=":")
        final = URL(self._encoded.replace(_ENCODED_PLACEHOLDER, encoded), encoded=True)
        self._check_inside(final, encoded)
        return final

    def headers(self, tenant: str) -> dict[str, str]:
        """The configured headers with the tenant put in (as it is: headers are not encoded)."""
        if not self._templated:
            return dict(self._headers)
        self._check_tenant(tenant)
        filled = {k: v.replace(TENANT_PLACEHOLDER, tenant) for k, v in self._headers.items()}
        if any(c in value for value in filled.values() for c in "\r\n\0"):
            raise UnsafeRoute(f"tenant id {tenant[:160]!r}: control characters in a header")
        return filled

    def _check_tenant(self, tenant: str) -> None:
        problem = tenant_id_problem(tenant)
        if problem is not None:
            raise UnsafeRoute(f"tenant id {tenant[:160]!r}: {problem}")

    def _check_inside(self, final: URL, encoded_tenant: str) -> None:
        """The part before and after each {tenant} unchanged, the tenant one whole segment or
        value: if not, the id would route somewhere the template did not say (defence in depth:
        `tenant_id_problem` already refuses what could do that)."""
        template = self._template
        same_origin = (final.scheme, final.raw_authority, final.raw_fragment) == (
            template.scheme,
            template.raw_authority,
            template.raw_fragment,
        )
        if not same_origin:
            raise UnsafeRoute(f"tenant id {encoded_tenant!r} changes the URL's origin")
        for wanted, got, separator in (
            (template.raw_path, final.raw_path, "/"),
            (template.raw_query_string, final.raw_query_string, "&"),
        ):
            wanted_parts, got_parts = wanted.split(separator), got.split(separator)
            if len(wanted_parts) != len(got_parts):
                raise UnsafeRoute(f"tenant id {encoded_tenant!r} is more than one segment")
            for wanted_part, got_part in zip(wanted_parts, got_parts, strict=True):
                if got_part != wanted_part.replace(_ENCODED_PLACEHOLDER, encoded_tenant):
                    raise UnsafeRoute(f"tenant id {encoded_tenant!r} changes the URL's shape")
                if separator == "/" and unquote(got_part) in DOT_SEGMENTS:
                    raise UnsafeRoute(f"tenant id {encoded_tenant!r} makes a dot segment")
