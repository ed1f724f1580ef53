"""How a file name is shown, on the terminal and in every file aigi writes (tables, CSV, JSON, logs).

A file name is bytes chosen by whoever made the file. Three kinds of character in it are escaped, always the same way:

- bytes that are not UTF-8 (Python keeps them as lone surrogates, which no UTF-8 file can hold): ``\\xNN``;
- C0 and C1 control characters (ESC sequences can clear a screen, retitle a window or hide a verdict): ``\\xNN``;
- bidirectional controls (U+202E shows ``gpj.exe`` as ``exe.jpg``), every other character Python does not call
  printable (zero-width and other format characters, line and paragraph separators, spaces other than the plain
  one, private-use and unassigned code points) and other lone surrogates: ``\\uNNNN`` (``\\UNNNNNNNN`` above U+FFFF).

Everything else, accented letters, CJK and emoji included, is shown as it is.
"""

from __future__ import annotations

import os

BIDI_CONTROLS = frozenset({0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by the surrogateescape error handler
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if ch.isprintable() and code not in BIDI_CONTROLS:
        return ch
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(name: str | bytes | os.PathLike) -> str:
    """``name`` safe to print and to write to a UTF-8 file; unchanged when it holds nothing that needs escaping."""
    text = os.fsdecode(name)
    if text.isprintable() and text.isascii():
        return text
    return "".join(_escaped(ch) for ch in text)
