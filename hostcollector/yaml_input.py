"""YAML from files an operator (or a template) wrote: the config and the tokens file.

PyYAML's safe loader is safe from code execution, not from hostile shapes. This loader refuses
aliases (a few lines of `&a [*a, *a, ...]` expand to gigabytes: "billion laughs"; neither file
needs them), nesting deeper than MAX_DEPTH (the composer recurses: deep `[[[...]]]` ends in a
RecursionError), and duplicate keys (PyYAML silently keeps the last one, so a second `port:`
would win unnoticed). Every way a document can fail, including the constructors' own
exceptions (`2024-13-45` is a timestamp to YAML, an int of 5,000 digits exceeds Python's
limit), comes out as one ValueError with a bounded message.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

# Neither file needs more than 6 levels; far below what the composer's recursion survives.
MAX_DEPTH = 50
MAX_MESSAGE_CHARS = 500
MAX_QUOTE_CHARS = 80


def quote(value: object) -> str:
    """repr(value) cut to a bounded length: error messages quote what they were given, and
    a value can be megabytes long."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    if len(text) <= MAX_QUOTE_CHARS:
        return text
    return f"{text[: MAX_QUOTE_CHARS - 3]}... ({len(text)} characters)"


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._refuse("aliases (*name) are not accepted")
        if self._depth >= MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, problem: str) -> typing.NoReturn:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        raise yaml.composer.ComposerError(None, None, problem, event.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the constructor below says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {quote(key)} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: str | bytes) -> Any:
    """The document in `data` (bytes: UTF-8, or UTF-16 with a BOM); ValueError saying what is
    wrong with it."""
    try:
        loader = _BoundedLoader(data)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ValueError(_bounded(f"not valid YAML: {exc}")) from exc
    except (ValueError, OverflowError, IndexError, KeyError, AttributeError, TypeError) as exc:
        # PyYAML's scalar constructors trust what the resolver or a tag told them: `2024-13-45`
        # (ValueError), `!!int ''` (IndexError), `!!bool maybe` (KeyError), `!!timestamp x`
        # (AttributeError). The file is wrong, not the program.
        raise ValueError(_bounded(f"not a usable YAML value: {exc!r}")) from exc
    except RecursionError as exc:  # MAX_DEPTH should prevent it; never a traceback
        raise ValueError("not usable YAML: nested too deeply") from exc


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 4] + " ..."
