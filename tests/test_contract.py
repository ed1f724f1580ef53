"""The detector and recipe contracts, checked over the whole registry (in the spirit of timm's test_models.py and
scikit-learn's parametrize_with_checks): a detector or recipe added to the registry is tested here without a line
of new test code, except its tiny settings below, which the first test insists on."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import EFFNET_SPEC, SMALL_PROTOCOL, tiny_clip_folder, tiny_vit_folder

from aigi.backbones import BackboneSpec
from aigi.checkpoints import ModelConfig, ModelLoadError, build_model, load_model, save_model
from aigi.data.transforms import EvalProtocol
from aigi.detectors import detector_names, get_detector
from aigi.engine.trainer import LOG_NAME, get_recipe, recipe_names, train

# Small settings per detector, so that every check runs in seconds on a CPU.
TINY_PARAMS = {
    "univfd": {},
    "cnnspot": {},
    "mdmf": {"proj_hidden": 16, "proj_dim": 4, "rff_features": 32, "bank_patches": 16},
    "mirror": {"slots": 16, "heads": 4, "top_k": 4, "lora_r": 2},
    "npr": {},
    "localpatch": {"receptive_field": 9, "width": 4},
    "mirage": {"prompt_depth": 2},
    "mirage-anchors": {"embed_dim": 8},
}
# Small settings per recipe (one epoch or step), on top of data/out and the tiny backbone.
TINY_RECIPES = {
    "univfd": {},
    "cnnspot": {"epochs": 1, "batch_size": 4, "num_workers": 0, "augment": {"crop": 64}},
    "mdmf": {"steps": 2, "log_every": 1, "images_per_side": 2, "patches_per_side": 16},
    "mirror-memory": {"slots": 16, "heads": 4, "top_k": 4, "epochs": 1, "batch_size": 4},
    "mirror": {
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "augment": {"crop": 64, "rescale_short_range": [64, 96]},
    },
    "stack": {},  # its members: two tiny probes, trained in the test
    "npr": {"epochs": 1, "batch_size": 4, "num_workers": 0, "crop": 32, "augment": {"crop": 32}},
    "localpatch": {"epochs": 1, "batch_size": 4, "num_workers": 0, "crop": 32, "augment": {"crop": 32}},
    "mirage": {"epochs": 1, "batch_size": 4, "num_workers": 0, "augment": {"crop": 32}, "memory_size": 8},
    "mirage-anchors": {"epochs": 1, "batch_size": 4, "num_workers": 0, "augment": {"crop": 64}, "memory_size": 8},
}
BACKBONES = ["efficientnet", "vit"]
TEXT_TOWER = {"mirage": ["clip"], "mirage-anchors": [*BACKBONES, "clip"]}  # detectors that read a whole CLIP
CLIP_PROTOCOL = {"max_short_side": None, "crop": 32}


def CLIP_SPEC(root) -> BackboneSpec:  # noqa: N802 - a constant built on demand (the folder is written once)
    return BackboneSpec(family="hf_clip", source=str(tiny_clip_folder(root)))


NATIVE_SIDE = 32  # detectors of pixel traces: the pixels backbone, crops of this side, a protocol that never resizes


def _kinds(name: str) -> list[str]:
    return ["pixels"] if get_detector(name).native_resolution else TEXT_TOWER.get(name, BACKBONES)


def test_every_registered_detector_and_recipe_has_tiny_settings_here():
    assert set(detector_names()) == set(TINY_PARAMS)
    assert set(recipe_names()) == set(TINY_RECIPES)


def _spec(kind: str, tmp_path_factory) -> BackboneSpec:
    if kind == "efficientnet":
        return EFFNET_SPEC
    if kind == "pixels":
        return BackboneSpec(family="pixels", preprocess={"size": NATIVE_SIDE})
    if kind == "clip":
        return CLIP_SPEC(tmp_path_factory.getbasetemp())
    folder = tiny_vit_folder(tmp_path_factory.getbasetemp())
    return BackboneSpec(
        family="hf_vit", source=str(folder), preprocess={"size": 56, "mean": [0.5] * 3, "std": [0.5] * 3}
    )


def _model(name: str, kind: str, tmp_path_factory, **params):
    torch.manual_seed(0)
    native = EvalProtocol(max_short_side=None, crop=NATIVE_SIDE, resample=False)
    config = ModelConfig(
        detector=name,
        params={**TINY_PARAMS[name], **params},
        backbone=_spec(kind, tmp_path_factory),
        **({"protocol": native} if kind == "pixels" else {}),
    )
    model = build_model(config)
    for t in model.detector.trainable_state_dict().values():  # trained tensors that start at zero would hide mismatches
        if t.is_floating_point() and t.numel() and not t.abs().sum():
            t.add_(torch.randn_like(t) * 0.01)
    return model


def _pixels(model, batch: int = 2) -> torch.Tensor:
    size = model.detector.backbone.preprocess.size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=[(n, k) for n in sorted(TINY_PARAMS) for k in _kinds(n)], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request, tmp_path_factory):
    name, kind = request.param
    return _model(name, kind, tmp_path_factory)


def test_forward_gives_finite_logits_and_a_map_iff_declared(model):
    det, x = model.detector, _pixels(model)
    with torch.no_grad():
        out = det(x)
    assert out.logit.shape == (2,) and torch.isfinite(out.logit).all()
    assert (out.patch_map is not None) == (det.patch_map_label is not None)
    if out.patch_map is not None:
        assert tuple(out.patch_map.shape) == (2, *det.patch_grid()) and torch.isfinite(out.patch_map).all()
    else:
        assert det.patch_grid() is None


def test_score_of_features_is_forward(model):
    det, x = model.detector, _pixels(model)
    with torch.no_grad():
        assert torch.equal(det.score(det.features(x)).logit, det(x).logit)


def test_cacheable_features_are_deterministic_and_the_cache_variant_is_cacheable(model, tmp_path_factory):
    det, x = model.detector, _pixels(model)
    with torch.no_grad():
        if det.cacheable:
            assert torch.equal(det.features(x), det.features(x))
    if det.cache_variant is None:  # declared to have no cacheable variant: none may claim to be
        assert not det.cacheable
        return
    variant = _model(model.config.detector, _kind(model), tmp_path_factory, **det.cache_variant).detector
    assert variant.cacheable, f"{det.name}: params {det.cache_variant} should make features() cacheable"


def _kind(model) -> str:
    return {"hf_vit": "vit", "pixels": "pixels", "hf_clip": "clip"}.get(model.config.backbone.family, "efficientnet")


def test_save_and_load_are_bit_exact(model, tmp_path):
    det, x = model.detector, _pixels(model)
    save_model(model, tmp_path / "m")
    torch.manual_seed(0)  # the tiny EfficientNet's frozen weights are random: drawn again as _model drew them
    loaded = load_model(tmp_path / "m")
    saved, again = det.trainable_state_dict(), loaded.detector.trainable_state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(det(x).logit, loaded.detector(x).logit)


def test_every_trained_tensor_is_saved_and_no_frozen_one(model):
    det = model.detector
    saved = set(det.trainable_state_dict())
    trained = {n for n, p in det.named_parameters() if p.requires_grad}
    assert trained <= saved, sorted(trained - saved)
    frozen_backbone = {f"backbone.{n}" for n, p in det.backbone.named_parameters() if not p.requires_grad}
    assert not frozen_backbone & saved, sorted(frozen_backbone & saved)[:5]


def test_a_backbone_tensor_the_detector_trains_is_saved(model, tmp_path):
    """A detector that unfreezes part of its backbone (a fine-tuned stage) keeps it, with its norm statistics."""
    det = model.detector
    if not list(det.backbone.parameters()):  # the pixels backbone: nothing of it to train, nothing of it saved
        assert not any(k.startswith("backbone.") for k in det.trainable_state_dict())
        return
    name, param = next((n, p) for n, p in det.backbone.named_parameters() if p.ndim == 1 and ".lora_" not in n)
    param.requires_grad_(True)  # as a constructor that unfreezes it would
    det.settle()
    assert f"backbone.{name}" in det.trainable_state_dict()


def test_what_is_saved_is_fixed_when_the_model_is_built(model):
    """Freezing everything afterwards (to export, say) must not drop trained tensors from a save."""
    before = set(model.detector.trainable_state_dict())
    model.detector.requires_grad_(False)
    assert set(model.detector.trainable_state_dict()) == before


def test_unknown_params_are_refused(model):
    config = model.config.model_copy(update={"params": {**model.config.params, "no_such_setting": 1}})
    with pytest.raises(ModelLoadError, match="no_such_setting"):
        build_model(config)


@pytest.mark.parametrize("name", sorted(TINY_RECIPES))
def test_one_recipe_step_gives_a_finite_loss_and_a_usable_output(name, labelled_images, tmp_path):
    settings = {**TINY_RECIPES[name], "data": labelled_images, "out": tmp_path / "out"}
    if name == "mirror":
        memory = {**TINY_RECIPES["mirror-memory"], "data": labelled_images, "out": tmp_path / "memory"}
        train("mirror-memory", {**memory, **_tiny_backbone()}, progress=False)
        settings["memory"] = tmp_path / "memory"
    elif name == "stack":
        members = [tmp_path / "probe-a", tmp_path / "probe-b"]
        for folder, c in zip(members, (0.1, 10.0)):
            probe = {"data": labelled_images, "out": folder, "params": {"C": c}, **_tiny_backbone()}
            train("univfd", probe, progress=False)
        settings = {"member": members, "val": labelled_images, "out": tmp_path / "out"}
    elif name == "mirage":
        settings.update(spec=CLIP_SPEC(tmp_path).model_dump(mode="json"), eval_protocol=CLIP_PROTOCOL)
    elif not get_detector(get_recipe(name).detector).native_resolution:  # those choose their own (pixels) backbone
        settings.update(_tiny_backbone())
    recipe = get_recipe(name)
    if recipe.param_options:
        settings["params"] = {k: v for k, v in TINY_PARAMS[recipe.detector].items() if k in recipe.param_options}
        settings["params"].update({k: v for k, v in TINY_PARAMS[recipe.detector].items() if name == "mdmf"})
    result = train(name, settings, progress=False)
    if recipe.epochs_field is not None or name == "mdmf":
        log = [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]
        assert log and all(math.isfinite(r["loss"]) for r in log)
    if name != "mirror-memory":
        loaded = load_model(tmp_path / "out")
        assert loaded.config.training["recipe"] == name and result.config.detector == recipe.detector


def _tiny_backbone() -> dict:
    return {"spec": EFFNET_SPEC.model_dump(mode="json"), "eval_protocol": SMALL_PROTOCOL.model_dump(mode="json")}
