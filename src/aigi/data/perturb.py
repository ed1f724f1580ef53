"""Real-world post-processing applied to an image before a model sees it: for robustness measurements.

A :class:`Perturbation` is a kind and a level, written ``kind:level`` on the command line:

- ``jpeg:Q``  re-encode as JPEG at quality Q (1-100);
- ``blur:S``  Gaussian blur with standard deviation S pixels (PIL's ``GaussianBlur``);
- ``resize:F`` rescale by the factor F (0.05-4; bicubic, antialiased when shrinking), as a platform's downscaling
  would (``resize:0.5`` halves each side);
- ``noise:S`` additive Gaussian noise with standard deviation S on the [0, 1] pixel scale, clipped; the noise
  is seeded from the image's pixels, so a measurement is repeatable;
- ``chain:NAME[:SEED]`` a named chain of real processing (``social``, ``screenshot``, ``messenger``, ``editing``,
  ``upscale``; see :mod:`aigi.data.chains`), each image's settings drawn from the seed (0 by default) and its pixels;
- ``none``    the clean image (the reference level of a sweep).

It is applied to the decoded image, before the model's evaluation protocol (resize, crop, format alignment), as a
platform's re-encoding or a camera's blur would be: a blur's sigma is in the source image's pixels. :class:`Perturbed` wraps a protocol with it, and has the
protocol's ``apply(im, fmt, pre)``, so :func:`aigi.engine.features.extract` runs it unchanged.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from aigi.backbones.base import Preprocess
from aigi.data.chains import CHAINS, SAVED_AS, apply_chain
from aigi.data.transforms import jpeg_roundtrip
from aigi.errors import ConfigError

Kind = Literal["none", "jpeg", "blur", "noise", "resize", "chain"]
KINDS = ("jpeg", "blur", "noise", "resize", "chain")
RESIZE_RANGE = (0.05, 4.0)


class PerturbationError(ConfigError):
    pass


class Perturbation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "none"
    level: float = 0.0  # a chain's seed
    chain: str | None = None  # with kind "chain": its name

    @model_validator(mode="after")
    def _check(self) -> "Perturbation":
        k, v = self.kind, self.level
        if k == "jpeg" and not (1 <= v <= 100 and float(v).is_integer()):
            raise PerturbationError(f"jpeg quality must be a whole number from 1 to 100, got {v:g}")
        if k in ("blur", "noise") and not (0 <= v <= (50 if k == "blur" else 1)):
            raise PerturbationError(f"{k} sigma must be between 0 and {50 if k == 'blur' else 1}, got {v:g}")
        if k == "resize" and not RESIZE_RANGE[0] <= v <= RESIZE_RANGE[1]:
            raise PerturbationError(f"resize factor must be between {RESIZE_RANGE[0]} and {RESIZE_RANGE[1]}, got {v:g}")
        if k == "chain" and self.chain not in CHAINS:
            raise PerturbationError(f"unknown chain {self.chain!r}: expected one of {', '.join(CHAINS)}")
        if k == "chain" and not (v >= 0 and float(v).is_integer()):
            raise PerturbationError(f"a chain's seed must be a whole number from 0, got {v:g}")
        return self

    @property
    def name(self) -> str:
        if self.kind == "chain":
            return f"chain:{self.chain}:{self.level:g}"
        return "none" if self.kind == "none" else f"{self.kind}:{self.level:g}"

    @property
    def saved_as(self) -> str | None:
        """The file format the perturbed image is left in (what format alignment sees); None: the file's own."""
        if self.kind == "chain":
            return SAVED_AS[self.chain]
        return {"jpeg": "JPEG", "blur": "PNG", "noise": "PNG", "resize": "PNG"}.get(self.kind)

    def apply(self, im: Image.Image) -> Image.Image:
        im = im.convert("RGB")
        if self.kind == "jpeg":
            return jpeg_roundtrip(im, int(self.level))
        if self.kind == "blur" and self.level > 0:
            return im.filter(ImageFilter.GaussianBlur(radius=self.level))
        if self.kind == "resize":
            size = (max(1, round(im.width * self.level)), max(1, round(im.height * self.level)))
            return im.resize(size, Image.BICUBIC, reducing_gap=None)
        if self.kind == "chain":
            return apply_chain(self.chain, im, int(self.level))
        if self.kind == "noise" and self.level > 0:
            x = np.asarray(im, dtype=np.float32) / 255.0
            rng = np.random.default_rng(zlib.crc32(x.tobytes()))
            x = np.clip(x + rng.normal(0.0, self.level, x.shape).astype(np.float32), 0.0, 1.0)
            return Image.fromarray((x * 255.0 + 0.5).astype(np.uint8))
        return im


def parse_perturbation(text: str) -> Perturbation:
    """``"jpeg:75"`` -> ``Perturbation(kind="jpeg", level=75)``; ``"none"`` -> the clean image."""
    text = text.strip().lower()
    if text in ("none", "clean"):
        return Perturbation()
    kind, sep, level = text.partition(":")
    if not sep or kind not in KINDS:
        raise PerturbationError(
            f"{text!r}: expected none, jpeg:QUALITY, blur:SIGMA, noise:SIGMA, resize:FACTOR or chain:NAME[:SEED] "
            f"(e.g. jpeg:75, blur:2, noise:0.1, resize:0.5, chain:social; chains: {', '.join(CHAINS)})"
        )
    if kind == "chain":
        name, _, seed = level.partition(":")
        return _made(text, kind="chain", chain=name, level=_number(text, seed or "0", whole=True))
    return _made(text, kind=kind, level=_number(text, level))


def _number(text: str, value: str, whole: bool = False) -> float:
    try:
        return int(value) if whole else float(value)
    except ValueError:
        raise PerturbationError(f"{text!r}: {value!r} is not a {'whole number' if whole else 'number'}") from None


def _made(text: str, **fields) -> Perturbation:
    try:
        return Perturbation(**fields)
    except ValidationError as e:
        raise PerturbationError(f"{text!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


# The sweep of MDMF's robustness study: JPEG quality 100 -> 50, blur sigma 0 -> 5, noise sigma 0 -> 0.25.
DEFAULT_SWEEP = [
    "none",
    "jpeg:100",
    "jpeg:90",
    "jpeg:75",
    "jpeg:50",
    "blur:1",
    "blur:2",
    "blur:3",
    "blur:5",
    "noise:0.05",
    "noise:0.1",
    "noise:0.25",
]
# Every named chain once (seed 0): ``aigi robustness -p chains`` (with the clean images as the reference).
CHAIN_SWEEP = ["none", *(f"chain:{name}" for name in CHAINS)]


class Perturbed:
    """An evaluation protocol with a perturbation applied to the decoded image first."""

    def __init__(self, protocol, perturbation: Perturbation) -> None:
        self.protocol, self.perturbation = protocol, perturbation

    @property
    def multi_view(self) -> bool:
        return bool(getattr(self.protocol, "multi_view", False))

    def apply(self, im: Image.Image, fmt: str, pre: Preprocess):
        # What the protocol's format alignment sees: a JPEG after JPEG, whatever the file was; freshly computed
        # (lossless) pixels after blur or noise, so every image, JPEG or PNG at the start, is aligned the same way and
        # the perturbation cannot bring back a per-class file-format trace.
        fmt = self.perturbation.saved_as or fmt
        return self.protocol.apply(self.perturbation.apply(im), fmt, pre)
