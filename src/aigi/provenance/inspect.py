"""Run every provenance extractor over one file; each one's failure is a problem on the file, never a crash."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable

from PIL import Image, ImageFile, UnidentifiedImageError

from aigi.data.decode import ImageDecodeError, read_bytes
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


def _open_lazily(data: bytes, problems: list[str]) -> Image.Image:
    """Open without decoding pixels. The pixel-count guard is lifted (nothing is decoded here; the watermark reader
    checks the size before it decodes), and a PNG text chunk over PIL's limit is skipped rather than hiding the
    rest of the file's metadata."""
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd chunks: the problems list speaks for them
            try:
                return Image.open(io.BytesIO(data))
            except ValueError as e:
                if "too large" not in str(e):
                    raise
                saved_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = True  # PIL then skips the oversized chunk
                try:
                    im = Image.open(io.BytesIO(data))
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
                problems.append(f"metadata unreadable: a text chunk over PIL's limit was skipped ({e})")
                return im
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
        result.problems.append("not an image (unrecognised or unsupported format)")
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
