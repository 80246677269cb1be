"""Text from a file, made safe to show.

Names, metadata and versions read from a file are attacker-chosen. Shown
raw, control characters in them could move the cursor, erase lines, fake a
verdict, set a terminal's title or plant hyperlinks; a lone surrogate makes
printing fail. `printable` is the one place that escapes them: every string
that comes from a file goes through it before reaching a terminal or an
exception message; `html` does the same for HTML (Jupyter displays).
"""
from __future__ import annotations

import html as _html


def _escape(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(value) -> str:
    """`value` as a string (str() of non-strings) in which every character
    that is not printable — control and format characters (ESC, BEL, CR,
    bidirectional overrides), separators other than the space, lone
    surrogates, unassigned code points — is shown as a ``\\x1b``,
    ``\\u202e`` or ``\\U000e0001`` escape."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def html(value) -> str:
    """`printable(value)`, HTML-escaped: text from a file in a Jupyter table."""
    return _html.escape(printable(value))
