"""Hostile image files (issue #11): formats outside the allowlist are never decoded (EPS never reaches Ghostscript),
an oversized PNG text chunk neither hides the pixels nor declares a generator, wide-grey images convert without
float temporaries within a per-image memory bound, and folder walks take exactly the formats that decode."""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import time
import tracemalloc
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFile, features
from typer.testing import CliRunner

from aigi.cli import app
from aigi.data import decode
from aigi.data.decode import ImageDecodeError, decode_bytes, load_image
from aigi.provenance import inspect_file

runner = CliRunner()

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 512 512\nshowpage\n"


def _fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += ["NAXIS1  =                    8", "NAXIS2  =                    8", "END"]
    header = b"".join(c.ljust(80).encode() for c in cards).ljust(2880, b" ")
    return header + bytes(range(64)).ljust(2880, b"\0")


def _psd() -> bytes:
    """A minimal uncompressed 8x8 RGB Photoshop file."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)
    return head + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * 64)


def _saved_by_pil(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (16, 16), 200 if mode != "RGB" else (200, 40, 40)).save(buf, fmt)
    return buf.getvalue()


# Not on the allowlist (JPEG, PNG, WebP, BMP, TIFF, GIF, PPM, AVIF): each one, named .jpg, must be refused.
EXOTIC = {
    "eps_issue": lambda: EPS,
    "eps_pil": lambda: _saved_by_pil("EPS"),
    "fits": _fits,
    "psd": _psd,
    **{fmt.lower(): (lambda fmt=fmt: _saved_by_pil(fmt)) for fmt in ("DDS", "DIB", "ICNS", "ICO", "IM", "PCX")},
    **{fmt.lower(): (lambda fmt=fmt: _saved_by_pil(fmt)) for fmt in ("QOI", "SGI", "SPIDER", "TGA")},
    "msp": lambda: _saved_by_pil("MSP", "1"),
    "xbm": lambda: _saved_by_pil("XBM", "1"),
}
NAMED_BY_SNIFFING = {"eps_issue": "EPS", "eps_pil": "EPS", "fits": "FITS", "psd": "PSD", "dds": "DDS"}


# ------------------------------------------------------------------------------------ no subprocess, ever
SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.spawn", "os.startfile")
_spawned: list[str] | None = None  # set while a test watches; an audit hook cannot be removed, so it is added once
_watched: tuple[str, ...] = SPAWN_EVENTS


def _watch(event: str, args) -> None:
    if _spawned is not None and event.startswith(_watched):
        _spawned.append(f"{event} {args!r}"[:300])


sys.addaudithook(_watch)


@pytest.fixture()
def no_spawn(tmp_path, monkeypatch):
    """Fails the test if anything starts a process; a stand-in ``gs`` first on PATH logs any call that slips by
    (also from a forked worker, whose audit events this process never sees)."""
    global _spawned
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gs_calls.log"
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexit 1\n')
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    _spawned = []
    try:
        yield
        assert _spawned == [], _spawned
        assert not log.exists(), log.read_text()
    finally:
        _spawned = None


def test_eps_named_jpg_starts_no_process_anywhere(tmp_path, no_spawn):
    path = tmp_path / "x.jpg"
    path.write_bytes(EPS)
    with pytest.raises(ImageDecodeError, match=r"not an image \(unsupported format EPS"):
        decode_bytes(EPS, path)
    assert any("unsupported format EPS" in p for p in inspect_file(path).problems)
    res = runner.invoke(app, ["detect", "--json", str(path)])
    assert res.exit_code == 1, res.output  # nothing could be scored: a result, not a crash
    (row,) = json.loads(res.stdout)["results"]
    assert row["verdict"] == "error" and "unsupported format EPS" in row["error"]


# ------------------------------------------------------------------------------------ exotic formats refused
@pytest.mark.parametrize("name", sorted(EXOTIC))
def test_exotic_format_named_jpg_is_not_decoded(tmp_path, name):
    data = EXOTIC[name]()
    assert Image.open(io.BytesIO(data)).format  # PIL itself would open it: the allowlist is what refuses it
    with pytest.raises(ImageDecodeError, match=r"^.*x\.jpg: not an image \(") as err:
        decode_bytes(data, tmp_path / "x.jpg")
    if name in NAMED_BY_SNIFFING:
        assert f"unsupported format {NAMED_BY_SNIFFING[name]};" in str(err.value)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    prov = inspect_file(path)
    assert any(p.startswith("not an image (") for p in prov.problems), prov.problems
    assert not [f for f in prov.findings if f.source != "c2pa"]  # no PIL-read metadata from a refused format


def test_detect_refuses_every_exotic_file_and_scores_the_rest(tmp_path, no_spawn, monkeypatch):
    # a folder is read by forked data-loader workers: a fork is allowed here; an exec anywhere is not (gs's log)
    monkeypatch.setattr(sys.modules[__name__], "_watched", tuple(e for e in SPAWN_EVENTS if e != "os.fork"))
    folder = tmp_path / "in"
    folder.mkdir()
    for name, build in EXOTIC.items():
        (folder / f"{name}.jpg").write_bytes(build())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "real.png")
    res = runner.invoke(app, ["detect", "--json", str(folder)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert rows["real.png"]["verdict"] != "error"
    for name in EXOTIC:
        assert rows[f"{name}.jpg"]["verdict"] == "error", name
        assert "not an image (" in rows[f"{name}.jpg"]["error"], name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"])
def test_allowed_formats_still_decode_whatever_the_name(fmt):
    d = decode_bytes(_saved_by_pil(fmt), "misnamed.dat")
    assert d.format == fmt and d.image.size == (16, 16)


# ------------------------------------------------------------------------------------ PNG text chunks
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _with_chunks(png: bytes, before_idat: list[bytes] = (), before_iend: list[bytes] = ()) -> bytes:
    """``png`` (a PNG's bytes, one IDAT) with chunks inserted after IHDR and before IEND."""
    ihdr_end = 8 + 25
    iend = png.rindex(b"IEND") - 4
    return png[:ihdr_end] + b"".join(before_idat) + png[ihdr_end:iend] + b"".join(before_iend) + png[iend:]


def _ztxt_bomb(key: bytes, size: int = 2 << 20) -> bytes:
    return _chunk(b"zTXt", key + b"\0\0" + zlib.compress(b"a" * size, 9))


def _itxt_bomb(key: bytes, size: int = 2 << 20) -> bytes:
    return _chunk(b"iTXt", key + b"\0\1\0\0\0" + zlib.compress(b"a" * size, 9))


def _noise_png() -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("where", ["before_idat", "before_iend"])
@pytest.mark.parametrize("bomb", [_ztxt_bomb, _itxt_bomb])
def test_oversized_text_chunk_does_not_hide_the_pixels(where, bomb):
    clean = _noise_png()
    hostile = _with_chunks(clean, **{where: [bomb(b"parameters")]})
    assert len(hostile) - len(clean) < 4000  # a few KB on disk inflate past PIL's 1 MiB limit
    got = decode_bytes(hostile, "fake.png")
    assert np.array_equal(np.asarray(got.image), np.asarray(decode_bytes(clean, "clean.png").image))


def test_oversized_icc_profile_does_not_hide_the_pixels():
    clean = _noise_png()
    hostile = _with_chunks(clean, [_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * (2 << 20), 9))])
    got = decode_bytes(hostile, "fake.png")
    assert np.array_equal(np.asarray(got.image), np.asarray(decode_bytes(clean, "clean.png").image))


