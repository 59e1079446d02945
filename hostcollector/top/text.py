"""Text from the API made safe for a terminal (`visible`), and measured, cut and padded in
terminal cells (`cells`, `clip`, `pad`), pure.

Domain names, tenant IDs and error messages quoting them are written by tenants: a newline
would split a row, ESC, CSI (C1) or OSC sequences would drive the SRE's terminal, and bidi
overrides would reorder what it shows."""

from __future__ import annotations

import unicodedata

# What a terminal acts on rather than shows: C0, DEL and C1 controls; format characters (bidi
# overrides and isolates, zero-width spaces and joiners, tags); lone surrogates (unencodable:
# print() would raise); line and paragraph separators (str.splitlines() and some terminals
# break lines there).
_ACTED_ON = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with every character a terminal would act on written as Python writes it in a
    string literal (\\n, \\x1b, \\u202e), so that the SRE sees something odd is there. A
    backslash is doubled: no two texts look the same once escaped, so a tenant cannot pass for
    another by writing out its escape."""
    if text.isprintable() and "\\" not in text:
        return text  # nearly every name: nothing to look at per character
    return "".join(
        _escape(c) if c == "\\" or unicodedata.category(c) in _ACTED_ON else c for c in text
    )


def _char_cells(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me"):
        return 0  # a combining mark: drawn over the character before it
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """The terminal columns `text` (already `visible`) takes: CJK and emoji two, combining
    marks none. An estimate like wcwidth(3)'s; terminals disagree on a few characters."""
    if text.isascii():
        return len(text)
    return sum(map(_char_cells, text))


def clip(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` cells."""
    if text.isascii():
        return text[: max(width, 0)]
    used = 0
    for end, char in enumerate(text):
        used += _char_cells(char)
        if used > width:
            return text[:end]
    return text


def pad(text: str, width: int, *, right: bool = False) -> str:
    """`text` cut to `width` cells and filled with spaces to exactly `width` (none if 0:
    the rest of the line), on the left if `right`-aligned."""
    if not width:
        return text
    if text.isascii():  # every figure, nearly every name: a frame pads thousands
        text = text[:width]
        return text.rjust(width) if right else text.ljust(width)
    text = clip(text, width)
    fill = " " * (width - cells(text))
    return fill + text if right else text + fill
