"""When a PEM certificate expires, read from its DER encoding: the standard library loads
certificates into contexts but has no public way to read a server certificate's dates, and
this is a few lines of ASN.1 (RFC 5280: Certificate -> tbsCertificate -> validity)."""

from __future__ import annotations

import base64
import calendar
import re
import time

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
SEQUENCE, UTC_TIME, GENERALIZED_TIME, VERSION_TAG = 0x30, 0x17, 0x18, 0xA0


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `at`."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    while start < end:
        element = _element(der, start)
        found.append(element)
        start = element[2]
    return found


def _time(tag: int, text: str) -> float:
    if tag == UTC_TIME:  # YYMMDDHHMMSSZ; 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != GENERALIZED_TIME:
        raise ValueError(f"not a time (tag {tag:#x})")
    return float(calendar.timegm(time.strptime(text.rstrip("Z"), "%Y%m%d%H%M%S")))


def certificate_not_after(pem: bytes) -> float:
    """The first certificate's notAfter (Unix time); ValueError if it is not one."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate")
    try:
        return _not_after(base64.b64decode(b"".join(match[1].split())))
    except (IndexError, UnicodeDecodeError) as exc:  # a short or garbled encoding
        raise ValueError(f"not a readable X.509 certificate: {exc}") from exc


def _not_after(der: bytes) -> float:
    tag, start, end = _element(der, 0)
    tbs_tag, tbs_start, tbs_end = _children(der, start, end)[0]
    if tag != SEQUENCE or tbs_tag != SEQUENCE:
        raise ValueError("not an X.509 certificate")
    fields = _children(der, tbs_start, tbs_end)
    if fields[0][0] == VERSION_TAG:
        fields = fields[1:]
    # serialNumber, signature, issuer, validity
    validity_tag, v_start, v_end = fields[3]
    if validity_tag != SEQUENCE:
        raise ValueError("no validity in the certificate")
    _, (after_tag, a_start, a_end) = _children(der, v_start, v_end)
    return _time(after_tag, der[a_start:a_end].decode("ascii"))
