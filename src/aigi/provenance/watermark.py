"""Stable Diffusion's invisible watermark: a numpy-only decoder of the ``dwtDct`` scheme of invisible-watermark.

The reference Stable Diffusion pipelines mark every image they save with ``imwatermark.WatermarkEncoder`` and
the ``dwtDct`` method:

- SD 1.x (CompVis ``scripts/txt2img.py``): the bytes ``b"StableDiffusionV1"``, 136 bits;
- SD 2.x (Stability-AI ``stablediffusion``): the bytes ``b"SDV2"``, 32 bits;
- SDXL (Stability-AI ``generative-models``, diffusers' SDXL pipelines, the Stability API): the 48 bits of
  ``0xB3EC907BB19E``.

The scheme, as the library implements it (and as this module decodes it, bit for bit):

1. The image, an ``H x W x 3`` uint8 array in OpenCV's BGR order, is converted to YUV with OpenCV's 8-bit
   fixed-point ``COLOR_BGR2YUV``; only the U plane carries the mark (the encoder's scales are ``[0, 36, 36]``, and
   its loop over channels stops before V).
2. U, cropped to a multiple of 4 in both directions, goes through one level of the Haar wavelet transform; only the
   low-low band (``cA``, half size) is used.
3. ``cA`` is cut into 4x4 blocks, numbered row by row. Block ``k`` carries payload bit ``k % n``. In each block the
   coefficient of largest magnitude, the DC term ``[0, 0]`` excluded, is quantised so that ``|c| mod 36`` falls at
   9 (bit 0) or 27 (bit 1). Despite the method's name no DCT is involved.
4. Decoding reads every block's vote ``(|c| mod 36) > 18`` and sets bit ``i`` to 1 when more than half
   (``mean * 255 > 127``) of the blocks carrying it vote 1.

Channel order: the reference scripts convert RGB to BGR before encoding, but diffusers before PR #7013 (early 2024)
passed RGB arrays where BGR was expected, so SDXL images from those versions carry the mark in the "other" U plane.
Both orders are decoded; the better one is reported.

The mark survives only lossless, same-size, uncropped copies: a JPEG re-encode (even at quality 90), a resize or an
8-pixel crop brings every payload down to chance. The match rule is a bit accuracy of at least 0.90 (SD 1.x
123/136, SD 2.x 29/32, SDXL 44/48). On 139 unmarked images (natural photos, JPEG re-encodes, noise) the best
accuracy of any payload in either order was 0.71 (SDXL 34/48); by chance alone 29/32 has odds below 1e-6. A flat or
grayscale image has a constant U plane and decodes to all-equal bits, which is no signal and never a match.
The encoder refuses images under 256x256 pixels of area, so those are not read. Absence of the mark proves nothing.

The algorithm comes from invisible-watermark by ShieldMnt (https://github.com/ShieldMnt/invisible-watermark,
``imwatermark/maxDct.py`` and ``watermark.py``); this decoder is a reimplementation of its dwtDct decode path in
numpy, checked bit for bit against the library (``tests/test_provenance_watermark.py``). Its licence:

    MIT License

    Copyright (c) 2021 ShieldMnt

    Permission is hereby granted, free of charge, to any person obtaining a copy
    of this software and associated documentation files (the "Software"), to deal
    in the Software without restriction, including without limitation the rights
    to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
    copies of the Software, and to permit persons to whom the Software is
    furnished to do so, subject to the following conditions:

    The above copyright notice and this permission notice shall be included in all
    copies or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
    IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
    FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
    AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
    LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
    OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
    SOFTWARE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from aigi.provenance.findings import Finding

SCALE = 36  # the encoder's quantisation step for the U plane
BLOCK = 4  # block size in the Haar low-low band
MIN_AREA = 256 * 256  # the library refuses smaller images (an area check: 128x1024 is fine)
MAX_PIXELS = (
    4096 * 4096
)  # generators write the mark at generation size; larger files are reported unchecked (time, memory)
MIN_ACCURACY = 0.90
STRIP_ROWS = 256  # image rows decoded at a time (a multiple of 8: one block row of cA is 8 image rows)
_HAAR = 0.7071067811865476  # PyWavelets' Haar filter tap; the two separate products keep its rounding

CHANNEL_ORDERS = {
    "BGR": "as the reference pipelines embed it (RGB converted to BGR first)",
    "RGB": "as diffusers before PR #7013 embedded it (RGB passed where BGR was expected)",
}


@dataclass(frozen=True)
class Payload:
    generator: str
    name: str  # the payload as its source code writes it
    bits: np.ndarray  # uint8 0/1, most significant bit first


def _from_bytes(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def _from_int(value: int, nbits: int) -> np.ndarray:
    return np.array([int(b) for b in format(value, f"0{nbits}b")], dtype=np.uint8)


PAYLOADS: tuple[Payload, ...] = (
    Payload("Stable Diffusion 1.x", "StableDiffusionV1", _from_bytes(b"StableDiffusionV1")),
    Payload("Stable Diffusion 2.x", "SDV2", _from_bytes(b"SDV2")),
    Payload("Stable Diffusion XL", "0xB3EC907BB19E", _from_int(0xB3EC907BB19E, 48)),
)


def _u_plane(b: np.ndarray, g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """U of OpenCV's ``COLOR_BGR2YUV`` for uint8 planes: its fixed-point arithmetic, 14-bit shift, rounding."""
    b, g, r = (c.astype(np.int32) for c in (b, g, r))
    y = (b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14
    return np.clip(((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14, 0, 255)


def _haar_ll(u: np.ndarray) -> np.ndarray:
    """The low-low band of one level of ``pywt.dwt2(u, "haar")``, with the same floating-point operations."""
    u = u.astype(np.float64)
    rows = u[0::2] * _HAAR + u[1::2] * _HAAR
    return rows[:, 0::2] * _HAAR + rows[:, 1::2] * _HAAR


def block_votes(rgb: np.ndarray, order: str = "BGR") -> np.ndarray:
    """Every 4x4 block's vote (0/1), in the library's block order, for an ``H x W x 3`` uint8 RGB array.

    ``order="BGR"`` reads the mark as the reference encoder put it (the array it was given was BGR);
    ``order="RGB"`` as if the encoder had been handed the RGB array itself. Decoded in strips of rows: a block
    row of the low-low band is 8 image rows, so rows and columns past the last multiple of 8 never count.
    """
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"order must be one of {sorted(CHANNEL_ORDERS)}, not {order!r}")
    h, w = (rgb.shape[0] // 8) * 8, (rgb.shape[1] // 8) * 8
    blue, red = (2, 0) if order == "BGR" else (0, 2)
    votes = []
    for top in range(0, h, STRIP_ROWS):
        strip = rgb[top : min(top + STRIP_ROWS, h), :w]
        ll = _haar_ll(_u_plane(strip[..., blue], strip[..., 1], strip[..., red]))
        nbh, nbw = ll.shape[0] // BLOCK, ll.shape[1] // BLOCK
        blocks = ll.reshape(nbh, BLOCK, nbw, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)
        peak = np.abs(blocks[:, 1:]).max(axis=1)  # the largest |coefficient| other than DC
        votes.append((peak % SCALE > 0.5 * SCALE).astype(np.uint8))
    return np.concatenate(votes) if votes else np.zeros(0, np.uint8)


def bits_from_votes(votes: np.ndarray, nbits: int) -> np.ndarray:
    """Majority of the votes for each of ``nbits`` payload bits (block ``k`` votes for bit ``k % nbits``)."""
    if len(votes) < nbits:
        raise ValueError(f"{len(votes)} blocks cannot carry {nbits} bits")
    slot = np.arange(len(votes)) % nbits
    mean = np.bincount(slot, weights=votes, minlength=nbits) / np.bincount(slot, minlength=nbits)
    return (mean * 255 > 127).astype(np.uint8)


def decode(rgb: np.ndarray, nbits: int, order: str = "BGR") -> np.ndarray:
    """The ``nbits`` bits that ``WatermarkDecoder("bits", nbits).decode(bgr, "dwtDct")`` returns for ``rgb[..., ::-1]``
    (order "BGR") or for ``rgb`` itself (order "RGB")."""
    return bits_from_votes(block_votes(rgb, order), nbits)


def watermark_findings(im: Image.Image, data: bytes, problems: list[str]) -> list[Finding]:
    """Findings for each known payload that decodes at ``MIN_ACCURACY`` or better, in either channel order."""
    width, height = im.size
    if width * height < MIN_AREA:
        return []  # too small to have been marked: nothing to say
    if width * height > MAX_PIXELS:
        problems.append(f"watermark not checked: image too large ({width}x{height} pixels)")
        return []
    try:
        # The stored pixels, not EXIF-rotated: the mark lives in the array as the encoder wrote it.
        rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - truncated or exotic pixel data: the other extractors still count
        problems.append(f"watermark not checked: pixels could not be decoded ({type(e).__name__}: {e})")
        return []
    votes = {order: block_votes(rgb, order) for order in CHANNEL_ORDERS}
    out = []
    for payload in PAYLOADS:
        n = len(payload.bits)
        best = None
        for order, v in votes.items():
            if len(v) < n:
                continue
            bits = bits_from_votes(v, n)
            if bits.min() == bits.max():
                continue  # flat U plane (grayscale, solid colour): no signal, whatever the payload's share of zeros
            matched = int((bits == payload.bits).sum())
            if best is None or matched > best[0]:
                best = (matched, order)
        if best is None or best[0] / n < MIN_ACCURACY:
            continue
        matched, order = best
        out.append(
            Finding(
                "watermark",
                "generated",
                "moderate",
                f"{payload.generator} invisible watermark ({matched}/{n} bits)",
                {
                    "generator": payload.generator,
                    "payload": payload.name,
                    "bits_matched": matched,
                    "bits_total": n,
                    "bit_accuracy": round(matched / n, 4),
                    "channel_order": order,
                    "method": "invisible-watermark dwtDct",
                },
            )
        )
    return out
