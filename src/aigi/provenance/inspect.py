"""Run every provenance extractor over one file; each one's failure is a problem on the file, never a crash."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from aigi.data.decode import ImageDecodeError, read_bytes
from aigi.provenance.findings import Finding, Provenance
from aigi.provenance.metadata import exif_findings, iptc_findings, text_chunk_findings, xmp_findings

# (name, extractor(image opened lazily by PIL, the file's bytes, problems) -> findings)
Extractor = Callable[[Image.Image, bytes, list[str]], list[Finding]]


def _plain(fn) -> Extractor:
    return lambda im, data, problems: fn(im, problems)


EXTRACTORS: list[tuple[str, Extractor]] = [
    ("EXIF", _plain(exif_findings)),
    ("XMP", _plain(xmp_findings)),
    ("IPTC", _plain(iptc_findings)),
    ("text chunks", _plain(text_chunk_findings)),
]


def inspect_file(path: str | os.PathLike, data: bytes | None = None) -> Provenance:
    result = Provenance(path=str(path))
    try:
        data = read_bytes(path) if data is None else data
    except ImageDecodeError as e:
        result.problems.append(e.reason)
        return result
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd chunks: the problems list speaks for them
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        result.problems.append("not an image (unrecognised or unsupported format)")
        return result
    except Exception as e:  # noqa: BLE001 - e.g. PIL refusing an oversized text chunk while opening
        result.problems.append(f"metadata unreadable: the file could not be opened ({type(e).__name__}: {e})")
        return result
    for name, extractor in EXTRACTORS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result.findings += extractor(im, data, result.problems)
        except Exception as e:  # noqa: BLE001 - one broken block must not hide the others
            result.problems.append(f"metadata unreadable: {name} ({type(e).__name__}: {e})")
    return result


def inspect_paths(paths: list[Path]) -> list[Provenance]:
    return [inspect_file(p) for p in paths]
