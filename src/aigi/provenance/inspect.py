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


def _inflated_size(compressed: bytes, limit: int) -> int | None:
    """How many bytes ``compressed`` (zlib) inflates to, inflating at most ``limit``: None past it, 0 when broken
    (PIL reads a broken stream as empty)."""
    inflate = zlib.decompressobj()
    try:
        out = inflate.decompress(compressed, limit)
    except zlib.error:
        return 0
    return None if inflate.unconsumed_tail else len(out)


def _chunk_size(kind: bytes, body: bytes) -> tuple[str, int | None]:
    """A PNG text or colour-profile chunk's name and the length of what PIL would inflate from it (None: past PIL's
    limit for one chunk, which makes PIL refuse the whole file)."""
    raw_key, _, rest = body.partition(b"\0")
    key = raw_key.decode("latin-1")
    if kind in (b"zTXt", b"iCCP"):
        compressed = rest[1:]
    elif kind == b"iTXt" and len(rest) >= 2 and rest[0] != 0:
        compressed = rest[2:].split(b"\0", 2)[-1]
    else:
        return key, len(rest)
    return key, _inflated_size(compressed, PngImagePlugin.MAX_TEXT_CHUNK)


class _ChunkBudget:
    """Decides which PNG text and colour-profile chunks PIL could read. Inflating is bounded in all (PIL's limit on a
    file's text), so thousands of chunks that each inflate to the limit cost no more than one file's worth; every
    chunk past that is dropped without inflating. Problems are named for the first few, then counted."""

    NAMED = 5

    def __init__(self, problems: list[str]) -> None:
        self.problems, self.spent, self.dropped = problems, 0, 0

    def drop(self, kind: bytes, chunk: bytes) -> bool:
        if kind not in (*PNG_TEXT_CHUNKS, b"iCCP"):
            return False
        if self.spent >= PngImagePlugin.MAX_TEXT_MEMORY:  # not inflated
            key = chunk[8:-4].partition(b"\0")[0].decode("latin-1")
            return self._dropped(f"text chunk {key!r} is past {PngImagePlugin.MAX_TEXT_MEMORY} bytes of text in all")
        key, size = _chunk_size(kind, chunk[8:-4])
        self.spent += PngImagePlugin.MAX_TEXT_CHUNK if size is None else size
        if size is None:
            what = "colour profile" if kind == b"iCCP" else "text chunk"
            return self._dropped(f"{what} {key!r} inflates past {PngImagePlugin.MAX_TEXT_CHUNK} bytes")
        if kind != b"iCCP" and self.spent > PngImagePlugin.MAX_TEXT_MEMORY:
            return self._dropped(f"text chunk {key!r} is past {PngImagePlugin.MAX_TEXT_MEMORY} bytes of text in all")
        return False

    def _dropped(self, why: str) -> bool:
        self.dropped += 1
        if self.dropped <= self.NAMED:
            self.problems.append(f"metadata unreadable: {why} (skipped)")
        return True

    def finish(self) -> None:
        if self.dropped > self.NAMED:
            self.problems.append(f"metadata unreadable: {self.dropped - self.NAMED} more chunks skipped")


def _readable_chunks_only(data: bytes, problems: list[str]) -> bytes:
    """``data`` without the PNG text and colour-profile chunks PIL would refuse (it then refuses the whole file, and
    every extractor would lose it): see :class:`_ChunkBudget`. Each one skipped is a problem."""
    budget = _ChunkBudget(problems)
    kept = without_png_chunks(data, budget.drop)
    budget.finish()
    return kept


def _open_lazily(data: bytes, problems: list[str]) -> Image.Image:
    """Open, in an allowed format only, without decoding pixels. The pixel-count guard is lifted (nothing is decoded
    here; the watermark reader checks the size before it decodes), and a PNG chunk PIL would refuse is skipped
    rather than hiding the rest of the file's metadata (and its pixels, from the watermark reader)."""
    readable = _readable_chunks_only(data, problems)
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
    im, not_an_image = None, False
    try:
        im = _open_lazily(data, result.problems)
    except UnidentifiedImageError:
        result.problems.append(unsupported_reason(data))
        not_an_image = True
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
    result.unreadable = not_an_image and not result.findings  # nothing read: like a file that cannot be opened
    return result