def test_unreadable_parameters_chunk_is_a_problem_not_a_declaration(tmp_path):
    path = tmp_path / "fake.png"
    readable = _chunk(b"tEXt", b"Software\0aigi test")
    path.write_bytes(_with_chunks(_noise_png(), [_ztxt_bomb(b"parameters"), readable]))
    prov = inspect_file(path)
    assert "metadata unreadable: text chunk 'parameters' inflates past 1048576 bytes (skipped)" in prov.problems
    assert not [f for f in prov.findings if f.claim == "generated"], prov.findings


def test_text_past_pils_total_limit_is_skipped_by_name(tmp_path):
    path = tmp_path / "many.png"
    chunks = [_ztxt_bomb(f"c{i:02d}".encode(), size=1 << 20) for i in range(65)]  # 65 MiB of text in all
    path.write_bytes(_with_chunks(_noise_png(), chunks))
    prov = inspect_file(path)
    assert [p for p in prov.problems if "in all (skipped)" in p] == [
        "metadata unreadable: text chunk 'c64' is past 67108864 bytes of text in all (skipped)"
    ]
    assert decode_bytes(path.read_bytes(), path).image.size == (48, 48)


def test_thousands_of_text_bombs_cost_one_files_worth_of_inflating(tmp_path):
    path = tmp_path / "many_bombs.png"
    bomb = _ztxt_bomb(b"parameters", size=2 << 20)  # each inflates past the 1 MiB limit for one chunk
    path.write_bytes(_with_chunks(_noise_png(), [bomb] * 3000))
    start = time.perf_counter()
    prov = inspect_file(path)
    assert time.perf_counter() - start < 5  # was about 1 MiB of inflating per chunk: minutes for a large file
    assert len(prov.problems) == 6 and prov.problems[-1] == "metadata unreadable: 2995 more chunks skipped"
    assert decode_bytes(path.read_bytes(), path).image.size == (48, 48)


