"""The protocol transforms: one implementation of evaluation and training preprocessing, used everywhere.

Evaluation (as MIRROR evaluates): a short side above ``max_short_side`` resized down to it (bicubic,
antialiased), a centre crop (padded with zeros when the image is smaller), optional format alignment (a crop from
a lossless file re-encoded as JPEG q96), then the backbone's normalisation. A protocol may look at more than the
centre (``views``): the centre and the four corners, or a grid of native-resolution tiles covering the whole image;
optionally each view's horizontal mirror too (``flip``). Each view is scored and the views' logits are combined into
the image's (``combine``). With ``resample=False`` (the artifact detectors, which read the pixels as the generator left
them) nothing is ever resized: no short-side resize, a grid never downscaled, crops of exactly the backbone's size.

Training (as MIRROR trains): one geometric op drawn with weights 0.3/0.1/0.3/0.3 (centre crop / direct resize /
random crop / rescale so the short side lies in [224, 1024] then random crop); generated crops then JPEG q96 (so
the JPEG grid is not a label); then every image JPEG at a random quality in [50, 99]; then normalisation.
"""

from __future__ import annotations

import io
import math
import random
import zlib
from fractions import Fraction
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

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


Box = tuple[int, int, int, int]  # (left, top, right, bottom) in an image's pixels; PIL's crop pads outside with zeros


def _centred(length: int, tile: int) -> int:
    """Where a tile centred on an axis of ``length`` pixels starts; negative when the axis is shorter than the tile
    (it is then padded with zeros on both sides, the image centred)."""
    return (length - tile) // 2 if length >= tile else -((tile - length) // 2)


def _spread(length: int, tile: int, n: int) -> list[int]:
    """Starts of ``n`` tiles spread evenly over an axis, the first at 0 and the last at ``length - tile``: with
    ``n >= length / tile`` neighbours overlap or touch, so together they cover the axis. One tile is centred."""
    if n == 1 or length <= tile:
        return [_centred(length, tile)]
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _boxes(xs: list[int], ys: list[int], tile: int) -> list[Box]:
    return [(x, y, x + tile, y + tile) for y in ys for x in xs]


def center_box(width: int, height: int, tile: int) -> Box:
    return _boxes([_centred(width, tile)], [_centred(height, tile)], tile)[0]


def corner_boxes(width: int, height: int, tile: int) -> list[Box]:
    """Top-left, top-right, bottom-left, bottom-right (an axis shorter than the tile: centred and padded)."""
    return _boxes(_spread(width, tile, 2), _spread(height, tile, 2), tile)


def grid_boxes(width: int, height: int, tile: int) -> list[Box]:
    """``ceil(height / tile)`` rows by ``ceil(width / tile)`` columns of tiles, row by row: every pixel is in one."""
    return _boxes(_spread(width, tile, math.ceil(width / tile)), _spread(height, tile, math.ceil(height / tile)), tile)


