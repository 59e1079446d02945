"""Typed, frozen configuration loaded from one YAML file.

The loader walks the dataclasses below, so the schema is written once: unknown keys, wrong types
and bad values are all collected and reported together, each by its key path
(`sources.libvirt.interval_seconds: expected a number, got 'fast'`). `check-config` runs exactly
this loader.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hostcollector.errors import ConfigError
from hostcollector.metrics import ALL_FAMILIES
from hostcollector.remote_write.routing import TENANT_PLACEHOLDER, url_problem
from hostcollector.yaml_input import load_yaml, quote

# Stats groups of virConnectGetAllDomainStats, by the name `virsh domstats` uses.
STATS_GROUPS = (
    "state",
    "cpu_total",
    "balloon",
    "vcpu",
    "interface",
    "block",
    "perf",
    "iothread",
    "memory",
    "dirtyrate",
    "vm",
)
# Measured on the lab (libvirt 9.0, QEMU 7.2): these six carry every metric hostcollector
# exports and cost libvirtd ~1.8-2.4 ms CPU per domain together. perf, iothread, memory,
# dirtyrate and vm are off: no metric reads them yet, and dirtyrate/iothread cost 24-32 ms per
# 52 domains for nothing.
DEFAULT_STATS_GROUPS = ("state", "cpu_total", "balloon", "vcpu", "interface", "block")

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the VM series carry themselves, or that clash with Prometheus target labels.
RESERVED_LABELS = frozenset(
    {"vm_uuid", "tenant_id", "name", "tenant_source", "instance", "job", "host", "cluster"}
)


def _schedule_problems(interval_seconds: float, timeout_seconds: float) -> list[str]:
    found = []
    if interval_seconds <= 0:
        found.append("interval_seconds: must be > 0")
    if not 0 < timeout_seconds <= interval_seconds:
        found.append("timeout_seconds: must be > 0 and at most interval_seconds")
    return found


@dataclass(frozen=True)
class ServerTlsConfig:
    """HTTPS for the HTTP server; the files are re-read when they change (certificate rotation
    needs no restart)."""

    cert_file: str | None = None
    key_file: str | None = None
    # Set: every client must present a certificate signed by this CA (mutual TLS).
    client_ca_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def problems(self) -> list[str]:
        if (self.cert_file is None) != (self.key_file is None):
            return ["cert_file and key_file: set both or neither"]
        if self.client_ca_file is not None and self.cert_file is None:
            return ["client_ca_file: needs cert_file and key_file"]
        return []


@dataclass(frozen=True)
class ListenConfig:
    address: str = "127.0.0.1"
    port: int = 9730
    tls: ServerTlsConfig = field(default_factory=ServerTlsConfig)
    # Connections open at once; past it the one waiting longest without a request is closed.
    # Lowered at start if the descriptor limit leaves less room (the unit sets LimitNOFILE).
    max_connections: int = 512
    # From connecting, or from the last response, to a complete request's headers: a peer that
    # takes longer (one byte a second, or nothing) is closed. Also the keep-alive idle time.
    idle_timeout_seconds: float = 15.0

    def problems(self) -> list[str]:
        found = [] if 0 <= self.port <= 65535 else ["port: must be between 0 and 65535"]
        if not 1 <= self.max_connections <= 65536:
            found.append("max_connections: must be between 1 and 65536")
        if not 1 <= self.idle_timeout_seconds <= 3600:
            found.append("idle_timeout_seconds: must be between 1 and 3600")
        return found


@dataclass(frozen=True)
class AuthConfig:
    # YAML of bearer tokens by SHA-256 with their scope (README, "Access control"), re-read when
    # it changes. null: no tokens, everything served to whoever reaches the port.
    tokens_file: str | None = None


@dataclass(frozen=True)
class LibvirtConfig:
    enabled: bool = True
    uri: str = "qemu:///system"
    interval_seconds: float = 15.0
    timeout_seconds: float = 10.0
    stats_groups: tuple[str, ...] = DEFAULT_STATS_GROUPS
    # Dear groups read only every slow_stats_every-th poll, their last values carried between:
    # libvirtd's CPU is most of the host's cost of collecting (vcpu and balloon ~40 % of it).
    slow_stats_groups: tuple[str, ...] = ()
    slow_stats_every: int = 2
    # VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT: skip domains whose job lock is busy instead of
    # waiting up to 30 s for each.
    nowait: bool = True
    # cpu_total, vcpu and interface read from the kernel (sources/qemu_kernel.py), not asked of
    # libvirtd; a VM the kernel cannot serve is asked from libvirt for those groups.
    kernel_path: bool = True
    # Metadata is re-read on libvirt events; this is the safety net if an event was missed.
    metadata_refresh_seconds: float = 600.0
    # Stats calls in flight at once, each over a share of the domains. With the listing and
    # the quarantine probe this stays within libvirtd's default max_client_requests of 5.
    parallel_calls: int = 3
    # A domain whose QEMU monitor hangs is left out of the main path this long, then retried
    # alone (VDSM's 40 s: not a multiple of the 15 s interval or QEMU's 30 s job timeout).
    quarantine_seconds: float = 40.0
    # A VM's last good values are served (with their age) while it is quarantined or
    # libvirtd is unreachable, for at most this long; then its series go away.
    max_sample_age_seconds: float = 180.0
    # Where sysfs is mounted: each PCI hostdev's PCIe health is read there
    # (/sys/bus/pci/devices/<address> and the port above it); tests point it at a tree on disk.
    sysfs_root: str = "/"

    def problems(self) -> list[str]:
        found = _schedule_problems(self.interval_seconds, self.timeout_seconds)
        for group in self.stats_groups:
            if group not in STATS_GROUPS:
                found.append(
                    f"stats_groups: unknown group {quote(group)}; known: {', '.join(STATS_GROUPS)}"
                )
        if "state" not in self.stats_groups:
            found.append("stats_groups: 'state' is required")
        for group in self.slow_stats_groups:
            if group not in self.stats_groups or group == "state":
                found.append(
                    f"slow_stats_groups: {quote(group)} must be one of stats_groups, not state"
                )
        if self.slow_stats_every < 1:
            found.append("slow_stats_every: must be at least 1")
        if self.metadata_refresh_seconds <= 0:
            found.append("metadata_refresh_seconds: must be > 0")
        if not 1 <= self.parallel_calls <= 8:
            found.append("parallel_calls: must be between 1 and 8")
        if self.quarantine_seconds <= 0:
            found.append("quarantine_seconds: must be > 0")
        if self.max_sample_age_seconds < self.interval_seconds:
            found.append("max_sample_age_seconds: must be at least interval_seconds")
        return found


@dataclass(frozen=True)
class SriovConfig:
    enabled: bool = True
    # VF dumps hold the kernel's global network lock (~1-2 ms per VF): slower than libvirt.
    interval_seconds: float = 30.0
    timeout_seconds: float = 10.0
    # Where sysfs is mounted; tests point it at a tree on disk.
    sysfs_root: str = "/"

    def problems(self) -> list[str]:
        return _schedule_problems(self.interval_seconds, self.timeout_seconds)


@dataclass(frozen=True)
class NvmlConfig:
    enabled: bool = True
    interval_seconds: float = 15.0
    timeout_seconds: float = 10.0
    # libnvidia-ml.so.1 to load; null: the system's, as the dynamic linker finds it.
    library_path: str | None = None
    # Where sysfs is mounted (NVIDIA GPU functions: /sys/bus/pci/devices/*).
    sysfs_root: str = "/"

    def problems(self) -> list[str]:
        return _schedule_problems(self.interval_seconds, self.timeout_seconds)


@dataclass(frozen=True)
class SourcesConfig:
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    sriov: SriovConfig = field(default_factory=SriovConfig)
    nvml: NvmlConfig = field(default_factory=NvmlConfig)


@dataclass(frozen=True)
class MetadataRuleConfig:
    """Where one cloud writes the tenant into libvirt domain metadata.

    Paths are relative to the metadata element of `namespace` (`owner/project/@uuid`): each step
    is a child element by local name, and a last step `@attr` reads an attribute instead of the
    element's text.
    """

    name: str
    namespace: str
    tenant: str
    labels: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if not self.namespace:
            found.append("namespace: must not be empty")
        for label in self.labels:
            if not LABEL_NAME.match(label):
                found.append(f"labels.{_key(label)}: not a valid Prometheus label name")
        return found


@dataclass(frozen=True)
class AttributionConfig:
    # Which sources of tenancy to ask, first answer wins.
    order: tuple[Literal["metadata", "mapping_file"], ...] = ("metadata", "mapping_file")
    # Nova's <nova:instance> in the 1.1 namespace (Wallaby on) and the 1.0 one (before).
    builtin_nova: bool = True
    metadata_rules: tuple[MetadataRuleConfig, ...] = ()
    # JSON written by the control plane: {"<vm uuid>": "<tenant>" | {"tenant_id": ..., "labels": {...}}}
    mapping_file: str | None = None
    # Labels from metadata or the mapping file that may appear on hostcollector_vm_info; any
    # other is dropped. Values are tenant-controlled text and are escaped.
    info_labels: tuple[str, ...] = ("flavor", "project_name")

    def problems(self) -> list[str]:
        found = []
        if not self.order:
            found.append("order: must name at least one of metadata, mapping_file")
        if len(set(self.order)) != len(self.order):
            found.append("order: lists a source twice")
        for label in self.info_labels:
            if not LABEL_NAME.match(label):
                found.append(f"info_labels: {quote(label)} is not a valid Prometheus label name")
            elif label in RESERVED_LABELS:
                found.append(f"info_labels: {label!r} is reserved")
        names = [rule.name for rule in self.metadata_rules]
        if len(set(names)) != len(names):
            found.append("metadata_rules: rule names must be unique")
        return found


# Headers the sender sets itself.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-encoding", "content-length", "x-prometheus-remote-write-version"}
)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

# Every label a series of hostcollector's carries (VM_INFO's "..." stands for info_labels,
# checked against them where both are known): an external label of that name would either be
# dropped (a series' own label wins, as in Prometheus) or make two hosts' series one.
SERIES_LABELS = frozenset(
    {label for family in ALL_FAMILIES for label in family.labels if label != "..."} | {"__name__"}
)
# Names that say which machine a series comes from: a tenant endpoint must not send them (which of
# a tenant's VMs share a host is the cloud's to know) unless host_identity says it may.
HOST_IDENTITY_LABELS = frozenset(
    {"instance", "host", "hostname", "host_name", "node", "nodename", "node_name", "hypervisor"}
)
MAX_EXTERNAL_LABEL_NAME = 128
# Mimir's default max_label_value_length is 2048; a host name is at most 253.
MAX_EXTERNAL_LABEL_VALUE = 1024


def _external_label_problems(labels: dict[str, str], where: str) -> list[str]:
    found = []
    for name, value in labels.items():
        key = f"{where}.{_key(name)}"
        if len(name) > MAX_EXTERNAL_LABEL_NAME or not LABEL_NAME.match(name):
            found.append(f"{key}: not a valid Prometheus label name")
        elif name.startswith("__"):
            found.append(f"{key}: names starting with __ are reserved for Prometheus")
        elif name in SERIES_LABELS:
            found.append(f"{key}: hostcollector's series carry this label themselves")
        if not 0 < len(value) <= MAX_EXTERNAL_LABEL_VALUE or not value.isprintable():
            found.append(
                f"{key}: the value must be 1-{MAX_EXTERNAL_LABEL_VALUE} printable characters"
            )
    return found


@dataclass(frozen=True)
class ClientTlsConfig:
    # CA bundle to verify the endpoint with; null: the system's.
    ca_file: str | None = None
    # A client certificate, for endpoints that ask for one.
    cert_file: str | None = None
    key_file: str | None = None

    def problems(self) -> list[str]:
        if (self.cert_file is None) != (self.key_file is None):
            return ["cert_file and key_file: set both or neither"]
        return []


@dataclass(frozen=True)
class RemoteWriteEndpointConfig:
    name: str
    url: str
    # false: every series (the SRE view). true: one request per tenant with only that tenant's
    # series, the tenant put where the store expects it by {tenant} in the url or a header.
    split_by_tenant: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # JSON {"<tenant_id>": "<the store's name for it>"} for a store that names tenants its own
    # way (VictoriaMetrics cluster: a numeric account id, "42" or "42:7"), re-read when it
    # changes. A tenant not in it waits in the queue until it is there.
    tenant_ids_file: str | None = None
    # File holding a bearer token for the endpoint, re-read when it changes (checked at most
    # every second): a rotation is a write, no restart.
    bearer_token_file: str | None = None
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)
    timeout_seconds: float = 30.0
    # The on-disk queue's bound; past it the oldest batches are dropped (and counted).
    max_queue_bytes: int = 256 * 1024 * 1024
    # Requests in flight at once, each for a different tenant (one with split_by_tenant off).
    concurrency: int = 4
    # Added to every series sent to this endpoint, over remote_write.external_labels.
    external_labels: dict[str, str] = field(default_factory=dict)
    # split_by_tenant only: also send this host's identity (instance and remote_write's
    # external_labels) to the tenants. Off, a tenant cannot tell which of its VMs share a host.
    host_identity: bool = False

    def problems(self) -> list[str]:
        found = _external_label_problems(self.external_labels, "external_labels")
        if self.host_identity and not self.split_by_tenant:
            found.append("host_identity: only meaningful with split_by_tenant: true")
        if self.split_by_tenant and not self.host_identity:
            for name in sorted(HOST_IDENTITY_LABELS & set(self.external_labels)):
                found.append(
                    f"external_labels.{name}: would tell tenants which host their VMs run on; "
                    "set host_identity: true if they may know"
                )
        if not LABEL_NAME.match(self.name):
            found.append("name: letters, digits and _ only (it is a label value and a directory)")
        if not self.url.startswith(("http://", "https://")):
            found.append("url: must start with http:// or https://")
        templated = [self.url, *self.headers.values()]
        named = any(TENANT_PLACEHOLDER in text for text in templated)
        if self.split_by_tenant and not named:
            found.append(
                "split_by_tenant: put {tenant} in the url or a header (e.g. X-Scope-OrgID), "
                "or every tenant's series would land in one tenant space"
            )
        if not self.split_by_tenant and named:
            found.append("{tenant} is only meaningful with split_by_tenant: true")
        if self.tenant_ids_file is not None and not self.split_by_tenant:
            found.append("tenant_ids_file: only meaningful with split_by_tenant: true")
        for text in templated:
            if "{" in text.replace(TENANT_PLACEHOLDER, "") or "}" in text.replace(
                TENANT_PLACEHOLDER, ""
            ):
                found.append(f"{quote(text)}: the only placeholder is {TENANT_PLACEHOLDER}")
        if (problem := url_problem(self.url)) is not None:
            found.append(f"url: {problem}")
        for name, value in self.headers.items():
            if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
                found.append(f"headers.{_key(name)}: not a header name hostcollector can set")
            if any(c in value for c in "\r\n\0"):
                found.append(f"headers.{_key(name)}: control characters in the value")
        if self.timeout_seconds <= 0:
            found.append("timeout_seconds: must be > 0")
        if self.max_queue_bytes < 1024 * 1024:
            found.append("max_queue_bytes: must be at least 1 MiB")
        if not 1 <= self.concurrency <= 64:
            found.append("concurrency: must be between 1 and 64")
        return found


@dataclass(frozen=True)
class RemoteWriteConfig:
    # Every this often the current snapshot is written, as a scrape would read it.
    interval_seconds: float = 15.0
    # Batches wait here (one subdirectory per endpoint) until the endpoint took them.
    queue_dir: str = "/var/lib/hostcollector/remote-write"
    endpoints: tuple[RemoteWriteEndpointConfig, ...] = ()
    # This host's identity (Prometheus' external_labels), on every series sent to an endpoint
    # without split_by_tenant: instance is this host's name unless set here.
    external_labels: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = _external_label_problems(self.external_labels, "external_labels")
        if self.interval_seconds < 1:
            found.append("interval_seconds: must be at least 1")
        names = [endpoint.name for endpoint in self.endpoints]
        if len(set(names)) != len(names):
            found.append("endpoints: names must be unique")
        return found

    def external_labels_for(
        self, endpoint: RemoteWriteEndpointConfig, host_name: str
    ) -> tuple[tuple[str, str], ...]:
        """The labels the endpoint adds to every series, sorted by name."""
        labels: dict[str, str] = {}
        if endpoint.host_identity or not endpoint.split_by_tenant:
            labels = {"instance": host_name, **self.external_labels}
        return tuple(sorted({**labels, **endpoint.external_labels}.items()))


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    # Line format (logs.py): auto (journal under systemd, else text), text, journal, logfmt,
    # json.
    format: Literal["auto", "text", "journal", "logfmt", "json"] = "auto"


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    remote_write: RemoteWriteConfig = field(default_factory=RemoteWriteConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def problems(self) -> list[str]:
        """Checks across sections: a VM's info labels are series labels too."""
        remote_write = self.remote_write
        found = []
        for where, labels in (
            ("remote_write.external_labels", remote_write.external_labels),
            *(
                (f"remote_write.endpoints[{i}].external_labels", e.external_labels)
                for i, e in enumerate(remote_write.endpoints)
            ),
        ):
            for name in sorted(set(labels) & set(self.attribution.info_labels)):
                found.append(f"{where}.{name}: also in attribution.info_labels (a VM's label)")
        return found


