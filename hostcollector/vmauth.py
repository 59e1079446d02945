"""The tenant's read path: a vmauth config that lets each tenant key read only its own space.

vmauth (VictoriaMetrics 1.79) compares a request's bearer token with the plaintext in its
config: it has no hashed form (bcrypt support is an open pull request, VictoriaMetrics#10651).
So the inventory an operator keeps, backs up and reviews holds digests only, in the daemon's
discipline (hostcollector/auth.py):

    tokens:
      - name: acme-grafana        # the key's name: for logs, errors and its secret's file name
        tenant: 6f1c3b2a...       # whose space this key reads
        sha256: 60303ae...        # printf %s "$KEY" | sha256sum

and the keys themselves sit in a root-only directory, one file per key name (as systemd
credentials or a mounted secret hand them over). The generated vmauth config is then the one
file that holds secrets: it is written 0600 and atomically, after every key was checked against
its digest, so a key that was rotated in one place and not the other is found here, not by a
tenant locked out.

What a key reaches: the read API of its tenant's space (READ_PATHS, matched by vmauth against
the whole path after it cleans `..` and `//`), nothing else: no write, import, admin or
delete path, and no other space. Separate spaces are what keeps tenants apart, so a query
naming another tenant (`{tenant_id="..."}`, `extra_label=`) finds nothing to read.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from hostcollector.auth import SHA256_HEX, token_entries
from hostcollector.reloading import read_bytes
from hostcollector.remote_write.routing import Route, tenant_id_problem
from hostcollector.yaml_input import quote

# The Prometheus query API Grafana and PromQL clients use, as vmauth `src_paths` (regular
# expressions that must match the whole path).
READ_PATHS = (
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/label/[a-zA-Z_][a-zA-Z0-9_]*/values",
    "/api/v1/status/buildinfo",
)
# A key name becomes a file name in the secrets directory.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# What a bearer token may hold (auth.BEARER); vmauth replaces %{NAME} in its config with the
# environment variable NAME, so a key holding "%{" would change on its way into vmauth.
KEY_TEXT = re.compile(r"^[!-~]{16,4096}$")
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class TenantKey:
    name: str
    tenant: str
    sha256: str


def parse_tenant_tokens(data: bytes) -> list[TenantKey]:
    """The keys of a tenant-token file; ValueError naming every bad entry."""
    entries = token_entries(data)
    keys: list[TenantKey] = []
    names: set[str] = set()
    digests: set[str] = set()
    problems = []
    for i, entry in enumerate(entries):
        where = f"tokens[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        unknown = set(entry) - {"name", "tenant", "sha256"}
        if unknown:
            problems.append(f"{where}: unknown keys [{', '.join(sorted(map(quote, unknown)))}]")
        name, tenant, digest = entry.get("name"), entry.get("tenant"), entry.get("sha256")
        if not isinstance(name, str) or not KEY_NAME.match(name):
            problems.append(f"{where}.name: expected 1-64 of A-Z a-z 0-9 . _ - (got {quote(name)})")
        elif name in names:
            problems.append(f"{where}.name: {quote(name)} is used twice")
        else:
            names.add(name)
            where = f"{where} ({name})"
        if not isinstance(tenant, str):
            problems.append(f"{where}.tenant: required")
        elif (problem := tenant_id_problem(tenant)) is not None:
            problems.append(f"{where}.tenant: {quote(tenant)}: {problem}")
        if not isinstance(digest, str) or not SHA256_HEX.match(digest.lower()):
            problems.append(f"{where}.sha256: expected 64 hex digits (printf %s KEY | sha256sum)")
        elif digest.lower() in digests:
            problems.append(f"{where}.sha256: the same key is listed twice")
        else:
            digests.add(digest.lower())
        if isinstance(name, str) and isinstance(tenant, str) and isinstance(digest, str):
            keys.append(TenantKey(name, tenant, digest.lower()))
    _raise_if(problems)
    return keys


def space_urls(
    tenants: set[str], template: str | None, explicit: Mapping[str, str]
) -> dict[str, str]:
    """tenant -> the URL of its space: `explicit` first (one store per tenant, say), else the
    template with {tenant} filled in as remote write fills it (a VM cluster's
    `/select/{tenant}/prometheus`). ValueError naming each tenant without a usable one."""
    problems = []
    route = None
    if template is not None:
        if "{tenant}" not in template:
            problems.append(
                f"--space-url {template!r}: no {{tenant}}: every tenant would read one space"
            )
        else:
            try:
                route = Route(template, {})
            except ValueError as exc:
                problems.append(f"--space-url {template!r}: {exc}")
    problems += [
        f"--space {tenant!r}: no key in the tenant-token file reads this tenant"
        for tenant in sorted(explicit.keys() - tenants)
    ]
    urls: dict[str, str] = {}
    for tenant in sorted(tenants):
        if tenant in explicit:
            url = explicit[tenant]
        elif route is not None:
            try:
                url = str(route.url(tenant))
            except ValueError as exc:  # UnsafeRoute: tenant_id_problem should have said so
                problems.append(f"tenant {tenant!r}: {exc}")
                continue
        else:
            problems.append(f"tenant {tenant!r}: no space (neither --space nor --space-url)")
            continue
        problem = _space_url_problem(url)
        if problem is not None:
            problems.append(f"tenant {tenant!r}: space {url!r}: {problem}")
        urls[tenant] = url.rstrip("/")
    shared: dict[str, list[str]] = {}
    for tenant, url in urls.items():
        shared.setdefault(url, []).append(tenant)
    problems += [
        f"tenants {', '.join(map(repr, owners))} share the space {url!r}"
        for url, owners in shared.items()
        if len(owners) > 1
    ]
    _raise_if(problems)
    return urls


def _space_url_problem(url: str) -> str | None:
    if not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", url):
        # vmauth merges a url_prefix's query into the tenant's own, where the tenant can add
        # to it: a space is a store, or a path, never a query filter.
        return "expected http(s)://host[:port][/path], no query or fragment"
    if "%{" in url:
        return "vmauth would read %{...} as an environment variable"
    return None


def read_keys(keys: list[TenantKey], secrets_dir: Path) -> dict[str, str]:
    """name -> key, each read from `secrets_dir/<name>` and checked against its digest; the
    files must be readable by their owner only. ValueError naming each entry that fails."""
    found: dict[str, str] = {}
    problems = []
    for key in keys:
        path = secrets_dir / key.name
        try:
            # Not following a link, and not waiting on a FIFO put in a key's place.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            problems.append(f"{key.name}: cannot read {path}: {exc.strerror}")
            continue
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                problems.append(f"{key.name}: {path} is not a regular file")
                continue
            if mode & 0o077:
                problems.append(
                    f"{key.name}: {path} is readable by others (mode {stat.S_IMODE(mode):04o}; "
                    "chmod 0600)"
                )
                continue
            data = file.read(4097)
        # A trailing newline is how editors and `echo` save a file, never part of a key.
        text = data.decode("ascii", errors="replace").removesuffix("\n")
        if not KEY_TEXT.match(text) or "%{" in text:
            problems.append(
                f"{key.name}: {path}: a key is 16-4096 printable ASCII characters, no spaces, no '%{{'"
            )
        elif hashlib.sha256(text.encode()).hexdigest() != key.sha256:
            problems.append(
                f"{key.name}: {path} does not match its sha256 in the tenant-token file"
            )
        else:
            found[key.name] = text
    _raise_if(problems)
    return found


def render_config(
    keys: list[TenantKey], secrets: Mapping[str, str], urls: Mapping[str, str]
) -> str:
    """The vmauth -auth.config text: one user per key, reaching READ_PATHS of its tenant's space."""
    users = [
        {
            "name": key.name,
            "bearer_token": secrets[key.name],
            "url_map": [{"src_paths": list(READ_PATHS), "url_prefix": urls[key.tenant]}],
        }
        for key in keys
    ]
    header = (
        "# Generated by `hostcollector vmauth-config`: edit the tenant-token file, not this.\n"
        "# It holds every tenant's read key: keep it 0600 and out of backups.\n"
    )
    return header + yaml.safe_dump({"users": users}, sort_keys=False, width=1000)


def generate(
    tenant_tokens: Path, secrets_dir: Path, template: str | None, explicit: Mapping[str, str]
) -> str:
    keys = parse_tenant_tokens(read_bytes(str(tenant_tokens)))  # bounded, a regular file only
    urls = space_urls({key.tenant for key in keys}, template, explicit)
    return render_config(keys, read_keys(keys, secrets_dir), urls)


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600, all or nothing: vmauth re-reading its config (on
    SIGHUP) never sees half a file, and the secrets are never readable by others on the way."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp creates it 0600
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _raise_if(problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise ValueError(shown + (f" ... ({len(problems)} problems)" if more > 0 else ""))
