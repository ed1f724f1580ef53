"""NPR and the local-patch detector (issue #18): the residual, the receptive field, and a scoring path on which no
pixel is ever resampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from aigi.backbones import BackboneSpec
from aigi.checkpoints import ModelConfig, ModelLoadError, build_model, load_model
from aigi.data.transforms import EvalProtocol, native_grid_boxes, to_tensor
from aigi.detectors.npr import npr_residual
from aigi.engine.inference import score_paths
from aigi.engine.trainer import get_recipe, train

SIDE = 64
NATIVE = EvalProtocol(max_short_side=None, crop=SIDE, resample=False)


def _model(name: str, protocol: EvalProtocol = NATIVE, **params):
    torch.manual_seed(0)
    spec = BackboneSpec(family="pixels", preprocess={"size": SIDE})
    model = build_model(ModelConfig(detector=name, params=params, backbone=spec, protocol=protocol))
    model.detector.eval()
    return model


def _photo(path, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=95)
    return path


# -- NPR's residual ----------------------------------------------------------------------------------------------------


def test_npr_residual_is_zero_on_a_nearest_upsampled_image_and_not_otherwise():
    small = torch.randn(2, 3, 16, 20)
    upsampled = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # each pixel a 2x2 block
    assert torch.equal(npr_residual(upsampled), torch.zeros_like(upsampled))
    noisy = upsampled.clone()
    noisy[0, 1, 5, 7] += 0.5
    residual = npr_residual(noisy)
    assert residual.abs().sum() > 0 and residual.shape == noisy.shape
    assert npr_residual(torch.randn(1, 3, 33, 31)).abs().amin(dim=(2, 3)).le(0).all()  # odd sides: anchors stay 0


def test_npr_on_a_smooth_upsampled_image_scores_its_residual_only():
    model = _model("npr")
    a = torch.randn(1, 3, SIDE // 2, SIDE // 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    b = torch.randn(1, 3, SIDE // 2, SIDE // 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():  # both residuals are zero: the network sees the same input, whatever the picture
        assert torch.allclose(model.detector(a).logit, model.detector(b).logit)
        out = model.detector(torch.randn(1, 3, SIDE, SIDE))
    assert out.patch_map.shape[-2:] == model.detector.patch_grid()
    assert out.logit == pytest.approx(float(out.patch_map.mean()), abs=1e-5)  # the logit is the map's mean


# -- the local-patch detector's receptive field ------------------------------------------------------------------------


@pytest.mark.parametrize("rf", [9, 17])
def test_a_one_pixel_change_moves_only_the_patches_that_see_it(rf):
    det = _model("localpatch", receptive_field=rf, width=8).detector
    x = torch.randn(1, 3, SIDE, SIDE)
    y, xx = 30, 21
    moved = x.clone()
    moved[0, :, y, xx] += 3.0
    with torch.no_grad():
        diff = (det(moved).patch_map - det(x).patch_map)[0].abs()
    changed = {tuple(map(int, ij)) for ij in torch.nonzero(diff > 1e-6)}
    h, w = det.patch_grid()
    sees = {(i, j) for i in range(h) for j in range(w) if 2 * i <= y < 2 * i + rf and 2 * j <= xx < 2 * j + rf}
    assert changed and changed <= sees  # patches whose square misses the pixel are untouched
    assert {i for i, _ in sees} == set(range((y - rf) // 2 + 1, y // 2 + 1))  # the square is exactly rf wide
    assert h == (SIDE - 3 + 1 - 3) // 2 + 1 - 2 * ((rf - 5) // 4)  # valid 3x3 convolutions: no padding anywhere


def test_receptive_fields_the_network_cannot_have_are_refused():
    with pytest.raises(ModelLoadError, match="5 \\+ 4k"):
        _model("localpatch", receptive_field=10)


def test_local_patch_pooling_mean_and_top_fraction():
    maps = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    assert float(_model("localpatch", pool="mean").detector.score(maps).logit) == pytest.approx(49.5)
    top = _model("localpatch", pool="topk", top_fraction=0.1).detector.score(maps).logit
    assert float(top) == pytest.approx(np.mean(range(90, 100)))


# -- never resampled -------------------------------------------------------------------------------------------------


def test_a_protocol_that_could_resize_is_refused_for_a_detector_of_pixel_traces():
    for protocol in (EvalProtocol(crop=SIDE), EvalProtocol(max_short_side=None, crop=SIDE)):
        with pytest.raises(ModelLoadError, match="native resolution"):
            _model("npr", protocol=protocol)
    with pytest.raises(ModelLoadError, match="native resolution"):  # crops of another side would be resized
        _model("localpatch", protocol=NATIVE.replace(crop=SIDE // 2))
    with pytest.raises(ValidationError, match="max_short_side"):
        EvalProtocol(max_short_side=512, resample=False)


def test_native_grid_spreads_at_most_max_tiles_over_a_large_image():
    boxes = native_grid_boxes(4000, 3000, 224, 4)
    assert len(boxes) == 4 and boxes[0][:2] == (0, 0) and boxes[-1][2:] == (4000, 3000)
    assert all(r - left == b - t == 224 for left, t, r, b in boxes)
    assert native_grid_boxes(400, 300, 224, 4) == native_grid_boxes(400, 300, 224, 16)  # 2 x 2 covers it: all of it


@pytest.mark.parametrize("views", [{}, {"views": "grid", "max_tiles": 2}, {"views": "center_corners", "flip": True}])
def test_no_pixel_is_resampled_on_the_scoring_path(views, tmp_path, monkeypatch):
    model = _model("localpatch", protocol=NATIVE.replace(**views), receptive_field=9, width=4)
    files = [_photo(tmp_path / "wide.jpg", 301, 97), _photo(tmp_path / "big.jpg", 640, 480, 1)]
    files.append(_photo(tmp_path / "small.jpg", 40, 50, 2))
    seen = []
    forward = model.detector.forward
    monkeypatch.setattr(model.detector, "forward", lambda px: seen.append(tuple(px.shape[1:])) or forward(px))

    def no_resize(self, *a, **k):
        raise AssertionError("an image was resized")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    scores = score_paths(model, files, use_cache=False, progress=False)
    assert scores.ok.all() and seen and set(seen) == {(3, SIDE, SIDE)}
    with Image.open(files[0]) as im:  # the first view is the file's own pixels, cut out (padded where it is short)
        rgb = im.convert("RGB")
        view = model.config.protocol.apply(rgb, "JPEG", model.detector.backbone.preprocess)
        box = model.config.protocol.boxes(301, 97, SIDE)[0]
        expected = to_tensor(rgb.crop(box), model.detector.backbone.preprocess)
    assert torch.equal(view[0] if view.ndim == 4 else view, expected)


# -- training ----------------------------------------------------------------------------------------------------------


def test_native_recipes_train_on_smaller_native_crops_and_record_a_protocol_that_never_resizes(
    labelled_images, tmp_path
):
    recipe = get_recipe("npr")
    with pytest.raises(ValidationError, match="must not exceed"):
        recipe.Config(data=labelled_images, out=tmp_path / "x", crop=32, augment={"crop": 64})
    settings = {"data": labelled_images, "out": tmp_path / "npr", "epochs": 1, "batch_size": 4, "num_workers": 0}
    train("npr", {**settings, "crop": 48, "augment": {"crop": 32}}, progress=False)
    loaded = load_model(tmp_path / "npr")
    assert loaded.config.protocol.resample is False and loaded.config.protocol.crop == 48
    assert loaded.config.backbone.family == "pixels" and loaded.detector.backbone.preprocess.size == 48
    config = recipe.Config(**settings, crop=48, augment={"crop": 32})
    assert recipe(config).train_preprocess(loaded.detector).size == 32  # 32-pixel crops, never resized to 48


def test_a_stack_takes_an_artifact_detector_as_a_member(labelled_images, probe_dir, tmp_path):
    from aigi import api

    patch = tmp_path / "patch"
    tiny = {"epochs": 1, "batch_size": 4, "num_workers": 0, "crop": 32, "augment": {"crop": 32}}
    params = {"receptive_field": 9, "width": 4}
    train("localpatch", {"data": labelled_images, "out": patch, **tiny, "params": params}, progress=False)
    train("stack", {"member": [probe_dir, patch], "val": labelled_images, "out": tmp_path / "stack"}, progress=False)
    results = api.detect(api.load(tmp_path / "stack"), sorted(labelled_images.rglob("*.jpg")), progress=False)
    assert len(results) == 12 and all(r.error is None for r in results)
