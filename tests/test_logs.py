"""Log line formats (hostcollector/logs.py): each one's exact output, logfmt's escaping, the
journal's priorities and its detection, and a bad `logging.format` refused."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import orjson
import pytest

from hostcollector.cli import main
from hostcollector.logs import (
    JournalFormatter,
    JsonFormatter,
    LogfmtFormatter,
    formatter_for,
    logfmt_value,
    stream_is_journal,
    syslog_priority,
)

CREATED = 1767268800.25  # 2026-01-01T12:00:00.250Z
VM = "a1a1a1a1-0000-4000-8000-000000000001"
TENANT = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"


def record(
    message: str = "VM %s quarantined",
    args: tuple[object, ...] = ("hc-lab-a1",),
    level: int = logging.WARNING,
    extra: dict[str, str] | None = None,
    exc_info: logging._SysExcInfoType | None = None,
) -> logging.LogRecord:
    made = logging.LogRecord(
        "hostcollector.sources.libvirt_tracker", level, __file__, 1, message, args, exc_info
    )
    made.created = CREATED
    for key, value in (extra or {}).items():
        setattr(made, key, value)
    return made


FIELDS = {"vm_uuid": VM, "tenant_id": TENANT, "source": "libvirt"}


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    formatter = JournalFormatter()
    assert (
        formatter.format(record())
        == "<4>hostcollector.sources.libvirt_tracker: VM hc-lab-a1 quarantined"
    )
    # The fields are not repeated: the message names the VM already.
    assert formatter.format(record(extra=FIELDS)) == formatter.format(record())


def test_journal_prefixes_every_line_of_a_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        exc_info = sys.exc_info()
    lines = JournalFormatter().format(record(level=logging.ERROR, exc_info=exc_info)).split("\n")
    assert lines[0] == "<3>hostcollector.sources.libvirt_tracker: VM hc-lab-a1 quarantined"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad"
    assert all(line.startswith("<3>") for line in lines)


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (25, 6),  # a custom level between info and warning: info's
    ],
)
def test_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority
    assert JournalFormatter().format(record(level=level)).startswith(f"<{priority}>")


def test_logfmt_without_and_with_fields() -> None:
    formatter = LogfmtFormatter()
    assert formatter.format(record()) == (
        "ts=2026-01-01T12:00:00.250Z level=warning logger=hostcollector.sources.libvirt_tracker"
        ' msg="VM hc-lab-a1 quarantined"'
    )
    assert formatter.format(record(extra=FIELDS)) == (
        "ts=2026-01-01T12:00:00.250Z level=warning logger=hostcollector.sources.libvirt_tracker"
        f' msg="VM hc-lab-a1 quarantined" vm_uuid={VM} tenant_id={TENANT} source=libvirt'
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak\r\ttab", '"line\\nbreak\\r\\ttab"'),
        ("bell\x07", '"bell\\u0007"'),
        ("ünïcode", "ünïcode"),
    ],
)
def test_logfmt_quoting_and_escaping(value: str, written: str) -> None:
    assert logfmt_value(value) == written


def test_logfmt_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError('bad "value"')
    except ValueError:
        exc_info = sys.exc_info()
    line = LogfmtFormatter().format(record(level=logging.ERROR, exc_info=exc_info))
    assert "\n" not in line
    assert ' exc="Traceback (most recent call last):\\n' in line
    assert line.endswith('ValueError: bad \\"value\\""')


def test_json_without_and_with_fields() -> None:
    formatter = JsonFormatter()
    base = {
        "ts": "2026-01-01T12:00:00.250Z",
        "level": "warning",
        "logger": "hostcollector.sources.libvirt_tracker",
        "msg": "VM hc-lab-a1 quarantined",
    }
    plain = formatter.format(record())
    assert "\n" not in plain
    assert orjson.loads(plain) == base
    assert list(orjson.loads(formatter.format(record(extra=FIELDS)))) == [*base, *FIELDS]
    assert orjson.loads(formatter.format(record(extra=FIELDS))) == base | FIELDS
    weird = orjson.loads(formatter.format(record('a "b"\nc=%s', ("d e",))))
    assert weird["msg"] == 'a "b"\nc=d e'


def test_journal_stream_detection_against_a_real_descriptor(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream, (tmp_path / "other").open("w") as other:
        stat = os.fstat(stream.fileno())
        names_it = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert stream_is_journal(stream, names_it)
        assert not stream_is_journal(other, names_it)  # redirected since systemd set it
        assert not stream_is_journal(stream, {})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert isinstance(formatter_for("auto", stream, names_it), JournalFormatter)
        auto_text = formatter_for("auto", other, names_it)
        assert type(auto_text) is logging.Formatter
        assert auto_text.format(record()).endswith(
            " WARNING hostcollector.sources.libvirt_tracker: VM hc-lab-a1 quarantined"
        )
    # Not a file at all (a test's StringIO): not the journal.
    assert not stream_is_journal(io.StringIO(), names_it)


def test_each_format_is_chosen_by_name(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        assert isinstance(formatter_for("journal", stream, {}), JournalFormatter)
        assert isinstance(formatter_for("logfmt", stream, {}), LogfmtFormatter)
        assert isinstance(formatter_for("json", stream, {}), JsonFormatter)
        assert type(formatter_for("text", stream, {})) is logging.Formatter


def test_a_bad_format_is_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hostcollector.yml"
    config.write_text("logging:\n  format: syslog\n")
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "logging.format: expected one of auto, text, journal, logfmt, json, got 'syslog'" in err