# A config is a few kilobytes; the bound keeps a path to /dev/zero or a huge file from
# taking the host's memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], origin=str(path)) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"larger than {MAX_CONFIG_BYTES} bytes"], origin=str(path))
    return parse_config(data, origin=str(path))


def parse_config(text: str | bytes, origin: str = "config") -> Config:
    """Validate a config document (bytes: UTF-8, or UTF-16 with a BOM); raise ConfigError
    listing every problem."""
    try:
        data = load_yaml(text)
    except ValueError as exc:
        raise ConfigError([str(exc)], origin=origin) from exc
    if data is None:
        data = {}
    problems: list[str] = []
    config = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(problems, origin=origin)
    assert isinstance(config, Config)
    return config


def _build(kind: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert `value` to `kind`, appending a message per problem. Returns None when unusable."""
    where = path or "(top level)"
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return _build_dataclass(kind, value, path, problems)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _build(inner, value, path, problems)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value in allowed:
            return value
        problems.append(
            f"{where}: expected one of {', '.join(map(str, allowed))}, got {quote(value)}"
        )
        return None
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {_describe(value)}")
            return None
        return tuple(_build(inner, item, f"{path}[{i}]", problems) for i, item in enumerate(value))
    if origin is dict:
        key_kind, value_kind = typing.get_args(kind)
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {_describe(value)}")
            return None
        return {
            _build(key_kind, k, path, problems): _build(
                value_kind, v, f"{path}.{_key(k)}", problems
            )
            for k, v in value.items()
        }
    if kind is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true or false, got {_describe(value)}")
        return None
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {_describe(value)}")
        return None
    if kind is float:
        # The one place every float of the schema passes: .nan compares false with every bound
        # (a NaN max_sample_age_seconds passed `< interval_seconds` and then expired every VM),
        # and .inf or an int too large for a float is no duration either.
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
            if math.isfinite(number):
                return number
            problems.append(f"{where}: expected a finite number, got {quote(value)}")
            return None
        problems.append(f"{where}: expected a number, got {_describe(value)}")
        return None
    if kind is str:
        if isinstance(value, str):
            return value
        problems.append(f"{where}: expected a string, got {_describe(value)}")
        return None
    raise TypeError(f"config schema uses an unsupported type {kind!r} at {where}")


def _build_dataclass(kind: Any, value: Any, path: str, problems: list[str]) -> Any:
    where = path or "(top level)"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping, got {_describe(value)}")
        return None
    hints = typing.get_type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(kind)}
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in fields:
            suggestion = _closest(key, fields)
            hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
            problems.append(f"{prefix}{_key(key)}: unknown key{hint}")
    before = len(problems)
    kwargs = {}
    for name, spec in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], prefix + name, problems)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{name}: required")
    if len(problems) > before:
        return None
    instance = kind(**kwargs)
    check = getattr(instance, "problems", None)
    if check is not None:
        problems.extend(f"{prefix}{problem}" for problem in check())
    return instance


def _describe(value: Any) -> str:
    return quote(value)


def _key(key: object) -> str:
    """A mapping key as it appears in a key path: as written when it is a short plain name,
    else quoted (bounded: it came from the file)."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64:
        return key
    return quote(key)


def _closest(key: object, known: typing.Iterable[str]) -> str | None:
    import difflib

    if not isinstance(key, str) or len(key) > 64:
        return None
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


def config_to_dict(config: Any) -> Any:
    """The config as plain data (tuples as lists), e.g. to compare with the example file."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [config_to_dict(item) for item in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config