def native_grid_boxes(width: int, height: int, tile: int, max_tiles: int) -> list[Box]:
    """The grid of :func:`grid_boxes` when it has at most ``max_tiles`` tiles; else, at native resolution, the
    ``cols x rows <= max_tiles`` tiles (the tiles' aspect closest to the image's) spread evenly over it: the gaps
    between them are not seen, but no pixel is resampled."""
    cols, rows = math.ceil(width / tile), math.ceil(height / tile)
    if cols * rows > max_tiles:
        cols, rows = min(
            ((c, max_tiles // c) for c in range(1, max_tiles + 1)),
            key=lambda cr: (abs(math.log(cr[0] * height / (cr[1] * width))), -cr[0] * cr[1]),
        )
        cols, rows = min(cols, math.ceil(width / tile)), min(rows, math.ceil(height / tile))
    return _boxes(_spread(width, tile, cols), _spread(height, tile, rows), tile)


def grid_size(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """The size to tile an image at: its own when a grid of at most ``max_tiles`` covers it, else the largest
    downscale (aspect kept) that a grid of ``cols x rows <= max_tiles`` tiles covers."""
    if math.ceil(width / tile) * math.ceil(height / tile) <= max_tiles:
        return width, height
    scale = max(
        min(Fraction(cols * tile, width), Fraction(max_tiles // cols * tile, height))
        for cols in range(1, max_tiles + 1)
    )
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def center_crop_or_pad(im: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` square; an image smaller than it is padded with zeros (black), centred."""
    return im.crop(center_box(*im.size, size))


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


Views = Literal["center", "center_corners", "grid"]
Combine = Literal["mean", "max", "topk"]
VIEW_FIELDS = ("views", "max_tiles", "flip", "combine", "top_k")
SCORING_ONLY = frozenset({"combine", "top_k"})  # how views' logits are combined: not part of what a view's features are


class EvalProtocol(BaseModel):
    """Evaluation preprocessing; stored in every model's config.json.

    The view fields (``views``, ``max_tiles``, ``flip``, ``combine``, ``top_k``) came later: while all of them are at
    their defaults (one centre crop) they are left out of the dump, so a default protocol's config.json and feature
    cache key are the ones written before they existed (cached features stay valid; older aigi reads the config)."""

    model_config = ConfigDict(extra="forbid")

    max_short_side: int | None = Field(
        512, ge=1, le=1 << 16, description="resize when the short side is larger; None: never"
    )
    crop: int | None = Field(
        224, ge=1, le=MAX_IMAGE_SIDE, description="crop and tile side (padded when smaller); None: the backbone's size"
    )
    format_align: bool = Field(
        False, strict=True, description="re-encode lossless inputs (PNG, BMP, ...) as JPEG first"
    )
    align_quality: int = Field(96, ge=1, le=100)
    views: Views = Field(
        "center",
        description="center: one centre crop; center_corners: it and the four corner crops; grid: crop-sized tiles "
        "covering the whole image at native resolution (see max_tiles)",
    )
    max_tiles: int = Field(
        4, ge=1, le=256, description="grid: at most this many tiles; a larger image is downscaled until they cover it"
    )
    flip: bool = Field(False, strict=True, description="also score each view's horizontal mirror")
    combine: Combine = Field("mean", description="the image's logit from its views': mean, max or mean of the top_k")
    top_k: int = Field(2, ge=1, le=256, description="combine=topk: how many of the highest view logits are averaged")
    resample: bool = Field(
        True,
        strict=True,
        description="false: never resize (max_short_side must be None; a grid that would need more than max_tiles "
        "tiles is spread evenly over the image at native resolution instead of downscaled)",
    )

    @model_serializer(mode="wrap")
    def _legacy_when_default(self, handler) -> dict:
        """Leave the view fields out while all are at their defaults, and ``resample`` while true (see the class
        docstring)."""
        data = handler(self)
        defaults = {k: EvalProtocol.model_fields[k].default for k in VIEW_FIELDS if k in data}
        if all(data[k] == v for k, v in defaults.items()):
            for k in defaults:
                del data[k]
        if data.get("resample") is True:
            del data["resample"]
        return data

    @model_validator(mode="after")
    def _no_resize_when_native(self) -> "EvalProtocol":
        if not self.resample and self.max_short_side is not None:
            raise ValueError("resample=false never resizes: max_short_side must be null")
        return self

    @property
    def multi_view(self) -> bool:
        """Whether an image gives more than one view: ``apply`` then returns [views, 3, S, S]."""
        return self.views != "center" or self.flip

    def replace(self, **changes) -> "EvalProtocol":
        """A copy with ``changes``, validated (a ``ValidationError`` names what is wrong)."""
        return EvalProtocol.model_validate({**self.model_dump(), **changes})

    def single_view(self) -> "EvalProtocol":
        """This protocol with one centre crop: what training extracts features through (one row per image)."""
        return self.replace(**{k: EvalProtocol.model_fields[k].default for k in VIEW_FIELDS})

    def describe(self) -> str:
        """The views in words, for tables and JSON: e.g. ``grid of <= 4 tiles + mirror, mean logit``."""
        what = {"center": "centre crop", "center_corners": "centre + 4 corners"}.get(
            self.views, f"grid of <= {self.max_tiles} tiles"
        )
        how = {"mean": "mean logit", "max": "max logit"}.get(self.combine, f"mean of top-{self.top_k} logits")
        return what + (" + mirror" if self.flip else "") + (f", {how}" if self.multi_view else "")

    def combine_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """One image's logit from its views' logits [k]."""
        if self.combine == "max":
            return logits.max()
        if self.combine == "topk":
            return logits.topk(min(self.top_k, len(logits))).values.mean()
        return logits.mean()

    def apply(self, im: Image.Image, fmt: str, pre: Preprocess) -> torch.Tensor:
        """Pixels [3, S, S]; a multi-view protocol's [views, 3, S, S]."""
        if not self.multi_view:
            return to_tensor(self.apply_pil(im, fmt, pre), pre)
        return torch.stack([to_tensor(v, pre) for v in self.view_images(im, fmt, pre)])

    def apply_pil(self, im: Image.Image, fmt: str, pre: Preprocess) -> Image.Image:
        """The first view: the centre crop, or with ``views="grid"`` the top-left tile."""
        return self.view_images(im, fmt, pre)[0]

    def view_images(self, im: Image.Image, fmt: str, pre: Preprocess) -> list[Image.Image]:
        """Every view of an image, each as the backbone sees it (the mirrors after the views they mirror).

        Tiles of a grid are cut at native resolution; the only resampling besides ``max_short_side`` is when more
        than ``max_tiles`` would be needed: the image is then downscaled just enough for that many to cover it."""
        if self.max_short_side and min(im.size) > self.max_short_side:
            im = resize_short_side(im, self.max_short_side)
        tile = self.crop or pre.size
        if self.views == "grid" and self.resample:
            size = grid_size(*im.size, tile, self.max_tiles)
            im = im if size == im.size else im.resize(size, Image.BICUBIC, reducing_gap=None)
        crops = [im.crop(box) for box in self.boxes(*im.size, tile)]
        if self.flip:
            crops += [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
        return [self._finish(c, fmt, pre) for c in crops]

    def boxes(self, width: int, height: int, tile: int) -> list[Box]:
        """The views' boxes in an image of ``width x height`` (after any resizing), first the centre's or the grid's."""
        if self.views == "grid":
            return (
                grid_boxes(width, height, tile)
                if self.resample
                else native_grid_boxes(width, height, tile, self.max_tiles)
            )
        centre = [center_box(width, height, tile)]
        return centre + corner_boxes(width, height, tile) if self.views == "center_corners" else centre

    def _finish(self, crop: Image.Image, fmt: str, pre: Preprocess) -> Image.Image:
        if self.format_align and fmt.upper() in LOSSLESS_FORMATS:  # on the crop, as MIRROR's evaluation does
            crop = jpeg_roundtrip(crop, self.align_quality)
        if crop.size != (pre.size, pre.size):
            if not self.resample:
                raise ValueError(f"resample=false: a {crop.size[0]}-pixel crop would be resized to {pre.size}")
            crop = crop.resize((pre.size, pre.size), Image.BICUBIC)
        return crop


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
