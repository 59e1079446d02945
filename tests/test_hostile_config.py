"""Hostile config and tokens files (issue 16): every input ends in ConfigError (the config) or
ValueError (the tokens file) with a short message, quickly; never a traceback, and never a
value the daemon cannot run with. check-config refuses what `run` refuses."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hostcollector.app import TOKENS, build_app
from hostcollector.auth import parse_tokens
from hostcollector.cli import main
from hostcollector.collector import Collector
from hostcollector.config import AuthConfig, Config, parse_config
from hostcollector.errors import ConfigError
from tests.pki import make_ca, make_cert

REPO = Path(__file__).parent.parent
DIGEST = hashlib.sha256(b"token").hexdigest()
# Every source off: `run` gets as far as its TLS check without touching the host.
NO_SOURCES = (
    "sources: {libvirt: {enabled: false}, sriov: {enabled: false}, nvml: {enabled: false}}\n"
    "listen: {port: 0}\n"
)


def problems_of(text: str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def billion_laughs(levels: int) -> str:
    """`levels` anchors, each a list of nine aliases of the one before: 9**levels strings."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# --- 1. Alias expansion, and values quoted in messages --------------------------------------


def test_an_alias_bomb_in_the_config_is_refused_at_once() -> None:
    # 9**7 = 4.8 million strings, all rendered into one message by the old loader (0.4 s, 110 MB;
    # one level more takes seconds and gigabytes).
    text = billion_laughs(7) + "logging: {level: *l6}\n"
    started = time.perf_counter()
    found = problems_of(text)
    assert time.perf_counter() - started < 0.5
    assert len(found) == 1 and "aliases (*name) are not accepted" in found[0], found
    assert len(found[0]) < 600


def test_an_alias_bomb_in_the_tokens_file_is_refused_at_once() -> None:
    text = billion_laughs(7) + "tokens: *l6\n"
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"aliases \(\*name\) are not accepted") as info:
        parse_tokens(text.encode())
    assert time.perf_counter() - started < 0.5
    assert len(str(info.value)) < 600


# A key is at most 1024 characters to YAML; a value has no bound.
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("logging: {level: LONG}\n", 1_000_000),  # a Literal
        ("listen: {port: LONG}\n", 1_000_000),  # a wrong type
        ("sources: {libvirt: {stats_groups: [state, LONG]}}\n", 1_000_000),  # a value check
        ("listen: {LONG: 1}\n", 1000),  # an unknown key
        (
            "remote_write: {endpoints: [{name: a, url: 'http://x', headers: {'bad LONG': v}}]}\n",
            1000,
        ),
        ("listen: {LONG: 1}\n", 1_000_000),  # a YAML error quotes its text
    ],
)
def test_a_value_quoted_in_a_message_is_bounded(text: str, size: int) -> None:
    found = problems_of(text.replace("LONG", "x" * size))
    assert found and all(len(problem) < 600 for problem in found), [p[:600] for p in found]


# --- 2. Finite numbers only ------------------------------------------------------------------


def float_keys(kind: typing.Any = Config, prefix: str = "") -> list[str]:
    """Key paths of every float in the schema, lists of dataclasses at their first item."""
    paths = []
    hints = typing.get_type_hints(kind)
    for spec in dataclasses.fields(kind):
        hint = hints[spec.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        if hint is float:
            paths.append(prefix + spec.name)
        elif dataclasses.is_dataclass(inner):
            index = "[0]" if inner is not hint else ""
            paths.extend(float_keys(inner, f"{prefix}{spec.name}{index}."))
    return paths


def document_setting(path: str, value: str) -> str:
    """A config setting `path` (a.b[0].c) to the YAML scalar `value`, required keys filled."""
    data: dict[str, typing.Any] = {}
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        if part.endswith("[0]"):
            item = {"name": "a", "url": "http://x"}  # an endpoint's required keys
            node[part[:-3]] = [item]
            node = item
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = "VALUE"
    return yaml.safe_dump(data).replace("VALUE", value)


FLOAT_KEYS = float_keys()


def test_the_schema_has_the_floats_we_expect() -> None:
    assert "sources.libvirt.max_sample_age_seconds" in FLOAT_KEYS
    assert "remote_write.endpoints[0].timeout_seconds" in FLOAT_KEYS
    assert "listen.port" not in FLOAT_KEYS


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "1.0e+400", "9" * 400])
def test_every_float_must_be_finite(key: str, value: str) -> None:
    found = problems_of(document_setting(key, value))
    assert any(p.startswith(f"{key}: expected a finite number") for p in found), found


