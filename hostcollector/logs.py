"""Log line formats: for a terminal, for journald, and for log pipelines (logfmt, JSON).

`logging.format`:
- text: `2025-01-01 12:00:00,123 WARNING hostcollector.poller: message`, as always;
- journal: `<4>hostcollector.poller: message`. journald stamps each line itself and reads the
  `<N>` syslog priority prefix (the unit's SyslogLevelPrefix=, on by default). Its stream
  protocol ends an entry at each newline and reads the prefix per line, so a line without one
  would land at the unit's default priority (info): every line of a multi-line message (a
  traceback) carries the prefix, and `journalctl -p err` shows the whole traceback;
- logfmt: `ts=2025-01-01T12:00:00.123Z level=warning logger=... msg="..." source=libvirt`;
- json: one object per line with the same fields;
- auto: journal when stderr is the journal ($JOURNAL_STREAM names its device and inode, as
  systemd documents), else text.

A record's `vm_uuid`, `tenant_id` and `source` (passed as `extra=`) are fields of logfmt and
JSON lines; text and journal lines carry them in the message already, as the calls write it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import IO, Literal

import orjson

LogFormat = Literal["auto", "text", "journal", "logfmt", "json"]
CONTEXT_FIELDS = ("vm_uuid", "tenant_id", "source")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# syslog(3) priorities of Python's levels.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7
# logfmt values needing quotes: empty, or holding a space, '=', '"', '\' or a control character.
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TO_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def syslog_priority(levelno: int) -> int:
    """debug 7, info 6, warning 4, error 3, critical 2; a custom level takes the next lower."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return _DEBUG_PRIORITY


def stream_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal stream systemd connected: $JOURNAL_STREAM is
    "<st_dev>:<st_ino>" of it (systemd.exec(5)); a stream redirected since, or inherited by a
    process started from a shell in the unit, does not match."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def _full_message(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The message with its traceback and stack, if any (what Formatter.format appends)."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    for extra in (record.exc_text, record.stack_info and formatter.formatStack(record.stack_info)):
        if extra:
            message = f"{message.rstrip()}\n{extra}"
    return message


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        lines = f"{record.name}: {_full_message(record, self)}".splitlines() or [""]
        return "\n".join(prefix + line for line in lines)


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> Iterator[tuple[str, str]]:
    yield "ts", _utc_timestamp(record.created)
    yield "level", record.levelname.lower()
    yield "logger", record.name
    yield "msg", record.getMessage()
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            yield name, str(value)
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        yield "exc", record.exc_text
    if record.stack_info:
        yield "stack", formatter.formatStack(record.stack_info)


def logfmt_value(value: str) -> str:
    """The value as logfmt writes it: bare when it can be, else quoted with `"`, `\\` and
    control characters escaped (`\\n`, `\\t`, `\\u0001`), so that one record is one line."""
    if value and not _NEEDS_QUOTES.search(value):
        return value
    escaped = _TO_ESCAPE.sub(lambda m: _ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}"), value)
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in _fields(record, self))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(dict(_fields(record, self))).decode()


def formatter_for(
    log_format: LogFormat, stream: IO[str], environ: Mapping[str, str]
) -> logging.Formatter:
    if log_format == "auto":
        log_format = "journal" if stream_is_journal(stream, environ) else "text"
    if log_format == "journal":
        return JournalFormatter()
    if log_format == "logfmt":
        return LogfmtFormatter()
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(
    level: str,
    log_format: LogFormat,
    *,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """One handler on the root logger, writing to `stream` (stderr) in `log_format`; as
    logging.basicConfig, nothing changes if the root logger has handlers already."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        formatter_for(log_format, stream, os.environ if environ is None else environ)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    return handler
