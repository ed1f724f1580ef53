"""Model folders: config.json + model.safetensors round-trip exactly and fail loudly when they do not match."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from aigi.backbones import BackboneSpec
from aigi.checkpoints import (
    ModelConfig,
    ModelLoadError,
    build_model,
    load_default_model,
    load_model,
    save_model,
)

SPEC = BackboneSpec(family="efficientnet_lite0", options={"pretrained": False})


@pytest.fixture()
def fitted(tmp_path):
    model = build_model(ModelConfig(detector="univfd", backbone=SPEC))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 1280))
    y = (x[:, 0] > 0).astype(int)
    model.detector.fit(x, y)
    model.config.threshold = 0.42
    folder = save_model(model, tmp_path / "m")
    return model, folder


def test_round_trip_is_bit_exact(fitted):
    model, folder = fitted
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_model(folder)
    for k, v in model.detector.trainable_state_dict().items():
        assert torch.equal(v, loaded.detector.trainable_state_dict()[k])
    assert loaded.threshold == 0.42
    feats = torch.randn(5, 1280)
    assert torch.equal(model.detector.score(feats).logit, loaded.detector.score(feats).logit)


def test_only_non_frozen_weights_are_stored(fitted):
    _, folder = fitted
    assert sorted(load_file(str(folder / "model.safetensors"))) == ["head.bias", "head.weight"]


def test_missing_tensor_is_named(fitted):
    _, folder = fitted
    state = load_file(str(folder / "model.safetensors"))
    del state["head.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing tensors: head.bias"):
        load_model(folder)


def test_shape_mismatch_is_named(fitted):
    _, folder = fitted
    save_file({"head.weight": torch.zeros(1, 320), "head.bias": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"head.weight: file \(1, 320\) vs model \(1, 1280\)"):
        load_model(folder)


def test_unexpected_tensor_is_named(fitted):
    _, folder = fitted
    state = load_file(str(folder / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="unexpected tensors: extra.weight"):
        load_model(folder)


def test_bad_config_is_explained(fitted):
    _, folder = fitted
    cfg = json.loads((folder / "config.json").read_text())
    cfg["detector"] = "univfdd"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="did you mean 'univfd'"):
        load_model(folder)
    cfg["detector"] = "univfd"
    cfg["params"] = {"C": "lots"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="invalid univfd hyper-parameters"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(folder)


def test_missing_files_and_pickles_are_refused(fitted, tmp_path):
    _, folder = fitted
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(tmp_path / "nowhere")
    (folder / "model.safetensors").write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing model.safetensors"):
        load_model(folder)


def test_hf_backbone_folder_round_trip(tmp_path):
    from tiny import tiny_vit_folder

    tiny_vit_folder(tmp_path)
    spec = BackboneSpec(family="hf_vit", source=str(tmp_path / "tiny-dinov2"))
    model = build_model(ModelConfig(detector="univfd", backbone=spec))
    model.detector.fit(np.random.default_rng(1).normal(size=(20, 32)), np.array([0, 1] * 10))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model.detector(x).logit, loaded.detector(x).logit)
    assert loaded.config.backbone.source == str(tmp_path / "tiny-dinov2")


def test_shipped_default_model_loads():
    model = load_default_model()
    assert model.config.detector == "cnnspot"
    assert model.config.backbone.family == "efficientnet_lite0"
    assert 0.0 < model.threshold < 1.0
    assert model.config.calibration is not None
