import json
import os

from aigi.names import shown


def test_plain_and_unicode_names_are_unchanged():
    assert shown("data/0_real/a b.jpg") == "data/0_real/a b.jpg"
    assert shown("café/猫.png") == "café/猫.png"


def test_non_utf8_bytes_are_escaped_and_fit_a_utf8_file(tmp_path):
    name = os.fsdecode(b"x\xff\xfe.jpg")
    assert shown(name) == "x\\xff\\xfe.jpg"
    assert shown(b"x\xff.jpg") == "x\\xff.jpg"
    (tmp_path / "out.csv").write_text(shown(name), encoding="utf-8")  # a raw surrogate would raise here
    json.dumps(shown(name), ensure_ascii=False).encode("utf-8")


def test_terminal_controls_and_bidi_overrides_are_escaped():
    assert shown("\x1b]0;owned\x07\x1b[2J.jpg") == "\\x1b]0;owned\\x07\\x1b[2J.jpg"
    assert shown("a\nb\rc\x9bd") == "a\\x0ab\\x0dc\\x9bd"
    assert shown("photo\u202egpj.exe") == "photo\\u202egpj.exe"
    assert shown("\u2066x\u2069") == "\\u2066x\\u2069"


def test_invisible_and_line_breaking_characters_are_escaped():
    assert shown("a\u2028b\u200bc\u00a0d") == "a\\u2028b\\u200bc\\u00a0d"
    assert shown("x\U000f0000.png") == "x\\U000f0000.png"  # private use
    assert shown("sun \u2600 \U0001f600.jpg") == "sun \u2600 \U0001f600.jpg"  # printable: as it is
