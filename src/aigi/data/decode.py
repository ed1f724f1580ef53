"""Read one image file into an RGB PIL image, or fail with a reason a person can act on.

Handles EXIF orientation, palette and alpha images (composited on white, as a viewer shows them), CMYK,
16-bit and float greyscale, and animated files (first frame). Refuses empty, truncated, non-image,
unreadable and oversized files (decompression bombs) with :class:`ImageDecodeError`.

Only the formats in :data:`ALLOWED_FORMATS` are ever opened, whatever a file's name says: PIL's other plugins
(EPS runs Ghostscript on the file; FITS, PSD, DDS, SPIDER, PCD, ...) are never reached. A PNG's text chunks do
not take part in decoding its pixels (a chunk that inflates past PIL's limit cannot make a picture unreadable).

Memory: decoding one image may hold at most :data:`MAX_DECODED_BYTES` (1 GB), counted before any pixel is decoded
as width x height x (the bytes a pixel of the decoded mode takes in PIL + those of the copies the conversion to RGB
keeps alongside), see :func:`decoded_bytes`; wide greyscale converts in integer strips. Peak RSS measured at 120 MP,
over the interpreter's own ~230 MB: 16-bit grey PNG ~0.8 GB (was 3.0 GB), 16-bit RGBA PNG ~0.9 GB (was 2.3 GB).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError, features

# The formats aigi decodes, as PIL names them (PPM covers PGM, PBM, PNM and PFM; JPEG covers MPO). AVIF only where
# this Pillow was built with it. HEIC would need pillow-heif, which aigi does not depend on.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM") + (
    ("AVIF",) if features.check("avif") else ()
)
# The file names a folder walk takes: exactly the extensions PIL registers for the allowed formats.
IMAGE_EXTENSIONS = {ext for ext, fmt in Image.registered_extensions().items() if fmt in ALLOWED_FORMATS}
MAX_PIXELS = 120_000_000  # a 100-megapixel camera frame fits; a 30000x30000 bomb does not
MAX_DECODED_BYTES = 1_000_000_000  # see decoded_bytes(): 120 MP of RGB, grey, 16-bit grey or RGBA fit; of float not
STRIP_PIXELS = 1 << 22  # greyscale conversion works on this many pixels at a time
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
PNG_PIXEL_IRRELEVANT = (*PNG_TEXT_CHUNKS, b"iCCP")  # text and the colour profile (aigi does not apply it)
MAX_FILE_BYTES = 256 * 1024 * 1024
LOSSLESS_FORMATS = {"PNG", "BMP", "TIFF", "PPM", "GIF"}


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; ``str()`` names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Decoded:
    image: Image.Image  # RGB
    format: str  # the container format PIL saw: JPEG, PNG, ...
    sha256: str  # of the file's bytes
    original_size: tuple[int, int]


@dataclass(frozen=True)
class InMemoryImage:
    """An image that is not a file (an upload): its name, used in messages and reports, and its bytes."""

    name: str
    data: bytes = field(repr=False)

    def __str__(self) -> str:
        return self.name


ImageInput = Union[str, os.PathLike, InMemoryImage]  # what every scoring function accepts


def as_input(item) -> Path | InMemoryImage:
    """A path, or ``(name, bytes)`` / :class:`InMemoryImage` for an image that never touches the disk."""
    if isinstance(item, InMemoryImage):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (bytes, bytearray, memoryview)):
        return InMemoryImage(str(item[0]), bytes(item[1]))
    return Path(item)


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISDIR, "folder"),
)


def special_file_kind(mode: int) -> str | None:
    """None for a regular file; otherwise what it is ("FIFO", "socket", "folder", ...): never opened, a FIFO blocks."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in FILE_KINDS if test(mode)), "special file")


