"""The fine-tuned CNN detector (CNNSpot recipe): what it trains and stores, its patch map, its augmentation, the
balanced epoch draw, per-group learning rates, and a resumed run matching an uninterrupted one."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import EFFNET_SPEC, SMALL_PROTOCOL

from aigi.checkpoints import ModelConfig, ModelLoadError, build_model, load_model, save_model
from aigi.data.augment import HARD_REAL, ForensicAugment
from aigi.data.folders import discover
from aigi.detectors.cnnspot import CNNSpotRecipe
from aigi.engine.train_images import BalancedEpochDraw, param_groups
from aigi.engine.trainer import LOG_NAME, balanced_weights, train

NO_AUGMENT = dict(rescale_prob=0, flip_prob=0, hard_real_prob=0, blur_prob=0, noise_prob=0, jpeg_prob=0)


def _model(**params):
    torch.manual_seed(0)
    return build_model(ModelConfig(detector="cnnspot", params=params, backbone=EFFNET_SPEC, protocol=SMALL_PROTOCOL))


def test_train_from_freezes_what_comes_before_and_the_folder_stores_only_what_is_trained(tmp_path):
    whole, partial = _model(), _model(train_from="net.stages.4")
    names = [n for n, _ in partial.detector.backbone.named_parameters()]
    first = next(i for i, n in enumerate(names) if n.startswith("net.stages.4"))
    flags = [p.requires_grad for p in partial.detector.backbone.parameters()]
    assert not any(flags[:first]) and all(flags[first:])
    assert all(p.requires_grad for p in whole.detector.backbone.parameters())
    stored = set(partial.detector.trainable_state_dict())
    assert "head.weight" in stored and not any(k.startswith("backbone.net.stages.3.") for k in stored)
    assert any(k.startswith("backbone.net.stages.4.") and k.endswith("running_mean") for k in stored)
    assert len(stored) < len(whole.detector.trainable_state_dict())
    for p in partial.detector.parameters():
        if p.requires_grad:
            p.data.add_(0.01)
    save_model(partial, tmp_path / "m")
    torch.manual_seed(0)  # the tiny backbone is random, not pretrained: its frozen part is rebuilt from the seed
    loaded = load_model(tmp_path / "m")
    x = torch.randn(2, 3, 64, 64)
    partial.detector.eval(), loaded.detector.eval()
    with torch.no_grad():
        assert torch.equal(partial.detector(x).logit, loaded.detector(x).logit)


def test_an_unknown_train_from_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="train_from 'net.nowhere' names no backbone parameter"):
        _model(train_from="net.nowhere")


def test_train_mode_leaves_the_frozen_batch_norms_still():
    det = _model(train_from="net.stages.4").detector.train()
    frozen_bn = det.backbone.net.stages[2][0].body[1]
    trained_bn = det.backbone.net.stages[4][0].body[1]  # the tiny backbone stops at stage 4
    assert not frozen_bn.training and trained_bn.training
    before = frozen_bn.running_mean.clone()
    det(torch.randn(4, 3, 64, 64) * 3)
    assert torch.equal(frozen_bn.running_mean, before)
    assert not torch.equal(trained_bn.running_mean, torch.zeros_like(trained_bn.running_mean))


def test_the_patch_map_averages_to_the_logit_on_efficientnet():
    det = _model().detector.eval()
    torch.nn.init.normal_(det.head.weight, std=0.1)
    with torch.no_grad():
        out = det(torch.randn(3, 3, 64, 64))
    assert out.patch_map.shape == (3, *det.patch_grid())
    assert torch.allclose(out.patch_map.mean((1, 2)), out.logit, atol=1e-5)


def _photo(seed: int = 0, size=(96, 80)) -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a)


def test_hard_real_looks_go_to_real_photos_only_and_post_processing_to_both():
    im = _photo()
    hard = ForensicAugment(crop=64, **{**NO_AUGMENT, "hard_real_prob": 1.0})
    plain = ForensicAugment(crop=64, **NO_AUGMENT)
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    assert same(hard.apply_pil(im, 1, random.Random(3)), plain.apply_pil(im, 1, random.Random(3)))
    assert not same(hard.apply_pil(im, 0, random.Random(3)), plain.apply_pil(im, 0, random.Random(3)))
    jpeg = ForensicAugment(crop=64, **{**NO_AUGMENT, "jpeg_prob": 1.0})
    for label in (0, 1):
        assert not same(jpeg.apply_pil(im, label, random.Random(3)), plain.apply_pil(im, label, random.Random(3)))
    assert same(hard.apply_pil(im, 0, random.Random(5)), hard.apply_pil(im, 0, random.Random(5)))  # seeded


@pytest.mark.parametrize("kind", sorted(HARD_REAL))
def test_every_hard_real_look_keeps_the_size_and_changes_the_pixels(kind):
    im = _photo(1, (64, 64))
    out = HARD_REAL[kind](im, random.Random(0))
    assert out.size == im.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(im))


def test_a_crop_at_native_resolution_is_a_window_of_the_image():
    im = _photo(2, (100, 90))
    out = np.asarray(ForensicAugment(crop=64, **NO_AUGMENT).apply_pil(im, 1, random.Random(0)))
    src = np.asarray(im)
    assert any(
        np.array_equal(src[t : t + 64, left : left + 64], out) for t in range(27) for left in range(37)
    )  # no resampling


def test_the_balanced_draw_gives_every_subset_of_a_label_the_same_share(tmp_path):
    rows = ["path,label,subset"]
    for subset, n in (("big", 60), ("small", 6)):
        for i in range(n):
            _photo(i, (8, 8)).save(tmp_path / f"{subset}{i}.png")
            rows.append(f"{subset}{i}.png,fake,{subset}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    image_set = discover(tmp_path / "m.csv")
    draw = BalancedEpochDraw(balanced_weights(image_set, list(range(66))), seed=0)
    counts = Counter()
    for epoch in range(30):
        draw.use_epoch(epoch)
        counts.update(image_set.samples[i].path.stem.rstrip("0123456789") for i in draw)
    assert abs(counts["big"] / counts["small"] - 1) < 0.15
    draw.use_epoch(3)
    again = list(draw)
    assert again == list(draw) and again != list(BalancedEpochDraw(draw.weights.numpy(), seed=1))


def test_a_group_with_an_lr_scale_follows_the_schedule_at_that_multiple(labelled_images, tmp_path):
    det = _model().detector
    groups = param_groups(det, 0.1, {"head.": 10.0})
    head = [g for g in groups if g.get("lr_scale") == 10.0]
    assert head and {id(p) for g in head for p in g["params"]} == {id(det.head.weight), id(det.head.bias)}
    assert [g["weight_decay"] for g in param_groups(det, 0.1)] == [0.1, 0.0]  # the old two-group layout
    settings = _settings(labelled_images, tmp_path / "run", epochs=1, lr=1e-3, head_lr_scale=4.0)
    train("cnnspot", settings, progress=False)
    state = json.loads((tmp_path / "run" / "train_state" / "train_state.json").read_text())
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in state["param_groups"]}
    assert lrs[4.0] == pytest.approx(4.0 * lrs[1.0])


def _settings(data, out, **extra) -> dict:
    return {
        "data": data,
        "out": out,
        "spec": EFFNET_SPEC.model_dump(mode="json"),
        "eval_protocol": SMALL_PROTOCOL.model_dump(mode="json"),
        "batch_size": 4,
        "num_workers": 0,
        "augment": {"crop": 64},
        "params": {"train_from": "net.stages.4"},
        **extra,
    }


def test_a_run_killed_after_an_epoch_resumes_to_the_weights_of_an_uninterrupted_one(
    labelled_images, tmp_path, monkeypatch
):
    full = train("cnnspot", _settings(labelled_images, tmp_path / "full", epochs=2), progress=False)
    real_start = CNNSpotRecipe.start_epoch

    def killed_in_epoch_2(self, run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real_start(self, run, epoch)

    monkeypatch.setattr(CNNSpotRecipe, "start_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train("cnnspot", _settings(labelled_images, tmp_path / "cut", epochs=2), progress=False)
    monkeypatch.setattr(CNNSpotRecipe, "start_epoch", real_start)
    resumed = train("cnnspot", _settings(labelled_images, tmp_path / "cut", epochs=2), progress=False)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "cut" / LOG_NAME).read_text().splitlines()] == [1, 2]
    for (k, a), b in zip(
        full.detector.trainable_state_dict().items(), resumed.detector.trainable_state_dict().values()
    ):
        assert torch.equal(a, b), k