def test_a_nan_config_stops_run_before_it_starts(tmp_path: Path) -> None:
    # A NaN max_sample_age_seconds made every VM vanish with the source reporting up.
    config = tmp_path / "nan.yml"
    config.write_text(NO_SOURCES + "remote_write: {interval_seconds: .nan}\n")
    assert main(["run", "--config", str(config)]) == 2
    assert main(["check-config", str(config)]) == 1


def test_finite_floats_and_ints_still_load() -> None:
    config = parse_config(
        "sources: {libvirt: {interval_seconds: 5, timeout_seconds: 5, max_sample_age_seconds: 1.0e+3}}"
    )
    assert config.sources.libvirt.interval_seconds == 5.0
    assert config.sources.libvirt.max_sample_age_seconds == 1000.0


# --- 3. Bad bytes and deep nesting: a ConfigError, for check-config and run -------------------

HOSTILE_DOCUMENTS = {
    "invalid-utf8": b"listen:\n  address: \xff\xfe\xfa\n",
    "nul-byte": b"listen: {address: a\x00b}\n",
    "deep-list": b"[" * 10_000 + b"]" * 10_000,
    "deep-mapping": b"{a: " * 10_000 + b"}" * 10_000,
    "deep-block-mapping": b"".join(b" " * i + b"a:\n" for i in range(3000)),
    "impossible-date": b"listen: {address: 2024-13-45}\n",
    "impossible-time-zone": b"listen: {address: 2001-12-14t21:59:43.10+99:99}\n",
    "int-past-python-limit": b"listen: {port: " + b"9" * 5000 + b"}\n",
    "duplicate-key": b"listen: {port: 1, port: 2}\n",
    "duplicate-block-key": b"listen:\n  port: 1\nlisten:\n  port: 2\n",
    "bad-base64": b"listen: {address: !!binary '!!!'}\n",
    "unknown-tag": b"listen: !!python/object:os.system {}\n",
}


