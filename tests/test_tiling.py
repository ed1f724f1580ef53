"""Scoring more of an image than its centre (issue 12, item 2): native-resolution tiles, centre + corners, mirrors,
and how the views' logits combine; the cache keys on the views, and default protocols are left as they were."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import EFFNET_SPEC, SMALL, SMALL_PROTOCOL
from typer.testing import CliRunner

from aigi.backbones.base import Preprocess
from aigi.checkpoints import ModelConfig, build_model, load_model, save_model
from aigi.cli import app
from aigi.data.perturb import Perturbation
from aigi.data.transforms import EvalProtocol, grid_boxes, grid_size
from aigi.engine.features import Extracted
from aigi.engine.inference import cache_for, logit_scores, score_paths

runner = CliRunner()
TILE = 224
PRE = Preprocess(size=TILE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
GRID = EvalProtocol(max_short_side=None, views="grid", max_tiles=256)
SIZES = [(225, 301), (100, 50), (2000, 230), (230, 2000), (224, 224), (449, 224)]


def coordinates(w: int, h: int) -> Image.Image:
    """Each pixel's colour says where it is (R, G: x and y mod 256; B: 1 + their multiples of 256), never black."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x % 256, y % 256, 1 + (x // 256) * 8 + y // 256], -1).astype(np.uint8))


