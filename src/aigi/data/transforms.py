"""The protocol transforms: one implementation of evaluation and training preprocessing, used everywhere.

Evaluation (as MIRROR evaluates): a short side above ``max_short_side`` resized down to it (bicubic,
antialiased), a centre crop (padded with zeros when the image is smaller), optional format alignment (a crop from
a lossless file re-encoded as JPEG q96), then the backbone's normalisation.

Training (as MIRROR trains): one geometric op drawn with weights 0.3/0.1/0.3/0.3 (centre crop / direct resize /
random crop / rescale so the short side lies in [224, 1024] then random crop); generated crops then JPEG q96 (so
the JPEG grid is not a label); then every image JPEG at a random quality in [50, 99]; then normalisation.
"""

from __future__ import annotations

import io
import random
import zlib
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aigi.backbones.base import MAX_IMAGE_SIDE, Preprocess
from aigi.data.decode import LOSSLESS_FORMATS


def jpeg_roundtrip(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf, formats=("JPEG",))  # our own bytes, but PIL never picks a decoder by sniffing here either
    out.load()
    return out.convert("RGB")


def resize_short_side(im: Image.Image, short: int) -> Image.Image:
    w, h = im.size
    scale = short / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im.resize(size, Image.BICUBIC, reducing_gap=None)  # PIL's bicubic filter is antialiased when shrinking


def center_crop_or_pad(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if w < size or h < size:  # pad with zeros (black), image centred
        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(im, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        im, (w, h) = canvas, canvas.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def random_crop_or_pad(im: Image.Image, size: int, rng: random.Random) -> Image.Image:
    w, h = im.size
    if w < size or h < size:
        return center_crop_or_pad(im, size)
    left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return im.crop((left, top, left + size, top + size))


def to_tensor(im: Image.Image, pre: Preprocess) -> torch.Tensor:
    x = torch.from_numpy(np.array(im, dtype=np.float32, copy=True)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(pre.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


class EvalProtocol(BaseModel):
    """Evaluation preprocessing; stored in every model's config.json."""

    model_config = ConfigDict(extra="forbid")

    max_short_side: int | None = Field(
        512, ge=1, le=1 << 16, description="resize when the short side is larger; None: never"
    )
    crop: int | None = Field(
        224, ge=1, le=MAX_IMAGE_SIDE, description="centre crop side (padded when smaller); None: the backbone's size"
    )
    format_align: bool = Field(
        False, strict=True, description="re-encode lossless inputs (PNG, BMP, ...) as JPEG first"
    )
    align_quality: int = Field(96, ge=1, le=100)

    def apply(self, im: Image.Image, fmt: str, pre: Preprocess) -> torch.Tensor:
        return to_tensor(self.apply_pil(im, fmt, pre), pre)

    def apply_pil(self, im: Image.Image, fmt: str, pre: Preprocess) -> Image.Image:
        if self.max_short_side and min(im.size) > self.max_short_side:
            im = resize_short_side(im, self.max_short_side)
        im = center_crop_or_pad(im, self.crop or pre.size)
        if self.format_align and fmt.upper() in LOSSLESS_FORMATS:  # on the crop, as MIRROR's evaluation does
            im = jpeg_roundtrip(im, self.align_quality)
        if im.size != (pre.size, pre.size):
            im = im.resize((pre.size, pre.size), Image.BICUBIC)
        return im


GeometricOp = Literal["center_crop", "resize", "random_crop", "rescale_crop"]
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
JpegQuality = Annotated[int, Field(ge=1, le=100)]


class TrainAugment(BaseModel):
    """Training augmentation (MIRROR's Phase 2 recipe); stored in the training section of a model's config."""

    model_config = ConfigDict(extra="forbid")

    crop: int = Field(224, ge=1, le=MAX_IMAGE_SIDE)
    ops: tuple[GeometricOp, ...] = Field(("center_crop", "resize", "random_crop", "rescale_crop"), min_length=1)
    op_weights: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] = (0.3, 0.1, 0.3, 0.3)
    rescale_short_range: tuple[ImageSide, ImageSide] = (224, 1024)
    fake_prejpeg_quality: JpegQuality | None = Field(96, description="generated crops are first JPEG'd at this quality")
    jpeg_prob: float = Field(1.0, ge=0, le=1)
    jpeg_quality_range: tuple[JpegQuality, JpegQuality] = Field((50, 99), description="inclusive")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainAugment":
        if len(self.op_weights) != len(self.ops) or not sum(self.op_weights) > 0:
            raise ValueError(
                f"op_weights {self.op_weights} must give each of the {len(self.ops)} ops a weight, not all 0"
            )
        for name in ("rescale_short_range", "jpeg_quality_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} {(low, high)}: the first value must not exceed the second")
        return self

    def apply_pil(self, im: Image.Image, label: int, rng: random.Random) -> Image.Image:
        op = rng.choices(self.ops, weights=self.op_weights)[0]
        if op == "center_crop":
            im = center_crop_or_pad(im, self.crop)
        elif op == "resize":
            im = im.resize((self.crop, self.crop), Image.BICUBIC)
        elif op == "random_crop":
            if min(im.size) < self.crop:
                im = resize_short_side(im, self.crop)
            im = random_crop_or_pad(im, self.crop, rng)
        else:
            im = random_crop_or_pad(resize_short_side(im, rng.randint(*self.rescale_short_range)), self.crop, rng)
        if label == 1 and self.fake_prejpeg_quality:
            im = jpeg_roundtrip(im, self.fake_prejpeg_quality)
        if rng.random() < self.jpeg_prob:
            im = jpeg_roundtrip(im, rng.randint(*self.jpeg_quality_range))
        return im

    def apply(self, im: Image.Image, label: int, pre: Preprocess, rng: random.Random) -> torch.Tensor:
        im = self.apply_pil(im, label, rng)
        if im.size != (pre.size, pre.size):
            im = im.resize((pre.size, pre.size), Image.BICUBIC)
        return to_tensor(im, pre)


class AugmentedView(BaseModel):
    """A fixed augmented view of an image: ``augment`` drawn with a seed from the pixels and the view number.

    Used where a frozen backbone's tokens of augmented crops are cached (MIRROR Phase 1): the same image and view
    always give the same crop and JPEG quality, so a cached entry stays valid. It has ``apply(im, fmt, pre)``
    like :class:`EvalProtocol`, so :func:`aigi.engine.features.extract` can run it."""

    model_config = ConfigDict(extra="forbid")

    augment: TrainAugment
    view: int = 1
    seed: int = 0
    label: int = 0

    def apply(self, im: Image.Image, fmt: str, pre: Preprocess) -> torch.Tensor:
        digest = zlib.crc32(im.tobytes())
        rng = random.Random(f"{self.seed}/{self.view}/{digest}")
        return self.augment.apply(im, self.label, pre, rng)


def phase1_augment() -> TrainAugment:
    """MIRROR Phase 1's augmentation: the same crop policy, then JPEG at a quality in [50, 100]; no q96 step."""
    return TrainAugment(fake_prejpeg_quality=None, jpeg_quality_range=(50, 100))
