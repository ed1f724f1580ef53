"""aigi.data.transforms: the evaluation protocol and the training augmentation."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

import aigi.data.transforms as T
from aigi.backbones.base import Preprocess
from aigi.data.transforms import EvalProtocol, TrainAugment

PRE = Preprocess(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(int)


@pytest.fixture
def resize_spy(monkeypatch):
    calls = []
    orig = T.resize_short_side

    def spy(im, short):
        out = orig(im, short)
        calls.append((im.size, short, out.size))
        return out

    monkeypatch.setattr(T, "resize_short_side", spy)
    return calls


# --------------------------------------------------------------------------------------------- EvalProtocol


@pytest.mark.parametrize(
    "size,expected", [((1024, 768), (683, 512)), ((600, 1200), (512, 1024)), ((513, 513), (512, 512))]
)
def test_eval_resizes_short_side_above_512_keeping_aspect(resize_spy, size, expected):
    im = gradient(*size)
    out = EvalProtocol().apply_pil(im, "JPEG", PRE)
    assert out.size == (224, 224)
    assert resize_spy == [(size, 512, expected)]
    w, h = expected
    assert abs(w / h - size[0] / size[1]) < 0.01
    # the output is the centre crop of the resized image
    resized = im.resize(expected, Image.BICUBIC, reducing_gap=None)
    left, top = (w - 224) // 2, (h - 224) // 2
    assert np.array_equal(arr(out), arr(resized.crop((left, top, left + 224, top + 224))))


@pytest.mark.parametrize("size", [(512, 700), (300, 256), (512, 512)])
def test_eval_does_not_resize_at_or_below_512(resize_spy, size):
    im = noise(*size)
    out = EvalProtocol().apply_pil(im, "JPEG", PRE)
    assert resize_spy == []
    w, h = size
    left, top = (w - 224) // 2, (h - 224) // 2
    assert np.array_equal(arr(out), arr(im)[top : top + 224, left : left + 224])


def test_eval_max_short_side_none_never_resizes(resize_spy):
    EvalProtocol(max_short_side=None).apply_pil(noise(800, 900), "PNG", PRE)
    assert resize_spy == []


def test_eval_pads_small_images_with_black_centred():
    im = Image.new("RGB", (100, 60), (255, 255, 255))
    out = arr(EvalProtocol().apply_pil(im, "JPEG", PRE))
    assert out.shape == (224, 224, 3)
    left, top = (224 - 100) // 2, (224 - 60) // 2
    assert (out[top : top + 60, left : left + 100] == 255).all()
    mask = np.ones((224, 224), bool)
    mask[top : top + 60, left : left + 100] = False
    assert (out[mask] == 0).all()
    assert out.sum() == 100 * 60 * 3 * 255


def test_eval_pads_one_side_and_crops_the_other():
    im = gradient(400, 100)  # wider than the crop, shorter than it
    out = arr(EvalProtocol().apply_pil(im, "JPEG", PRE))
    top = (224 - 100) // 2
    left = (400 - 224) // 2
    assert np.array_equal(out[top : top + 100], arr(im)[:, left : left + 224])
    assert (out[:top] == 0).all() and (out[top + 100 :] == 0).all()


def test_eval_format_alignment_only_for_lossless():
    im = noise(300, 300)
    plain = EvalProtocol(format_align=False)
    aligned = EvalProtocol(format_align=True)
    for fmt in ("JPEG", "jpeg"):
        assert np.array_equal(arr(plain.apply_pil(im, fmt, PRE)), arr(aligned.apply_pil(im, fmt, PRE)))
    for fmt in ("PNG", "png", "BMP"):
        a = arr(aligned.apply_pil(im, fmt, PRE))
        p = arr(plain.apply_pil(im, fmt, PRE))
        assert not np.array_equal(a, p)
        # the crop is re-encoded as JPEG at align_quality
        assert np.array_equal(a, arr(T.jpeg_roundtrip(plain.apply_pil(im, fmt, PRE), 96)))


def test_eval_tensor_shape_and_normalisation():
    grey = Image.new("RGB", (300, 260), (128, 128, 128))
    x = EvalProtocol().apply(grey, "JPEG", PRE)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (3, 224, 224)
    assert x.abs().max().item() < 0.01  # (128/255 - 0.5) / 0.5

    white = EvalProtocol().apply(Image.new("RGB", (224, 224), (255, 255, 255)), "JPEG", PRE)
    assert torch.allclose(white, torch.ones_like(white))
    black = EvalProtocol().apply(Image.new("RGB", (224, 224), 0), "JPEG", PRE)
    assert torch.allclose(black, -torch.ones_like(black))


def test_eval_channel_order_and_per_channel_constants():
    pre = Preprocess(size=8, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    x = EvalProtocol(crop=8).apply(Image.new("RGB", (8, 8), (255, 0, 255)), "JPEG", pre)
    assert tuple(x.shape) == (3, 8, 8)
    assert torch.allclose(x[0], torch.full((8, 8), 1.0))
    assert torch.allclose(x[1], torch.full((8, 8), -1.0))
    assert torch.allclose(x[2], torch.full((8, 8), 0.0))


def test_eval_crop_resized_to_backbone_size():
    pre = Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = EvalProtocol(crop=64).apply(noise(100, 100), "JPEG", pre)
    assert tuple(x.shape) == (3, 32, 32)
    x = EvalProtocol(crop=None).apply(noise(100, 100), "JPEG", pre)  # None: the backbone's own size
    assert tuple(x.shape) == (3, 32, 32)


# --------------------------------------------------------------------------------------------- TrainAugment

SMALL = dict(crop=16, rescale_short_range=(16, 40))


@pytest.fixture
def op_spy(monkeypatch):
    """Record which geometric op each call of apply_pil took, from the helpers it calls."""
    calls: list[str] = []
    for name in ("center_crop_or_pad", "random_crop_or_pad", "resize_short_side"):
        orig = getattr(T, name)

        def spy(*a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(*a, **k)

        monkeypatch.setattr(T, name, spy)

    def op_of(fn):
        calls.clear()
        out = fn()
        sig = tuple(calls)
        return out, {
            ("center_crop_or_pad",): "center_crop",
            (): "resize",
            ("random_crop_or_pad",): "random_crop",
            ("resize_short_side", "random_crop_or_pad"): "rescale_crop",
        }[sig]

    return op_of


def test_train_every_op_reachable_and_frequencies_follow_weights(op_spy):
    aug = TrainAugment(**SMALL, jpeg_prob=0.0)
    im = noise(24, 20)  # bigger than the crop: no padding inside the ops
    rng = random.Random(1234)
    counts = Counter()
    n = 400
    for _ in range(n):
        out, op = op_spy(lambda: aug.apply_pil(im, 0, rng))
        assert out.size == (16, 16)
        counts[op] += 1
    assert set(counts) == {"center_crop", "resize", "random_crop", "rescale_crop"}
    for op, w in zip(aug.ops, aug.op_weights):
        assert abs(counts[op] / n - w) < 0.07, (op, counts)


def test_train_op_weights_are_obeyed(op_spy):
    im = noise(24, 20)
    rng = random.Random(0)
    only_resize = TrainAugment(**SMALL, jpeg_prob=0.0, op_weights=(0, 1, 0, 0))
    assert {op_spy(lambda: only_resize.apply_pil(im, 0, rng))[1] for _ in range(30)} == {"resize"}
    no_resize = TrainAugment(**SMALL, jpeg_prob=0.0, op_weights=(1, 0, 1, 1))
    assert "resize" not in {op_spy(lambda: no_resize.apply_pil(im, 0, rng))[1] for _ in range(60)}


def test_train_op_results():
    im = noise(24, 20)
    rng = random.Random(0)
    center = TrainAugment(**SMALL, jpeg_prob=0.0, op_weights=(1, 0, 0, 0)).apply_pil(im, 0, rng)
    assert np.array_equal(arr(center), arr(im)[2:18, 4:20])
    resized = TrainAugment(**SMALL, jpeg_prob=0.0, op_weights=(0, 1, 0, 0)).apply_pil(im, 0, rng)
    assert np.array_equal(arr(resized), arr(im.resize((16, 16), Image.BICUBIC)))
    # a random crop is some 16x16 window of the original pixels
    crop = arr(TrainAugment(**SMALL, jpeg_prob=0.0, op_weights=(0, 0, 1, 0)).apply_pil(im, 0, rng))
    a = arr(im)
    assert any(np.array_equal(crop, a[t : t + 16, c : c + 16]) for t in range(5) for c in range(9))


@pytest.mark.parametrize("size", [(10, 6), (16, 40), (24, 20), (200, 90)])
def test_train_output_always_crop_sized(size):
    aug = TrainAugment(**SMALL)
    rng = random.Random(7)
    im = noise(*size)
    for label in (0, 1):
        for _ in range(25):
            out = aug.apply_pil(im, label, rng)
            assert out.size == (16, 16) and out.mode == "RGB"


def test_train_tensor_shape():
    pre = Preprocess(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = TrainAugment(**SMALL).apply(noise(30, 30), 1, pre, random.Random(3))
    assert tuple(x.shape) == (3, 16, 16) and x.dtype == torch.float32
    pre32 = Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert tuple(TrainAugment(**SMALL).apply(noise(30, 30), 0, pre32, random.Random(3)).shape) == (3, 32, 32)


@pytest.fixture
def jpeg_spy(monkeypatch):
    qualities: list[int] = []
    orig = T.jpeg_roundtrip

    def spy(im, quality):
        qualities.append(int(quality))
        return orig(im, quality)

    monkeypatch.setattr(T, "jpeg_roundtrip", spy)
    return qualities


def test_generated_images_get_q96_jpeg_first(jpeg_spy):
    im = noise(24, 20)
    rng = random.Random(5)
    no_final = TrainAugment(**SMALL, jpeg_prob=0.0)
    no_final.apply_pil(im, 1, rng)
    assert jpeg_spy == [96]
    jpeg_spy.clear()
    no_final.apply_pil(im, 0, rng)
    assert jpeg_spy == []  # reals are not pre-JPEG'd

    always = TrainAugment(**SMALL, jpeg_prob=1.0)
    for _ in range(40):
        jpeg_spy.clear()
        always.apply_pil(im, 1, rng)
        assert len(jpeg_spy) == 2 and jpeg_spy[0] == 96 and 50 <= jpeg_spy[1] <= 99
        jpeg_spy.clear()
        always.apply_pil(im, 0, rng)
        assert len(jpeg_spy) == 1 and 50 <= jpeg_spy[0] <= 99

    jpeg_spy.clear()
    TrainAugment(**SMALL, jpeg_prob=0.0, fake_prejpeg_quality=None).apply_pil(im, 1, rng)
    assert jpeg_spy == []


def test_final_jpeg_quality_range_inclusive(jpeg_spy):
    aug = TrainAugment(**SMALL, jpeg_quality_range=(70, 72), fake_prejpeg_quality=None)
    rng = random.Random(11)
    for _ in range(120):
        aug.apply_pil(noise(20, 20), 0, rng)
    assert set(jpeg_spy) == {70, 71, 72}


def test_train_deterministic_for_a_seed():
    aug = TrainAugment(**SMALL)
    im = noise(40, 30)

    def run(seed):
        rng = random.Random(seed)
        return [arr(aug.apply_pil(im, i % 2, rng)) for i in range(20)]

    a, b, c = run(42), run(42), run(43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "settings",
    [dict(crop=-5), dict(crop=60000), dict(max_short_side=-5), dict(max_short_side=0), dict(format_align="no")],
)
def test_eval_protocol_refuses_sizes_out_of_bounds_and_loose_booleans(settings):
    with pytest.raises(ValidationError):
        EvalProtocol(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        dict(crop=0),
        dict(crop=60000),
        dict(jpeg_quality_range=(99, 50)),
        dict(jpeg_quality_range=(0, 50)),
        dict(rescale_short_range=(1024, 224)),
        dict(fake_prejpeg_quality=101),
        dict(op_weights=(1.0, 1.0)),
        dict(op_weights=(0.0, 0.0, 0.0, 0.0)),
        dict(op_weights=(-1.0, 1.0, 1.0, 1.0)),
    ],
)
def test_train_augment_refuses_settings_that_would_fail_per_image(settings):
    with pytest.raises(ValidationError):
        TrainAugment(**settings)
