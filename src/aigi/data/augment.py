"""Training augmentation for a detector fine-tuned end to end (the CNNSpot recipe, Wang et al., CVPR 2020).

CNNSpot's finding: a detector trained with blur and JPEG on both classes keeps working on post-processed images
that one trained on clean images fails on. :class:`ForensicAugment` applies, in this order:

1. geometry: a random crop of the training side at native resolution (no resampling), padded when the image is
   smaller; with ``rescale_prob`` the image is first resized by a factor from ``rescale_range`` (down- and
   up-sizing, as sharing platforms do); a horizontal flip with ``flip_prob``;
2. "hard real" (real photos only, with ``hard_real_prob``): one of the looks of the real photos detectors call
   generated: low light with high-ISO noise, over-exposure, motion blur, defocus blur, very strong JPEG, a small
   image upscaled, a colour cast, haze. A detector that sees these only on real photos cannot use them as evidence
   of generation;
3. post-processing on both classes: Gaussian blur (``blur_prob``, sigma in ``blur_sigma``), Gaussian noise
   (``noise_prob``), JPEG (``jpeg_prob``, quality in ``jpeg_quality``), last, as an upload would be.

Every draw comes from the ``random.Random`` the caller passes (seeded per image and epoch), so a resumed run
augments as an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.ndimage import convolve

from aigi.backbones.base import MAX_IMAGE_SIDE, Preprocess
from aigi.data.transforms import jpeg_roundtrip, random_crop_or_pad, to_tensor

Probability = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Quality = Annotated[int, Field(ge=1, le=100)]
HardReal = Literal[
    "low_light", "overexposed", "motion_blur", "defocus", "strong_jpeg", "upscaled", "colour_cast", "haze"
]


def _as_float(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _as_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _noisy(x: np.ndarray, sigma: float, rng: random.Random) -> np.ndarray:
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, x.shape).astype(np.float32)
    return x + noise


def _convolved(im: Image.Image, kernel: np.ndarray) -> Image.Image:
    x = _as_float(im)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return _as_image(np.stack([convolve(x[..., c], kernel, mode="reflect") for c in range(3)], -1))


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), dtype=np.float32)
    c = (length - 1) / 2
    for t in np.linspace(-c, c, 2 * length):
        k[round(c + t * math.sin(angle)), round(c + t * math.cos(angle))] = 1.0
    return k


def _disk_kernel(radius: float) -> np.ndarray:
    r = math.ceil(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= radius**2).astype(np.float32)


def _low_light(im: Image.Image, rng: random.Random) -> Image.Image:
    x = _as_float(im) * rng.uniform(0.08, 0.45)
    return _as_image(_noisy(x, rng.uniform(0.01, 0.06), rng))  # the sensor's noise, amplified by a high ISO


def _upscaled(im: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.2, 0.6)
    small = im.resize((max(8, round(im.width * factor)), max(8, round(im.height * factor))), Image.BICUBIC)
    return small.resize(im.size, Image.BICUBIC)


def _colour_cast(im: Image.Image, rng: random.Random) -> Image.Image:
    gains = np.array([rng.uniform(0.7, 1.3) for _ in range(3)], dtype=np.float32)
    return _as_image(_as_float(im) * gains)


def _haze(im: Image.Image, rng: random.Random) -> Image.Image:
    t, airlight = rng.uniform(0.35, 0.8), rng.uniform(0.6, 0.95)
    return _as_image(_as_float(im) * t + airlight * (1 - t))


HARD_REAL: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "low_light": _low_light,
    "overexposed": lambda im, rng: _as_image(_as_float(im) * rng.uniform(1.6, 3.5)),
    "motion_blur": lambda im, rng: _convolved(im, _motion_kernel(rng.randint(5, 15), rng.uniform(0, math.pi))),
    "defocus": lambda im, rng: _convolved(im, _disk_kernel(rng.uniform(1.5, 4.0))),
    "strong_jpeg": lambda im, rng: jpeg_roundtrip(im, rng.randint(5, 30)),
    "upscaled": _upscaled,
    "colour_cast": _colour_cast,
    "haze": _haze,
}


class ForensicAugment(BaseModel):
    """The fine-tuned detector's augmentation (see the module docstring); stored in the model's training record."""

    model_config = ConfigDict(extra="forbid")

    crop: int = Field(224, ge=1, le=MAX_IMAGE_SIDE, description="training side (random crop at native resolution)")
    rescale_prob: Probability = 0.2
    rescale_range: tuple[Positive, Positive] = (0.5, 1.5)
    flip_prob: Probability = 0.5
    hard_real_prob: Probability = Field(0.3, description="real photos only")
    hard_real_kinds: tuple[HardReal, ...] = tuple(HARD_REAL)
    blur_prob: Probability = 0.2
    blur_sigma: tuple[Positive, Positive] = (0.1, 3.0)
    noise_prob: Probability = 0.1
    noise_sigma: tuple[Positive, Positive] = (0.005, 0.05)
    jpeg_prob: Probability = 0.5
    jpeg_quality: tuple[Quality, Quality] = (30, 100)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "ForensicAugment":
        for name in ("rescale_range", "blur_sigma", "noise_sigma", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} {(low, high)}: the first value must not exceed the second")
        return self

    @classmethod
    def crops_only(cls, crop: int) -> "ForensicAugment":
        """Native-resolution random crops and flips, nothing else: no rescaling, hard-real looks or post-processing."""
        return cls(crop=crop, rescale_prob=0, hard_real_prob=0, blur_prob=0, noise_prob=0, jpeg_prob=0)

    def apply_pil(self, im: Image.Image, label: int, rng: random.Random) -> Image.Image:
        im = self._geometry(im.convert("RGB"), rng)
        if label == 0 and self.hard_real_kinds and rng.random() < self.hard_real_prob:
            im = HARD_REAL[rng.choice(self.hard_real_kinds)](im, rng)
        if rng.random() < self.blur_prob:
            im = im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*self.blur_sigma)))
        if rng.random() < self.noise_prob:
            im = _as_image(_noisy(_as_float(im), rng.uniform(*self.noise_sigma), rng))
        if rng.random() < self.jpeg_prob:
            im = jpeg_roundtrip(im, rng.randint(*self.jpeg_quality))
        return im

    def _geometry(self, im: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() < self.rescale_prob:
            f = rng.uniform(*self.rescale_range)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC)
        im = random_crop_or_pad(im, self.crop, rng)
        return im.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < self.flip_prob else im

    def apply(self, im: Image.Image, label: int, pre: Preprocess, rng: random.Random) -> torch.Tensor:
        im = self.apply_pil(im, label, rng)
        if im.size != (pre.size, pre.size):
            im = im.resize((pre.size, pre.size), Image.BICUBIC)
        return to_tensor(im, pre)