def read_bytes(path: ImageInput, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file (or of an in-memory image), refusing folders, FIFOs, devices, empty and oversized files."""
    if isinstance(path, InMemoryImage):
        if not path.data:
            raise ImageDecodeError(path.name, "empty file (0 bytes)")
        if len(path.data) > max_bytes:
            raise ImageDecodeError(
                path.name, f"file too large ({len(path.data) / 2**20:.0f} MiB > {max_bytes / 2**20:.0f} MiB)"
            )
        return path.data
    p = Path(path)
    try:
        st = p.stat()
        size, kind = st.st_size, special_file_kind(st.st_mode)
        if kind == "folder":
            raise ImageDecodeError(p, "is a folder, not a file")
        if kind is not None:
            raise ImageDecodeError(p, f"not a regular file ({kind})")
        if size == 0:
            raise ImageDecodeError(p, "empty file (0 bytes)")
        if size > max_bytes:
            raise ImageDecodeError(p, f"file too large ({size / 2**20:.0f} MiB > {max_bytes / 2**20:.0f} MiB)")
        return p.read_bytes()
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(p, "file not found") from None
    except OSError as e:
        raise ImageDecodeError(p, f"cannot read file ({e.strerror or e})") from None


WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)


def decoded_bytes(im: Image.Image) -> int:
    """The memory decoding ``im`` (opened, not yet loaded) holds at its peak: its pixels as PIL stores them (1 byte
    a pixel for 1, L and P; 2 for 16-bit grey; 4 for I, F and every multi-band mode) plus the copies the conversion
    to RGB keeps alongside (the RGB result; an 8-bit grey plane for 16-bit and float grey; an RGBA copy, for modes
    other than RGBA, and a white RGB canvas for images with transparency). Strip temporaries are not counted
    (at most ``STRIP_PIXELS`` pixels); neither is EXIF rotation, which briefly holds the stored pixels twice."""
    mode = ImageMode.getmode(im.mode)
    stored = 4 if len(mode.bands) > 1 else np.dtype(mode.typestr).itemsize
    if im.mode == "RGB":
        extra = 0
    elif _has_alpha(im):
        extra = 4 + (0 if im.mode == "RGBA" else 4)
    else:
        extra = 4 + (1 if im.mode in WIDE_GREY_MODES else 0)
    return im.width * im.height * (stored + extra)


def _grey_strip_to_uint8(strip: np.ndarray, mode: str, peak: float) -> np.ndarray:
    """One strip of 16-bit, 32-bit or float grey as 8 bits, rounded; 16-bit data in integers (x / 257, rounded)."""
    if mode.startswith("I;16") or (mode == "I" and peak > 255):
        wide = np.clip(strip, 0, 65535).astype(np.uint32)
        return ((wide + 128) // 257).astype(np.uint8)
    if mode == "I":
        return np.clip(strip, 0, 255).astype(np.uint8)
    scale = 255.0 if peak <= 1.0 else 1.0  # float images: 0..1, else taken as 0..255
    values = np.nan_to_num(strip.astype(np.float64), nan=0.0)  # NaN pixels black; +-inf clipped below
    return np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey to RGB, a strip of rows at a time (no full-size wide temporaries)."""
    peak = im.getextrema()[1]
    out = np.empty((im.height, im.width), np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, im.width))
    for top in range(0, im.height, rows):
        bottom = min(im.height, top + rows)
        out[top:bottom] = _grey_strip_to_uint8(np.asarray(im.crop((0, top, im.width, bottom))), im.mode, peak)
    return Image.fromarray(out).convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in WIDE_GREY_MODES:
        return _wide_grey_to_rgb(im)
    if _has_alpha(im):  # composited on white, as a viewer shows it
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def png_chunks(data: bytes):
    """``(type, start, end)`` of each chunk of a PNG's bytes (``data[start:end]`` is the whole chunk, length and CRC
    included), in order; stops at IEND or at the first chunk that does not fit (PIL reports that one)."""
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        if end > len(data):
            return
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos = end


