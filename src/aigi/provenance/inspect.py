"""Run every provenance extractor over one file; each one's failure is a problem on the file, never a crash."""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from aigi.data.decode import (
    PNG_TEXT_CHUNKS,
    ImageDecodeError,
    open_image,
    read_bytes,
    unsupported_reason,
    without_png_chunks,
)
from aigi.provenance.c2pa import c2pa_findings
from aigi.provenance.findings import Finding, Provenance
from aigi.provenance.metadata import (
    exif_findings,
    iptc_findings,
    text_chunk_findings,
    xmp_findings,
)
from aigi.provenance.watermark import watermark_findings

# (name, extractor(image opened lazily by PIL or None, the file's bytes, problems) -> findings)
Extractor = Callable[[Image.Image, bytes, list[str]], list[Finding]]


def _plain(fn) -> Extractor:
    return lambda im, data, problems: fn(im, problems)


BYTES_ONLY = {"C2PA"}  # extractors that still run when PIL cannot open the file (they read the bytes themselves)
EXTRACTORS: list[tuple[str, Extractor]] = [
    ("C2PA", c2pa_findings),
    ("EXIF", _plain(exif_findings)),
    ("XMP", _plain(xmp_findings)),
    ("IPTC", _plain(iptc_findings)),
    ("text chunks", _plain(text_chunk_findings)),
    ("watermark", watermark_findings),
]


def _text_size(kind: bytes, body: bytes) -> tuple[str, int | None]:
    """A PNG text chunk's key and the length of its text as PIL reads it; None when it inflates past PIL's limit."""
    raw_key, _, rest = body.partition(b"\0")
    key = raw_key.decode("latin-1")
    if kind == b"zTXt":
        compressed = rest[1:]
    elif kind == b"iTXt" and len(rest) >= 2 and rest[0] != 0:
        compressed = rest[2:].split(b"\0", 2)[-1]
    else:
        return key, len(rest)
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(compressed, PngImagePlugin.MAX_TEXT_CHUNK)
    except zlib.error:
        return key, 0  # PIL reads a broken stream as empty text
    return key, None if inflate.unconsumed_tail else len(text)


def _readable_text_only(data: bytes, problems: list[str]) -> bytes:
    """``data`` without the PNG text chunks PIL would refuse (it then refuses the whole file): those over its limit
    for one chunk, and those past its limit for all of a file's text. Each one skipped is a problem, by name."""
    total = 0

    def unreadable(kind: bytes, chunk: bytes) -> bool:
        nonlocal total
        if kind not in PNG_TEXT_CHUNKS:
            return False
        key, size = _text_size(kind, chunk[8:-4])
        if size is None:
            limit = PngImagePlugin.MAX_TEXT_CHUNK
            problems.append(f"metadata unreadable: text chunk {key!r} inflates past {limit} bytes (skipped)")
            return True
        if total + size > PngImagePlugin.MAX_TEXT_MEMORY:
            limit = PngImagePlugin.MAX_TEXT_MEMORY
            problems.append(f"metadata unreadable: text chunk {key!r} is past {limit} bytes of text in all (skipped)")
            return True
        total += size
        return False

    return without_png_chunks(data, unreadable)


def _open_lazily(data: bytes, problems: list[str]) -> Image.Image:
    """Open, in an allowed format only, without decoding pixels. The pixel-count guard is lifted (nothing is decoded
    here; the watermark reader checks the size before it decodes), and a PNG text chunk PIL would refuse is skipped
    rather than hiding the rest of the file's metadata (and its pixels, from the watermark reader)."""
    readable = _readable_text_only(data, problems)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd chunks: the problems list speaks for them
            return open_image(readable)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def inspect_file(path: str | os.PathLike, data: bytes | None = None) -> Provenance:
    result = Provenance(path=str(path))
    try:
        data = read_bytes(path) if data is None else data
    except ImageDecodeError as e:
        result.problems.append(e.reason)
        result.unreadable = True
        return result
    im = None
    try:
        im = _open_lazily(data, result.problems)
    except UnidentifiedImageError:
        result.problems.append(unsupported_reason(data))
    except Exception as e:  # noqa: BLE001 - e.g. a header PIL cannot parse
        result.problems.append(f"metadata unreadable: the file could not be opened ({type(e).__name__}: {e})")
    for name, extractor in EXTRACTORS:
        if im is None and name not in BYTES_ONLY:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result.findings += extractor(im, data, result.problems)
        except Exception as e:  # noqa: BLE001 - one broken block must not hide the others
            result.problems.append(f"metadata unreadable: {name} ({type(e).__name__}: {e})")
    return result