def seen(tiles: list[Image.Image]) -> set[tuple[int, int]]:
    """The source coordinates of every non-padding pixel of the tiles."""
    out = set()
    for t in tiles:
        a = np.asarray(t).reshape(-1, 3).astype(int)
        a = a[a[:, 2] > 0]
        out.update(zip((a[:, 0] + (a[:, 2] - 1) // 8 * 256).tolist(), (a[:, 1] + (a[:, 2] - 1) % 8 * 256).tolist()))
    return out


@pytest.mark.parametrize("size", SIZES)
def test_a_grid_that_fits_covers_every_pixel_at_native_resolution(size):
    w, h = size
    tiles = GRID.view_images(coordinates(w, h), "JPEG", PRE)
    assert len(tiles) == math.ceil(w / TILE) * math.ceil(h / TILE)
    assert all(t.size == (TILE, TILE) for t in tiles)
    assert seen(tiles) == {(x, y) for x in range(w) for y in range(h)}  # every pixel, each exactly as it was


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cap", [1, 2, 4, 9])
def test_a_capped_grid_downscales_only_as_much_as_needed_and_still_covers(size, cap):
    w, h = size
    sw, sh = grid_size(w, h, TILE, cap)
    boxes = grid_boxes(sw, sh, TILE)
    assert len(boxes) <= cap
    covered = np.zeros((sh, sw), bool)
    for left, top, right, bottom in boxes:
        covered[max(top, 0) : bottom, max(left, 0) : right] = True
    assert covered.all()
    if math.ceil(w / TILE) * math.ceil(h / TILE) <= cap:
        assert (sw, sh) == (w, h)  # no resampling when the grid fits
    else:  # just enough: one more pixel on the long side would need more tiles
        assert sw / w == pytest.approx(sh / h, abs=2 / min(sw, sh)) and sw <= w and sh <= h
        bigger = (sw + 1, math.ceil((sw + 1) * h / w)) if w >= h else (math.ceil((sh + 1) * w / h), sh + 1)
        assert math.ceil(bigger[0] / TILE) * math.ceil(bigger[1] / TILE) > cap


def test_a_wide_image_under_a_cap_of_four_is_one_row_of_four():
    assert grid_size(2000, 230, TILE, 4) == (896, 103)
    tiles = EvalProtocol(max_short_side=None, views="grid", max_tiles=4).view_images(coordinates(2000, 230), "PNG", PRE)
    assert len(tiles) == 4


def test_centre_and_corners_and_mirrors():
    im = coordinates(300, 250)
    corners = EvalProtocol(views="center_corners").view_images(im, "JPEG", PRE)
    assert len(corners) == 5 and np.array_equal(
        np.asarray(corners[0]), np.asarray(EvalProtocol().apply_pil(im, "JPEG", PRE))
    )
    assert [min(seen([c])) for c in corners[1:]] == [(0, 0), (76, 0), (0, 26), (76, 26)]
    flipped = EvalProtocol(views="center_corners", flip=True).view_images(im, "JPEG", PRE)
    assert len(flipped) == 10
    for view, mirror in zip(flipped[:5], flipped[5:]):
        assert np.array_equal(np.asarray(mirror), np.asarray(view)[:, ::-1])
    assert EvalProtocol(flip=True).apply(im, "JPEG", PRE).shape == (2, 3, TILE, TILE)
    assert EvalProtocol().apply(im, "JPEG", PRE).shape == (3, TILE, TILE)  # one view: as before, no view axis


@pytest.mark.parametrize("combine,expected", [("mean", [2.0, 5.0]), ("max", [4.0, 5.0]), ("topk", [3.5, 5.0])])
def test_view_logits_combine_as_configured(combine, expected):
    ext = Extracted(features=[np.array([1.0, 4.0, 3.0, 0.0], np.float32), np.array([5.0], np.float32)], multi_view=True)
    protocol = EvalProtocol(views="grid", combine=combine, top_k=2)
    scores = logit_scores(ext, lambda rows: rows, protocol)
    assert scores.prob == pytest.approx(1 / (1 + np.exp(-np.array(expected))))


DEFAULT_NAMESPACES = {  # computed before the view options existed: today's default models keep their cached entries
    "default": "7d6fa169ee55aaf1ed61",
    "small": "e80169a2c642c46d4d99",
}


def test_the_cache_keys_on_the_views_and_not_for_default_protocols():
    assert cache_for(EFFNET_SPEC, SMALL, EvalProtocol(), "global").namespace == DEFAULT_NAMESPACES["default"]
    assert cache_for(EFFNET_SPEC, SMALL, SMALL_PROTOCOL, "global").namespace == DEFAULT_NAMESPACES["small"]
    assert EvalProtocol().model_dump() == {
        "max_short_side": 512,
        "crop": 224,
        "format_align": False,
        "align_quality": 96,
    }
    grid = EvalProtocol(views="grid")

    def key(p):
        return cache_for(EFFNET_SPEC, SMALL, p, "global").namespace

    distinct = [EvalProtocol(), grid, grid.model_copy(update={"max_tiles": 9}), EvalProtocol(flip=True)]
    distinct += [EvalProtocol(views="center_corners"), EvalProtocol(views="center_corners", flip=True)]
    assert len({key(p) for p in distinct}) == len(distinct)
    same = [grid, grid.model_copy(update={"combine": "max"}), grid.model_copy(update={"combine": "topk", "top_k": 3})]
    assert len({key(p) for p in same}) == 1  # per-view features: any combination reads them
    assert EvalProtocol(views="grid").single_view() == EvalProtocol() and key(grid.single_view()) == key(EvalProtocol())


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(150, 90), (40, 30), (64, 64), (200, 70)]):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def tiny_univfd(protocol: EvalProtocol):
    torch.manual_seed(0)
    model = build_model(ModelConfig(detector="univfd", backbone=EFFNET_SPEC, protocol=protocol))
    torch.nn.init.normal_(model.detector.head.weight, std=0.5)
    return model


def test_grid_scores_are_the_combined_view_logits_cached_or_not(images):
    protocol = SMALL_PROTOCOL.model_copy(update={"views": "grid", "max_tiles": 4, "flip": True})
    model = tiny_univfd(protocol)
    det = model.detector
    with torch.inference_mode():
        views = [protocol.apply(Image.open(p).convert("RGB"), "PNG", SMALL) for p in images]
        expected = np.array([torch.sigmoid(det(v).logit.double().mean()).item() for v in views])
    assert [len(v) for v in views] == [2 * 4, 2, 2, 2 * 3]  # 150x90: 2x2 at 128x76; 200x70: 3x1 at 182x64
    uncached = score_paths(model, images, use_cache=False, progress=False)
    first = score_paths(model, images, progress=False)
    again = score_paths(model, images, progress=False)
    assert np.isfinite(first.prob).all() and again.cache_hits == len(images)
    for s in (uncached, first, again):
        assert s.prob == pytest.approx(expected, rel=1e-5)
    jpeg = score_paths(model, images, progress=False, perturbation=Perturbation(kind="jpeg", level=90))
    assert np.isfinite(jpeg.prob).all() and not np.array_equal(jpeg.prob, first.prob)  # robustness: the same views
    model.config.protocol = protocol.model_copy(update={"combine": "max"})
    best = score_paths(model, images, progress=False)
    assert best.cache_hits == len(images)  # the same cached views, combined another way
    assert (best.prob >= first.prob - 1e-9).all() and (best.prob > first.prob).any()


def test_a_default_protocol_scores_as_before(images):
    model = tiny_univfd(SMALL_PROTOCOL)
    with torch.inference_mode():
        px = torch.stack([SMALL_PROTOCOL.apply(Image.open(p).convert("RGB"), "PNG", SMALL) for p in images])
        expected = torch.sigmoid(model.detector(px).logit.double()).numpy()
    assert np.array_equal(score_paths(model, images, use_cache=False, progress=False).prob, expected)
    assert np.array_equal(score_paths(model, images, progress=False).prob, expected)


def test_detect_eval_info_and_calibrate_with_a_grid(images, tmp_path):
    folder = save_model(tiny_univfd(SMALL_PROTOCOL), tmp_path / "m")
    before = (folder / "config.json").read_text()
    data = tmp_path / "data"
    for label, members in (("0_real", images[:2]), ("1_fake", images[2:])):
        (data / label).mkdir(parents=True)
        for p in members:
            (data / label / p.name).write_bytes(p.read_bytes())
    grid = ["--views", "grid", "--max-tiles", "4", "--flip", "--combine", "topk", "--top-k", "3"]
    res = runner.invoke(app, ["calibrate", "-m", str(folder), "-d", str(data), *grid, "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    assert (folder / "config.json").read_text() == before  # --out: the original is left as it was
    protocol = load_model(tmp_path / "g").config.protocol
    assert (protocol.views, protocol.max_tiles, protocol.flip, protocol.combine, protocol.top_k) == (
        "grid",
        4,
        True,
        "topk",
        3,
    )
    res = runner.invoke(app, ["detect", "--json", "-m", str(tmp_path / "g"), *map(str, images)])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["views"] == "grid of <= 4 tiles + mirror, mean of top-3 logits"
    assert all(0 <= r["prob_generated"] <= 1 for r in payload["results"])
    res = runner.invoke(app, ["eval", "-m", str(tmp_path / "g"), "-d", str(data), "-o", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    assert "grid of <= 4 tiles" in json.loads(runner.invoke(app, ["info", "-m", str(tmp_path / "g")]).stdout)["views"]
    res = runner.invoke(app, ["calibrate", "-m", str(folder), "-d", str(data), "--max-tiles", "1000"])
    assert res.exit_code != 0 and "max_tiles" in res.output and (folder / "config.json").read_text() == before


MDMF_TINY = dict(
    params={"pool": 2, "proj_hidden": 16, "proj_dim": 4, "rff_features": 32, "bank_patches": 16},
    images_per_side=2,
    patches_per_side=16,
    steps=2,
)


@pytest.mark.parametrize("recipe,kind,extra", [("univfd", "global", {}), ("mdmf", "patches", MDMF_TINY)])
def test_training_extracts_one_centre_view_and_the_model_keeps_its_views(
    labelled_images, tmp_path, recipe, kind, extra
):
    from aigi.engine.trainer import train

    protocol = SMALL_PROTOCOL.replace(views="center_corners", flip=True)
    settings = dict(data=labelled_images, out=tmp_path / "m", calibrate_on=labelled_images, **extra)
    settings.update(spec=EFFNET_SPEC.model_dump(mode="json"), eval_protocol=protocol.model_dump(mode="json"))
    train(recipe, settings, progress=False)
    model = load_model(tmp_path / "m")
    assert model.config.protocol == protocol
    assert model.config.calibration["auroc"] is not None  # calibrated through all ten views per image
    centre = cache_for(EFFNET_SPEC, SMALL, SMALL_PROTOCOL, kind)
    assert centre.dir.is_dir()  # the training features: one centre crop per image, shared with single-view models


def test_explain_scores_every_view_and_draws_the_first(images):
    from aigi.engine.explain import explain_inputs

    torch.manual_seed(0)
    params = dict(slots=8, heads=2, top_k=4, lora_r=2, perplexity_dim=4, residual_hidden=8, residual_dim=4, hidden=8)
    protocol = SMALL_PROTOCOL.model_copy(update={"views": "grid", "combine": "max"})
    model = build_model(ModelConfig(detector="mirror", params=params, backbone=EFFNET_SPEC, protocol=protocol))
    assert not model.detector.cacheable  # LoRA on the backbone: each view scored by the detector itself
    scores, pngs, _ = explain_inputs(model, images, progress=False)
    plain = score_paths(model, images, progress=False)
    assert np.isfinite(scores.prob).all() and scores.prob == pytest.approx(plain.prob, rel=1e-5)
    with torch.inference_mode():
        views = protocol.apply(Image.open(images[0]).convert("RGB"), "PNG", SMALL)
        best = torch.sigmoid(model.detector(views).logit.double().max()).item()
    assert len(views) == 4 and plain.prob[0] == pytest.approx(model.calibrated(np.array([best]))[0], rel=1e-5)
    assert sorted(pngs) == [0, 1, 2, 3]