def without_png_chunks(data: bytes, drop) -> bytes:
    """The PNG ``data`` without the chunks for which ``drop(type, data[start:end])`` is true; other bytes as they are
    (anything after the last whole chunk included). Not a PNG: ``data`` unchanged."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, pos = [data[: len(PNG_SIGNATURE)]], len(PNG_SIGNATURE)
    for kind, start, end in png_chunks(data):
        if drop(kind, data[start:end]):
            kept.append(data[pos:start])
            pos = end
    if pos == len(PNG_SIGNATURE):
        return data
    kept.append(data[pos:])
    return b"".join(kept)


def pixel_bytes(data: bytes) -> bytes:
    """``data`` as far as its pixels are concerned: a PNG loses its text chunks and colour profile (neither changes a
    decoded pixel, and either can inflate past PIL's limit and make PIL refuse the whole file)."""
    return without_png_chunks(data, lambda kind, chunk: kind in PNG_PIXEL_IRRELEVANT)


def sniffed_format(data: bytes) -> str | None:
    """The format PIL's plugins would claim ``data`` is, from its first bytes only: no plugin opens it."""
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            claim = accept(data[:16]) if accept is not None else False
            if claim and not isinstance(claim, str):  # a str is PIL's "maybe, with a warning"
                return fmt
        except Exception:  # noqa: BLE001 - an accept test that cannot judge these bytes claims nothing
            continue
    return None


def unsupported_reason(data: bytes) -> str:
    """Why ``data`` is not decoded: a format aigi does not open (named when it can be told), or none at all."""
    fmt = sniffed_format(data)
    if fmt is not None and fmt not in ALLOWED_FORMATS:
        return f"not an image (unsupported format {fmt}; aigi reads {', '.join(ALLOWED_FORMATS)})"
    return "not an image (unrecognised or unsupported format)"


def open_image(data: bytes) -> Image.Image:
    """Open ``data`` lazily (no pixel decoded) with PIL restricted to :data:`ALLOWED_FORMATS`."""
    return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


def _check_size(im: Image.Image, path: str | os.PathLike, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            path,
            f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels > {max_pixels / 1e6:.0f} (possible decompression bomb)",
        )
    need = decoded_bytes(im)
    if need > MAX_DECODED_BYTES:
        raise ImageDecodeError(
            path,
            f"image too large to decode: {w}x{h} {im.mode} needs {need / 1e6:.0f} MB > {MAX_DECODED_BYTES / 1e6:.0f} MB",
        )


def _decode(data: bytes, path: str | os.PathLike, max_pixels: int) -> tuple[Image.Image, str, tuple[int, int]]:
    with warnings.catch_warnings():
        # our own max_pixels check decides (PIL's warning fires at 89 MP, below MAX_PIXELS)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = open_image(pixel_bytes(data))
        _check_size(im, path, max_pixels)
        size, fmt = im.size, im.format or "unknown"
        im.seek(0)  # animated: first frame
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return _to_rgb(im), fmt, size


def decode_bytes(
    data: bytes, path: str | os.PathLike = "<bytes>", max_pixels: int = MAX_PIXELS, sha256: str | None = None
) -> Decoded:
    """Decode ``data`` (the bytes of ``path``) into an RGB image; raise :class:`ImageDecodeError` with a reason.

    ``sha256``: the bytes' digest when the caller already has it (it is not computed twice)."""
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    digest = sha256 or hashlib.sha256(data).hexdigest()
    try:
        rgb, fmt, size = _decode(data, path, max_pixels)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, unsupported_reason(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels > {max_pixels / 1e6:.0f}" if found else str(e)
        raise ImageDecodeError(path, f"image too large: {size} (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image data ({msg})"
        else:
            msg = f"corrupt or unreadable image data ({msg})"
        raise ImageDecodeError(path, msg) from None
    except MemoryError:
        raise ImageDecodeError(path, "image too large to decode in memory") from None
    return Decoded(image=rgb, format=fmt, sha256=digest, original_size=size)


def load_image(path: ImageInput, max_pixels: int = MAX_PIXELS) -> Decoded:
    return decode_bytes(read_bytes(path), str(path), max_pixels=max_pixels)
