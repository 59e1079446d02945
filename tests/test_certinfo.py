"""Certificate expiry read from DER, checked against openssl's own reading."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from hostcollector.certinfo import certificate_not_after
from tests.pki import make_ca, make_cert


@pytest.mark.parametrize("days", [1, 400, 20000])  # 20000 days: a GeneralizedTime after 2049
def test_not_after_matches_openssl(tmp_path: Path, days: int) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
         "-out", "c.pem", "-days", str(days), "-subj", "/CN=t"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    enddate = subprocess.run(
        ["openssl", "x509", "-in", "c.pem", "-noout", "-enddate"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    expected = ssl.cert_time_to_seconds(enddate.split("=", 1)[1].strip())
    assert certificate_not_after((tmp_path / "c.pem").read_bytes()) == expected


def test_a_ca_signed_chain_reads_the_first_certificate(tmp_path: Path) -> None:
    make_ca(tmp_path)
    make_cert(tmp_path, "server", "s", server=True)
    chain = (tmp_path / "server.pem").read_bytes() + (tmp_path / "ca.pem").read_bytes()
    assert certificate_not_after(chain) == certificate_not_after(
        (tmp_path / "server.pem").read_bytes()
    )


@pytest.mark.parametrize(
    "junk",
    [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"],
)
def test_not_a_certificate_is_a_value_error(junk: bytes) -> None:
    with pytest.raises(ValueError):
        certificate_not_after(junk)
