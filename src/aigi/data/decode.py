"""Read one image file into an RGB PIL image, or fail with a reason a person can act on.

Handles EXIF orientation, palette and alpha images (composited on white, as a viewer shows them), CMYK,
16-bit and float greyscale, and animated files (first frame). Refuses empty, truncated, non-image,
unreadable and oversized files (decompression bombs) with :class:`ImageDecodeError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".ppm", ".pgm"}
MAX_PIXELS = 120_000_000  # a 100-megapixel camera frame fits; a 30000x30000 bomb does not
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


def read_bytes(path: ImageInput, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file (or of an in-memory image), refusing folders, empty and oversized files."""
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
        size = p.stat().st_size
        if p.is_dir():
            raise ImageDecodeError(p, "is a folder, not a file")
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


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 65535.0 * 255.0
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def decode_bytes(
    data: bytes, path: str | os.PathLike = "<bytes>", max_pixels: int = MAX_PIXELS, sha256: str | None = None
) -> Decoded:
    """Decode ``data`` (the bytes of ``path``) into an RGB image; raise :class:`ImageDecodeError` with a reason.

    ``sha256``: the bytes' digest when the caller already has it (it is not computed twice)."""
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    digest = sha256 or hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below decides (PIL's warning fires at 89 MP, below MAX_PIXELS)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    path,
                    f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels > {max_pixels / 1e6:.0f} (possible decompression bomb)",
                )
            fmt = im.format or "unknown"
            im.seek(0)  # animated: first frame
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (unrecognised or unsupported format)") from None
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
    return Decoded(image=rgb, format=fmt, sha256=digest, original_size=(w, h))


def load_image(path: ImageInput, max_pixels: int = MAX_PIXELS) -> Decoded:
    return decode_bytes(read_bytes(path), str(path), max_pixels=max_pixels)
