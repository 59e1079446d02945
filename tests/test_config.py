from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hostcollector.cli import main
from hostcollector.config import Config, config_to_dict, load_config, parse_config
from hostcollector.errors import ConfigError

REPO = Path(__file__).parent.parent


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def test_empty_file_gives_defaults() -> None:
    assert parse_config("") == Config()


def test_example_config_shows_every_option_with_its_default() -> None:
    example = yaml.safe_load((REPO / "conf" / "hostcollector.yml").read_text())
    assert example == config_to_dict(Config())
    assert load_config(REPO / "conf" / "hostcollector.yml") == Config()


def test_lab_config_is_valid() -> None:
    config = load_config(REPO / "conf" / "lab.yml")
    assert (
        config.attribution.metadata_rules[0].namespace
        == "https://cloud.example.com/xmlns/tenancy/1"
    )


def test_misspelled_key_is_rejected_with_its_path_and_a_suggestion() -> None:
    assert problems_of("sources:\n  libvirt:\n    interval_secnds: 5\n") == [
        "sources.libvirt.interval_secnds: unknown key (did you mean 'interval_seconds'?)"
    ]


def test_wrong_type_is_rejected_with_its_path() -> None:
    assert problems_of("listen:\n  port: '9730'\n") == [
        "listen.port: expected an integer, got '9730'"
    ]


def test_every_problem_is_listed_at_once() -> None:
    found = problems_of(
        "listen: {address: 1}\n"
        "sources: {libvirt: {nowait: 'yes', stats_groups: state}}\n"
        "attribution: {order: [metadata, dns], extra: 1}\n"
        "loging: {}\n"
    )
    assert sorted(found) == sorted(
        [
            "listen.address: expected a string, got 1",
            "sources.libvirt.nowait: expected true or false, got 'yes'",
            "sources.libvirt.stats_groups: expected a list, got 'state'",
            "attribution.order[1]: expected one of metadata, mapping_file, got 'dns'",
            "attribution.extra: unknown key",
            "loging: unknown key (did you mean 'logging'?)",
        ]
    )


def test_value_checks_run_after_types() -> None:
    found = problems_of(
        "sources: {libvirt: {interval_seconds: 5, timeout_seconds: 6, stats_groups: [cpu_total, gpu]}}\n"
        "attribution: {info_labels: [tenant_id, 'bad-name']}\n"
    )
    assert "sources.libvirt.timeout_seconds: must be > 0 and at most interval_seconds" in found
    assert any(p.startswith("sources.libvirt.stats_groups: unknown group 'gpu'") for p in found)
    assert "sources.libvirt.stats_groups: 'state' is required" in found
    assert "attribution.info_labels: 'tenant_id' is reserved" in found
    assert "attribution.info_labels: 'bad-name' is not a valid Prometheus label name" in found


def test_metadata_rule_requires_its_fields() -> None:
    found = problems_of("attribution: {metadata_rules: [{name: x, namespace: 'urn:x'}]}\n")
    assert found == ["attribution.metadata_rules[0].tenant: required"]


def test_invalid_yaml_is_a_config_error() -> None:
    assert problems_of("listen: [")[0].startswith("not valid YAML")


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = REPO / "conf" / "hostcollector.yml"
    assert main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("listen:\n  prot: 1\n  port: x\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "listen.prot: unknown key (did you mean 'port'?)" in err
    assert "listen.port: expected an integer, got 'x'" in err
    assert main(["check-config", str(tmp_path / "missing.yml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_remote_write_endpoints_are_checked() -> None:
    text = """
remote_write:
  endpoints:
    - {name: sre, url: "https://prom/api/v1/write"}
    - {name: tenants, url: "https://mimir/api/v1/push", split_by_tenant: true,
       headers: {X-Scope-OrgID: "{tenant}"}, tenant_ids_file: /etc/hostcollector/ids.json}
"""
    config = parse_config(text)
    assert [e.split_by_tenant for e in config.remote_write.endpoints] == [False, True]
    bad = """
remote_write:
  endpoints:
    - {name: a-b, url: "ftp://x"}
    - {name: mixed, url: "https://x/", split_by_tenant: true}
    - {name: stray, url: "https://x/{tenant}", tenant_ids_file: ids.json}
    - {name: odd, url: "https://x/{tenant}/{org}", split_by_tenant: true,
       headers: {Content-Type: "x", X-Evil: "a\\r\\nb"}}
    - {name: odd, url: "https://x/"}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    assert caught.value.problems == [
        "remote_write.endpoints[0].name: letters, digits and _ only (it is a label value and a directory)",
        "remote_write.endpoints[0].url: must start with http:// or https://",
        "remote_write.endpoints[1].split_by_tenant: put {tenant} in the url or a header "
        "(e.g. X-Scope-OrgID), or every tenant's series would land in one tenant space",
        "remote_write.endpoints[2].{tenant} is only meaningful with split_by_tenant: true",
        "remote_write.endpoints[2].tenant_ids_file: only meaningful with split_by_tenant: true",
        "remote_write.endpoints[3].'https://x/{tenant}/{org}': the only placeholder is {tenant}",
        "remote_write.endpoints[3].headers.Content-Type: not a header name hostcollector can set",
        "remote_write.endpoints[3].headers.X-Evil: control characters in the value",
    ]
    # The section's own checks run once its endpoints are well formed.
    assert problems_of(
        "remote_write: {interval_seconds: 0.5, endpoints: [{name: a, url: 'http://x'}, "
        "{name: a, url: 'http://y'}]}"
    ) == [
        "remote_write.interval_seconds: must be at least 1",
        "remote_write.endpoints: names must be unique",
    ]


def test_tls_and_auth_are_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("listen: {tls: {cert_file: /a.pem}}\nauth: {tokens_file: 3}\n")
    assert caught.value.problems == [
        "listen.tls.cert_file and key_file: set both or neither",
        "auth.tokens_file: expected a string, got 3",
    ]