def test_a_colour_profile_bomb_hides_no_other_metadata(tmp_path):
    declared = _chunk(b"tEXt", b"parameters\0a cat\nSteps: 20, Sampler: Euler, Model: sd_xl_base")
    iccp = _chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * (2 << 20), 9))
    path = tmp_path / "iccp.png"
    path.write_bytes(_with_chunks(_noise_png(), [iccp, declared]))
    prov = inspect_file(path)
    assert prov.best("generated") is not None
    assert "metadata unreadable: colour profile 'icc' inflates past 1048576 bytes (skipped)" in prov.problems


def test_empty_parameters_chunk_declares_nothing(tmp_path):
    path = tmp_path / "empty_params.png"
    path.write_bytes(_with_chunks(_noise_png(), [_chunk(b"tEXt", b"parameters\0")]))
    assert inspect_file(path).findings == []


# ------------------------------------------------------------------------------------ 16-bit and memory
def _grey16_png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def test_16bit_grey_rounds_to_the_nearest_8bit_level():
    values = np.array([[0, 128, 129, 257, 385, 386, 32768, 65406, 65407, 65535]], dtype=np.uint16)
    got = np.asarray(decode_bytes(_grey16_png(values)).image)[0, :, 0]
    assert got.tolist() == [0, 0, 1, 1, 1, 2, 128, 254, 255, 255]  # x / 257, halves (65407 = 254.5 x 257) up


def test_16bit_grey_converts_without_full_size_wide_temporaries(monkeypatch):
    monkeypatch.setattr(decode, "STRIP_PIXELS", 1 << 16, raising=False)
    h, w = 1000, 1200
    data = _grey16_png(np.arange(h * w, dtype=np.uint32).reshape(h, w) % 65536)
    tracemalloc.start()
    try:
        decode_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the 8-bit result (1 byte a pixel) and strips; float64 temporaries would be 8 bytes a pixel, several at once
    assert peak < 3 * h * w, f"{peak / 1e6:.1f} MB traced for a {h * w / 1e6:.1f} MP image"


def _stand_in(mode: str, w: int, h: int, **info) -> SimpleNamespace:
    return SimpleNamespace(mode=mode, width=w, height=h, size=(w, h), info=info)


def test_memory_bound_by_mode():
    fits = decode.MAX_DECODED_BYTES
    assert decode.decoded_bytes(_stand_in("RGB", 12000, 10000)) <= fits  # 120 MP 8-bit RGB camera frame
    assert decode.decoded_bytes(_stand_in("L", 12000, 10000)) <= fits
    assert decode.decoded_bytes(_stand_in("I;16", 10950, 10950)) <= fits  # the 16-bit grey PNG
    assert decode.decoded_bytes(_stand_in("RGBA", 10950, 10950)) <= fits  # and its 16-bit RGBA (read as RGBA)
    assert decode.decoded_bytes(_stand_in("F", 10950, 10950)) > fits  # 4-byte floats, a grey plane and RGB
    assert decode.decoded_bytes(_stand_in("LA", 10000, 10000)) > fits  # an RGBA copy and a canvas besides
    assert decode.decoded_bytes(_stand_in("P", 100, 100, transparency=0)) == 100 * 100 * (1 + 8)


def test_image_over_the_memory_bound_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "float.tif"
    Image.new("F", (100, 100), 0.5).save(path)
    Image.new("RGB", (100, 100)).save(tmp_path / "rgb.png")
    monkeypatch.setattr(decode, "MAX_DECODED_BYTES", 100 * 100 * 5)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageDecodeError, match=r"float\.tif: image too large to decode: 100x100 F needs "):
        load_image(path)
    monkeypatch.undo()
    monkeypatch.setattr(decode, "MAX_DECODED_BYTES", 100 * 100 * 5)
    assert load_image(tmp_path / "rgb.png").image.size == (100, 100)


# ------------------------------------------------------------------------------------ extensions and formats agree
def test_folder_walk_extensions_are_the_allowed_formats():
    registered = Image.registered_extensions()
    assert decode.IMAGE_EXTENSIONS == {ext for ext, fmt in registered.items() if fmt in decode.ALLOWED_FORMATS}
    assert ("AVIF" in decode.ALLOWED_FORMATS) == features.check("avif")
    assert (".avif" in decode.IMAGE_EXTENSIONS) == features.check("avif")
    assert not {".eps", ".ps", ".fits", ".psd", ".dds", ".ico", ".tga", ".pcx"} & decode.IMAGE_EXTENSIONS


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow was built without AVIF")
def test_avif_is_walked_and_decoded(tmp_path):
    from aigi.data.decode import is_image_path

    path = tmp_path / "x.avif"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    assert is_image_path(path)
    assert load_image(path).format == "AVIF"
