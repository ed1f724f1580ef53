"""What images go through before someone checks them: named chains of real processing, after MIRAGE's "in the wild"
view (Xia et al., arXiv 2508.13223) that detectors meet images edited and re-encoded through real pipelines, not one
clean perturbation at a time.

A chain is written ``chain:NAME`` or ``chain:NAME:SEED`` (seed 0 by default) wherever ``--perturb`` is taken. Each
image draws its own settings from a generator seeded by the chain's seed and the image's pixels, so a measurement is
repeatable and independent of the order images are scored in. The ranges are this toolkit's choice, stated here:
MIRAGE's in-the-wild set is human-verified Internet images and multi-model edits, and what could be read of the
paper gives no transmission pipeline to copy.

- ``social``: a platform's re-share. The long side is capped at 1080, 1280 or 2048 pixels (never enlarged), then JPEG
  at quality 70-85; with probability 0.3 it is shared again (cap 720 or 1080, JPEG 70-85).
- ``screenshot``: colour-managed to sRGB when the decoded image still carries its ICC profile (JPEG and WebP; the
  decoder drops a PNG's iCCP chunk and a transparent image's profile), rescaled by a display scale of
  0.5-1.0 (bilinear, as browsers draw), saved losslessly (PNG).
- ``messenger``: a strong downscale (0.35-0.6 of each side, long side at most 1600), then JPEG at quality 60.
- ``editing``: a crop keeping 80-95% of each side; sharpening (unsharp mask) or denoising (median 3), evenly; colour
  saturation, contrast and brightness each scaled by 0.85-1.15; re-saved as JPEG at quality 85-95.
- ``upscale``: a stand-in for AI upscaling, bicubic x2 then an unsharp mask (radius 2, 80-150%), saved as PNG.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageCms, ImageEnhance, ImageFilter

from aigi.data.transforms import jpeg_roundtrip

Chain = Callable[[Image.Image, np.random.Generator], Image.Image]


def image_rng(im: Image.Image, seed: int) -> np.random.Generator:
    """A generator for one image: the chain's seed and the image's pixels, never the order of scoring."""
    return np.random.default_rng([int(seed), zlib.crc32(im.tobytes())])


def rescale(im: Image.Image, factor: float, resample: int = Image.BICUBIC) -> Image.Image:
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return im.resize(size, resample, reducing_gap=None)


def cap_long_side(im: Image.Image, side: int) -> Image.Image:
    """Downscale so that the long side is at most ``side`` (platforms never enlarge)."""
    longest = max(im.size)
    return rescale(im, side / longest) if longest > side else im


def jpeg(im: Image.Image, rng: np.random.Generator, low: int, high: int) -> Image.Image:
    return jpeg_roundtrip(im, int(rng.integers(low, high + 1)))


def to_srgb(im: Image.Image) -> Image.Image:
    """Colour-managed to sRGB when the image carries an ICC profile; unchanged otherwise (or if the profile is bad)."""
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im


def social(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = jpeg(cap_long_side(im, int(rng.choice((1080, 1280, 2048)))), rng, 70, 85)
    if rng.random() < 0.3:
        im = jpeg(cap_long_side(im, int(rng.choice((720, 1080)))), rng, 70, 85)
    return im


def screenshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return rescale(to_srgb(im), float(rng.uniform(0.5, 1.0)), Image.BILINEAR)


def messenger(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = cap_long_side(rescale(im, float(rng.uniform(0.35, 0.6))), 1600)
    return jpeg_roundtrip(im, 60)


def editing(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    keep_w, keep_h = (float(rng.uniform(0.8, 0.95)) for _ in range(2))
    w, h = max(1, round(im.width * keep_w)), max(1, round(im.height * keep_h))
    left, top = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    im = im.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.UnsharpMask(radius=1.5, percent=int(rng.integers(50, 151)), threshold=2))
    else:
        im = im.filter(ImageFilter.MedianFilter(3))
    for enhance in (ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness):
        im = enhance(im).enhance(float(rng.uniform(0.85, 1.15)))
    return jpeg(im, rng, 85, 95)


def upscale(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = rescale(im, 2.0)
    return im.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(80, 151)), threshold=2))


CHAINS: dict[str, Chain] = {
    "social": social,
    "screenshot": screenshot,
    "messenger": messenger,
    "editing": editing,
    "upscale": upscale,
}
# What a chain's last save leaves: the format the evaluation protocol's format alignment sees.
SAVED_AS = {"social": "JPEG", "screenshot": "PNG", "messenger": "JPEG", "editing": "JPEG", "upscale": "PNG"}


def apply_chain(name: str, im: Image.Image, seed: int) -> Image.Image:
    """The chain ``name`` applied to ``im`` (RGB) with this image's settings drawn from ``seed``."""
    rng = image_rng(im, seed)
    return CHAINS[name](im, rng).convert("RGB")
