"""aigi.data.decode: every image mode comes out RGB as a viewer shows it; every bad file fails with a reason."""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from aigi.data.decode import ImageDecodeError, decode_bytes, load_image


def px(decoded, x, y):
    return tuple(int(v) for v in decoded.image.getpixel((x, y)))


def close(a, b, tol=3):
    return all(abs(int(u) - int(v)) <= tol for u, v in zip(a, b))


# --------------------------------------------------------------------------------------------- good files


def test_exif_orientation_6_rotates(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall
    a[:6, :6] = (255, 0, 0)  # red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "o6.jpg"
    Image.fromarray(a).save(path, exif=exif, quality=95)

    d = load_image(path)
    assert d.image.mode == "RGB"
    assert d.format == "JPEG"
    assert d.image.size == (20, 40)  # width and height swapped
    # rotated clockwise: the top-left corner is now the top-right one
    assert close(px(d, 20 - 2, 1), (255, 0, 0), tol=30)
    assert close(px(d, 1, 1), (0, 0, 0), tol=30)
    assert close(px(d, 1, 40 - 2), (0, 0, 0), tol=30)


def test_no_exif_is_not_rotated(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 20), (10, 200, 10)).save(path)
    d = load_image(path)
    assert d.image.size == (40, 20)
    assert d.original_size == (40, 20)
    assert d.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_palette_png_with_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # 0 black (transparent), 1 red
    im.putpixel((3, 1), 1)
    path = tmp_path / "pal.png"
    im.save(path, transparency=0)
    assert Image.open(path).mode == "P"

    d = load_image(path)
    assert d.image.mode == "RGB"
    assert px(d, 0, 0) == (255, 255, 255)  # transparent black shows as white
    assert px(d, 3, 1) == (255, 0, 0)


def test_palette_png_without_transparency(tmp_path):
    im = Image.new("P", (2, 1), 0)
    im.putpalette([0, 0, 255, 0, 255, 0] + [0, 0, 0] * 254)
    im.putpixel((1, 0), 1)
    path = tmp_path / "pal.png"
    im.save(path)
    d = load_image(path)
    assert px(d, 0, 0) == (0, 0, 255)
    assert px(d, 1, 0) == (0, 255, 0)


def test_rgba_png_alpha_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (0, 0, 0, 0)  # fully transparent black
    a[0, 1] = (0, 0, 255, 255)  # opaque blue
    a[0, 2] = (255, 0, 0, 128)  # half-transparent red
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)

    d = load_image(path)
    assert d.image.mode == "RGB"
    assert px(d, 0, 0) == (255, 255, 255)
    assert px(d, 1, 0) == (0, 0, 255)
    assert close(px(d, 2, 0), (255, 127, 127), tol=2)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # cyan 0, magenta+yellow full: red
    assert Image.open(path).mode == "CMYK"
    d = load_image(path)
    assert d.image.mode == "RGB"
    assert close(px(d, 8, 8), (255, 0, 0), tol=12)


def test_16bit_greyscale_png(tmp_path):
    a = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")  # I;16 (or I on older Pillow)

    d = load_image(path)
    assert d.image.mode == "RGB"
    assert px(d, 0, 0) == (255, 255, 255)
    assert abs(px(d, 1, 0)[0] - 128) <= 1
    assert px(d, 1, 0)[0] == px(d, 1, 0)[1] == px(d, 1, 0)[2]
    assert px(d, 2, 0) == (0, 0, 0)
    assert px(d, 3, 0) == (1, 1, 1)  # 257/65535*255 == 1: scaled, not clipped


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3

    d = load_image(path)
    assert d.format == "GIF"
    assert d.image.size == (8, 8)
    assert px(d, 4, 4) == (255, 0, 0)