@pytest.mark.parametrize("data", HOSTILE_DOCUMENTS.values(), ids=HOSTILE_DOCUMENTS.keys())
def test_check_config_and_run_report_a_config_error(
    data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hostile.yml"
    path.write_bytes(data)
    started = time.perf_counter()
    assert main(["check-config", str(path)]) == 1
    assert main(["run", "--config", str(path)]) == 2
    assert time.perf_counter() - started < 2
    err = capsys.readouterr().err
    assert err.count(f"{path}: 1 problem(s)") == 2, err[:2000]
    assert len(err) < 3000


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_bytes(HOSTILE_DOCUMENTS["invalid-utf8"])
    for command, code in (("check-config", 1), ("run", 2)):
        args = [command, str(bad)] if command == "check-config" else [command, "--config", str(bad)]
        result = subprocess.run(
            [sys.executable, "-m", "hostcollector", *args], capture_output=True, text=True
        )
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        assert "not valid YAML" in result.stderr


def test_duplicate_keys_name_the_key_and_line() -> None:
    (problem,) = problems_of("listen:\n  port: 1\n  address: x\n  port: 2\n")
    assert "the key 'port' appears twice" in problem and "line 4" in problem


def test_utf16_with_a_bom_and_plain_anchors_still_load() -> None:
    assert parse_config("listen: {port: 1}\n".encode("utf-16")).listen.port == 1
    # An anchor nobody refers to expands nothing.
    assert parse_config("listen: &l {port: 2}\n").listen.port == 2


def test_the_example_files_still_load() -> None:
    assert parse_config((REPO / "conf" / "hostcollector.yml").read_bytes()) == Config()
    parse_config((REPO / "conf" / "lab.yml").read_bytes())


def test_a_config_that_never_ends_is_refused() -> None:
    assert main(["check-config", "/dev/zero"]) == 1


# --- 4. check-config reads the files `run` reads, and refuses what `run` refuses --------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d)
    make_cert(d, "server", "hostcollector", server=True)
    make_cert(d, "other", "hostcollector-other", server=True)
    return d


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostcollector", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(("missing.pem", "server.key", None), id="missing-certificate"),
        pytest.param(("server.pem", "other.key", None), id="key-of-another-certificate"),
        pytest.param(("garbage.pem", "server.key", None), id="not-pem"),
        pytest.param(("server.pem", "server.key", "garbage.pem"), id="client-ca-not-pem"),
        pytest.param(("server.pem", "server.key", "directory"), id="client-ca-a-directory"),
    ],
)
def test_server_tls_that_run_refuses_fails_check_config(
    files: tuple[str, str, str | None],
    pki: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    (tmp_path / "directory").mkdir()
    cert, key, client_ca = (
        None if name is None else str((pki if (pki / name).exists() else tmp_path) / name)
        for name in files
    )
    config = tmp_path / "tls.yml"
    config.write_text(
        NO_SOURCES.replace("listen: {port: 0}", "")
        + yaml.safe_dump(
            {
                "listen": {
                    "port": 0,
                    "tls": {"cert_file": cert, "key_file": key, "client_ca_file": client_ca},
                }
            }
        )
    )
    daemon = run_daemon(config)
    assert daemon.returncode == 2 and "listen.tls" in daemon.stderr, daemon.stderr
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: 1 problem(s)" in err and "  - listen.tls: " in err, err


def test_usable_server_tls_passes_check_config(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tls.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {
                    "tls": {
                        "cert_file": str(pki / "server.pem"),
                        "key_file": str(pki / "server.key"),
                        "client_ca_file": str(pki / "ca.pem"),
                    }
                }
            }
        )
    )
    assert main(["check-config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{config}: ok\n" and captured.err == ""


def write_check(tmp_path: Path, document: dict[str, typing.Any]) -> Path:
    config = tmp_path / "files.yml"
    config.write_text(yaml.safe_dump(document))
    return config


def test_files_run_starts_without_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon starts with a bad tokens file (refusing every request), a bad tenant map
    (empty) and unloadable remote-write TLS files (sending nothing), and loads each when it
    changes: check-config passes and names each."""
    tokens = tmp_path / "tokens.yml"
    tokens.write_text("tokens: [{name: 1, sha256: x, 3: x}]\n")
    mapping = tmp_path / "tenants.json"
    mapping.write_text('{"vm": ')
    config = write_check(
        tmp_path,
        {
            "auth": {"tokens_file": str(tokens)},
            "attribution": {"mapping_file": str(mapping)},
            "remote_write": {
                "endpoints": [
                    {"name": "tls", "url": "https://x/", "tls": {"ca_file": str(tmp_path / "no")}},
                    # No TLS on http: its files are not read, by the daemon or here.
                    {"name": "plain", "url": "http://x/", "tls": {"ca_file": str(tmp_path / "no")}},
                ]
            },
        },
    )
    assert main(["check-config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{config}: ok\n"
    lines = captured.err.splitlines()
    assert lines[0] == (
        f"{config}: 3 warning(s); the daemon starts, and loads each file once it is fixed:"
    ), captured.err
    assert lines[1].startswith("  - auth.tokens_file: tokens file") and "name: required" in lines[1]
    assert lines[2].startswith("  - attribution.mapping_file: tenant map") and "JSON" in lines[2]
    assert lines[3].startswith("  - remote_write.endpoints[0].tls: no usable TLS files")
    assert len(lines) == 4


def test_files_not_there_yet_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # First boot: the control plane writes the map after the daemon starts.
    config = write_check(
        tmp_path,
        {
            "auth": {"tokens_file": str(tmp_path / "tokens.yml")},
            "attribution": {"mapping_file": str(tmp_path / "tenants.json")},
        },
    )
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "auth.tokens_file: cannot stat" in err and "attribution.mapping_file: cannot stat" in err


def test_good_files_give_no_warning(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.yml"
    tokens.write_text(f"tokens: [{{name: sre, sha256: {DIGEST}, scope: all}}]\n")
    mapping = tmp_path / "tenants.json"
    mapping.write_text('{"vm": "acme"}')
    config = write_check(
        tmp_path,
        {
            "auth": {"tokens_file": str(tokens)},
            "attribution": {"mapping_file": str(mapping)},
            "remote_write": {
                "endpoints": [
                    {"name": "tls", "url": "https://x/", "tls": {"ca_file": str(pki / "ca.pem")}},
                    {"name": "system", "url": "https://y/"},
                ]
            },
        },
    )
    assert main(["check-config", str(config)]) == 0
    assert capsys.readouterr().err == ""


# --- 5. The tokens file: only ValueError, duplicates refused --------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"tokens: []\n1: x\nb: y\n", "unknown top-level keys ['b', 1]"),
        (
            f"tokens: [{{name: a, sha256: {DIGEST}, scope: all, 3: x, b: y, null: z}}]".encode(),
            "tokens[0]: unknown keys ['b', 3, None]",
        ),
        (b"tokens: [{name: a, name: b}]\n", "the key 'name' appears twice"),
        (b"tokens: []\ntokens: []\n", "the key 'tokens' appears twice"),
        (b"tokens: [" * 10_000, "nested deeper than 50 levels"),
        (b"tokens: [2024-13-45]\n", "month must be in 1..12"),
        (b"tokens: [\xff]\n", "not valid YAML"),
    ],
)
def test_hostile_tokens_files_are_value_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_tokens(data)
    assert type(info.value) is ValueError and message in str(info.value), info.value


def test_the_daemon_rejects_a_mixed_key_tokens_file_without_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At start (build_app loads the file): rejected as a bad file, logged as a warning, not as
    a parser's crash."""
    tokens = tmp_path / "tokens.yml"
    tokens.write_text(f"tokens: [{{name: a, sha256: {DIGEST}, scope: all}}]\n1: x\nb: y\n")
    config = Config(auth=AuthConfig(str(tokens)))
    with caplog.at_level(logging.WARNING):
        app = build_app(config, Collector(config, sources={}))
    files = app[TOKENS]
    assert files.last_error is not None and "unknown top-level keys ['b', 1]" in files.last_error
    assert [r.levelname for r in caplog.records] == ["WARNING"], caplog.text


# --- Fuzz: nothing but the parser's own error ----------------------------------------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["state", "info", "http://x", "https://x/{tenant}", "{tenant}", "all"]),
)
yaml_keys = st.one_of(
    st.sampled_from(
        [
            "listen", "port", "address", "tls", "cert_file", "sources", "libvirt", "sriov", "nvml",
            "interval_seconds", "timeout_seconds", "stats_groups", "attribution", "order",
            "metadata_rules", "name", "namespace", "tenant", "labels", "remote_write",
            "endpoints", "url", "headers", "split_by_tenant", "logging", "level", "auth",
            "tokens", "sha256", "scope", "max_sample_age_seconds", "info_labels",
        ]
    ),
    yaml_scalars,
)  # fmt: skip
documents = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            yaml_keys.filter(lambda k: not isinstance(k, float)), children, max_size=5
        )
    ),
    max_leaves=30,
)
# Text that looks like YAML: its punctuation, tags and anchors, in any order.
yamlish = st.lists(
    st.sampled_from(
        [
            "\n", " ", "  ", "- ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "!!binary ",
            "!!str ", "!!int ", "!!float ", "!!timestamp ", "!!set ", "!!omap ", "<<: ", "? ",
            "|", ">", "'", '"', "#", "---", "...", "%YAML 1.1\n", "listen", "port", "tls",
            "tokens", "name", "sha256", ".nan", ".inf", "2024-13-45", "0x", "1_0", "9" * 30,
            "\ufeff", "\x00", "\\", "\t", "~", "null", "true",
        ]
    ),
    max_size=40,
).map("".join)  # fmt: skip

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dump(document: object) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff")
@example(b"[" * 200)
@example(b"a: 2024-13-45")
def test_any_bytes_are_a_config_or_a_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(data)


@FUZZ
@given(yamlish)
@example("listen: {port: 1, port: 2}")
@example("&a [*a]")
def test_any_yamlish_text_is_a_config_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


@FUZZ
@given(st.dictionaries(st.sampled_from(["listen", "sources", "attribution", "auth",
                                        "remote_write", "logging"]), documents, max_size=4))  # fmt: skip
def test_any_document_is_a_config_or_a_config_error(document: dict[str, object]) -> None:
    try:
        config = parse_config(dump(document))
    except ConfigError as exc:
        assert all(len(problem) < 400 for problem in exc.problems), exc.problems
    else:
        floats = [v for v in _leaves(config) if isinstance(v, float)]
        assert all(v == v and abs(v) != float("inf") for v in floats), config


@FUZZ
@given(st.one_of(st.binary(max_size=200), yamlish.map(str.encode)))
@example(b"tokens: []\n1: x\nb: y\n")
def test_any_tokens_bytes_are_tokens_or_a_value_error(data: bytes) -> None:
    try:
        parse_tokens(data)
    except ValueError as exc:
        assert len(str(exc)) < 2000


@FUZZ
@given(
    st.one_of(
        documents,
        st.fixed_dictionaries({"tokens": st.lists(documents, max_size=4)}),
        st.fixed_dictionaries({"tokens": st.lists(
            st.dictionaries(yaml_keys.filter(lambda k: not isinstance(k, float)),
                            yaml_scalars, max_size=6), max_size=4)}),
    )
)  # fmt: skip
def test_any_tokens_document_is_tokens_or_a_value_error(document: object) -> None:
    with contextlib.suppress(ValueError):
        parse_tokens(dump(document).encode())


def _leaves(value: object) -> list[object]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in _leaves(getattr(value, f.name))]
    if isinstance(value, tuple | list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]