def test_la_mode(tmp_path):
    a = np.array([[[50, 255], [50, 0], [200, 255]]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(path)
    d = load_image(path)
    assert px(d, 0, 0) == (50, 50, 50)
    assert px(d, 1, 0) == (255, 255, 255)  # transparent -> white
    assert px(d, 2, 0) == (200, 200, 200)


def test_l_mode(tmp_path):
    path = tmp_path / "l.png"
    Image.new("L", (3, 3), 77).save(path)
    d = load_image(path)
    assert d.image.mode == "RGB"
    assert px(d, 1, 1) == (77, 77, 77)


def test_1bit_mode(tmp_path):
    im = Image.new("1", (4, 1), 0)
    im.putpixel((2, 0), 1)
    path = tmp_path / "bw.png"
    im.save(path)
    d = load_image(path)
    assert px(d, 0, 0) == (0, 0, 0)
    assert px(d, 2, 0) == (255, 255, 255)


def test_decode_bytes_matches_load_image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (5, 7), (1, 2, 3)).save(path)
    a = load_image(path)
    b = decode_bytes(path.read_bytes(), path)
    assert a.sha256 == b.sha256 and a.format == b.format == "PNG"
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


# --------------------------------------------------------------------------------------------- bad files


def assert_refused(path, *words):
    with pytest.raises(ImageDecodeError) as ei:
        load_image(path)
    msg = str(ei.value)
    assert str(path) in msg, msg  # names the file
    assert ei.value.path == str(path)
    assert any(w in msg.lower() for w in words), msg
    return ei.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_refused(path, "empty")


def test_empty_bytes():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_bytes(b"", "mem.png")


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(full, quality=90)
    load_image(full)  # the whole file is fine
    data = full.read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "truncated")


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is a text file, not a picture\n" * 10)
    assert_refused(path, "not an image")


def test_missing_path(tmp_path):
    assert_refused(tmp_path / "nope.jpg", "not found")


def test_folder(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    assert_refused(folder, "folder")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A 1-bit greyscale PNG that claims w x h but carries pixel data for only its first rows."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (((w + 7) // 8 + 1) * 4))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def test_huge_png_refused_from_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    assert path.stat().st_size < 20_000

    def no_decoding(self, *a, **k):  # the refusal must come before any pixel is decoded
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    err = assert_refused(path, "too large")
    assert "30000x30000" in str(err) or "900 megapixels" in str(err)


def png_1bit_black(w: int, h: int) -> bytes:
    """A complete, valid all-black 1-bit PNG, compressed row by row (never holds w*h in memory)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * ((w + 7) // 8 + 1)  # filter byte + packed bits
    idat = b"".join([comp.compress(row) for _ in range(h)] + [comp.flush()])
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_complete_huge_png_refused_without_decoding(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    small.write_bytes(png_1bit_black(20, 10))
    assert px(load_image(small), 19, 9) == (0, 0, 0)  # the builder makes real PNGs

    path = tmp_path / "bomb_full.png"
    path.write_bytes(png_1bit_black(30000, 30000))
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *a, **k: pytest.fail("pixel data was decoded"))
    assert_refused(path, "too large")


def test_max_pixels_is_ours_not_pils(tmp_path, monkeypatch):
    """Between PIL's warning limit and ``max_pixels`` an image is decoded; above ``max_pixels`` it is refused."""
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(path)  # 1600 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would warn (not error) at 1000 < 1600 < 2000
    assert load_image(path).image.size == (40, 40)
    monkeypatch.undo()
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1600).image.size == (40, 40)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    err = assert_refused(path, "truncated", "corrupt")
    assert "too large" not in str(err)


def test_read_bytes_refuses_special_files_without_opening_them(tmp_path):
    import os

    from aigi.data.decode import ImageDecodeError, read_bytes

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block until a writer came
    with pytest.raises(ImageDecodeError, match="not a regular file \\(FIFO\\)"):
        read_bytes(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="not a regular file \\(character device\\)"):
        read_bytes("/dev/zero")


def test_float_image_with_nan_and_inf_decodes_without_warnings(tmp_path):
    import io
    import warnings

    import numpy as np
    from PIL import Image

    from aigi.data.decode import decode_bytes

    a = np.full((8, 8), np.nan, np.float32)
    a[0, 0], a[0, 1] = np.inf, -np.inf
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning reached the user's terminal
        rgb = np.asarray(decode_bytes(buf.getvalue(), "nan.tif").image)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [0, 0, 0] and rgb[4, 4].tolist() == [0, 0, 0]
