"""``aigi convert mirror``: MIRROR's official checkpoint formats, written here with torch.save, into aigi folders.

Everything is tiny and offline: a random DINOv3 (hidden 32, 2 layers, 4 registers) saved to a temporary folder,
a 16-slot memory, and small heads.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from typer.testing import CliRunner

from aigi.backbones import BackboneSpec
from aigi.checkpoints import ModelLoadError, load_model
from aigi.cli import app
from aigi.detectors.mirror_convert import (
    PHASE1,
    PHASE2,
    convert_detector,
    convert_memory,
    convert_mirror,
    inspect_checkpoint,
)
from aigi.detectors.mirror_recipe import load_memory
from aigi.engine.inference import score_paths

D, K, HEADS, TOP_K, R = 32, 16, 4, 4, 4
TINY_DINOV3 = dict(
    hidden_size=D,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    patch_size=16,
    image_size=64,
    num_register_tokens=4,
)
# Smaller than the paper's 64 / 512 / 256 / 512, so the converter has to read them off the tensors.
PER, RES_HIDDEN, RES, HIDDEN = 8, 16, 8, 16

REGISTER_NOTE = (
    "the reference counted the backbone's register tokens among the patch tokens; aigi leaves them out, "
    "so scores can differ slightly from the reference code's"
)


def _hf_dinov3(seed: int) -> transformers.DINOv3ViTModel:
    torch.manual_seed(seed)
    return transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**TINY_DINOV3)).eval()


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_dinov3")
    _hf_dinov3(0).save_pretrained(folder)
    return folder


@pytest.fixture()
def spec(backbone_dir):
    return BackboneSpec(family="hf_vit", source=str(backbone_dir))


def _memory_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "memory": torch.randn(K, D, generator=g),
        "q_proj.weight": torch.randn(D, D, generator=g) * 0.1,
        "k_proj.weight": torch.randn(D, D, generator=g) * 0.1,
        "v_proj.weight": torch.randn(D, D, generator=g) * 0.1,
        "out_proj.weight": torch.randn(D, D, generator=g) * 0.1,
        "out_proj.bias": torch.randn(D, generator=g) * 0.1,
    }


def _phase1(state=None, **config) -> dict:
    """What the reference's Phase 1 training saves every epoch."""
    memory_config = {"feature_dim": D, "mem_slots": K, "num_heads": HEADS, "top_k": TOP_K, **config}
    return {
        "epoch": 7,
        "model_state_dict": state if state is not None else _memory_state(),
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1, 2, 3, 4, 5]}]},
        "memory_config": memory_config,
        "backbone_path": "./weight/dinov3-huge",
    }


def _reference_backbone(seed: int = 0, layer_prefix: str = "") -> dict[str, torch.Tensor]:
    """The frozen backbone as the reference stores it: each layer wrapped by peft on its own, LoRA on q/k/v.

    ``layer_prefix=""`` gives transformers 4.x's ``backbone.dino.layer.{i}``, ``"model."`` gives 5.x's
    ``backbone.dino.model.layer.{i}``."""
    from peft import LoraConfig, get_peft_model

    model = _hf_dinov3(seed)
    for i in range(len(model.model.layer)):
        model.model.layer[i] = get_peft_model(
            model.model.layer[i], LoraConfig(r=R, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"])
        )
    g = torch.Generator().manual_seed(100 + seed)
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:  # peft starts lora_B at zero: give every adapter distinct values
            v = torch.randn(v.shape, generator=g)
        if k.startswith("model.layer."):
            k = layer_prefix + k[len("model.") :]
        out["backbone.dino." + k] = v.clone()
    return out


def _phase2(layer_prefix: str = "", backbone_seed: int = 0, module: bool = False) -> dict:
    """What the reference's Phase 2 training saves (utils.save_model), args included."""
    g = torch.Generator().manual_seed(5)
    model = {
        "norm.mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        "norm.std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    }
    model.update(_reference_backbone(backbone_seed, layer_prefix))
    model.update({"memory_bank." + k: v for k, v in _memory_state().items()})
    for name, shape in {
        "perplexity_mlp.0.weight": (PER, 2),
        "perplexity_mlp.0.bias": (PER,),
        "residual_mlp.0.weight": (RES_HIDDEN, D),
        "residual_mlp.0.bias": (RES_HIDDEN,),
        "residual_mlp.3.weight": (RES, RES_HIDDEN),
        "residual_mlp.3.bias": (RES,),
        "head.0.weight": (HIDDEN, PER + RES + D),
        "head.0.bias": (HIDDEN,),
        "head.3.weight": (2, HIDDEN),
        "head.3.bias": (2,),
    }.items():
        model["detector." + name] = torch.randn(shape, generator=g)
    if module:
        model = {"module." + k: v for k, v in model.items()}
    args = argparse.Namespace(
        backbone_path="./weight/dinov3-huge",
        memory_path="./weight/phase1/mirror_phase1.pth",
        batch_size=32,
        blr=1e-4,
        opt_betas=None,
        use_amp=False,
        smoothing=0.1,
    )
    return {
        "model": model,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 1999,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "args": args,
    }


def _save(obj, path):
    torch.save(obj, path)
    return path


def _our_lora_key(state: dict, layer: int, proj: str, ab: str) -> str:
    [key] = [k for k in state if f"layer.{layer}.attention.{proj}.lora_{ab}.default.weight" in k]
    return key


# -- Phase 1 ---------------------------------------------------------------------------------------------------
def test_phase1_converts_to_a_memory_folder_that_loads(tmp_path, spec):
    pth = _save(_phase1(), tmp_path / "mirror_phase1_epoch_7.pth")
    assert inspect_checkpoint(pth) == PHASE1
    res = convert_memory(pth, tmp_path / "memory", spec)
    assert res.kind == PHASE1 and res.notes == []
    bank, cfg = load_memory(tmp_path / "memory")
    assert cfg.bank() == {"dim": D, "slots": K, "heads": HEADS, "top_k": TOP_K}
    assert cfg.epochs_done == 7 and cfg.protocol.format_align
    assert cfg.training["converted_from"] == str(pth)
    assert cfg.backbone == spec
    for name, t in _memory_state().items():
        assert torch.equal(bank.state_dict()[name], t), name


@pytest.mark.parametrize("envelope", ["model_state_dict", "model", "state_dict", None])
@pytest.mark.parametrize("prefix", ["", "module.", "memory_bank.", "module.memory_bank."])
def test_phase1_envelopes_and_prefixes(tmp_path, spec, envelope, prefix):
    state = {prefix + k: v for k, v in _memory_state().items()}
    obj = state if envelope is None else {envelope: state}  # no memory_config: heads and top-k are given
    pth = _save(obj, tmp_path / "mirror_phase1.pth")
    assert inspect_checkpoint(pth) == PHASE1
    convert_memory(pth, tmp_path / "memory", spec, heads=HEADS, top_k=TOP_K)
    bank, cfg = load_memory(tmp_path / "memory")
    assert torch.equal(bank.memory, _memory_state()["memory"])
    assert (cfg.recipe.heads, cfg.recipe.top_k, cfg.epochs_done) == (HEADS, TOP_K, 0)


def test_phase1_without_config_defaults_to_8_heads_and_top_128(tmp_path, spec):
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn((256, D) if k == "memory" else v.shape, generator=g) for k, v in _memory_state().items()}
    pth = _save({"model_state_dict": state}, tmp_path / "m.pth")
    convert_memory(pth, tmp_path / "memory", spec)
    assert load_memory(tmp_path / "memory")[1].bank() == {"dim": D, "slots": 256, "heads": 8, "top_k": 128}


def _drop(state, name):
    return {k: v for k, v in state.items() if k != name}


PHASE1_BAD = {
    "heads": (lambda: _phase1(), dict(heads=8), "memory_config has num_heads=4, but 8 was given"),
    "top_k": (lambda: _phase1(), dict(top_k=8), "memory_config has top_k=4, but 8 was given"),
    "slots": (lambda: _phase1(mem_slots=32), {}, "mem_slots=32, but the memory tensor has 16 slots"),
    "feature_dim": (lambda: _phase1(feature_dim=64), {}, "feature_dim=64, but the memory tensor is 16 x 32"),
    "tensor_dim": (
        lambda: _phase1({**_memory_state(), "q_proj.weight": torch.zeros(D, 16)}),
        {},
        "q_proj.weight: file (32, 16)",
    ),
    "missing": (lambda: _phase1(_drop(_memory_state(), "out_proj.bias")), {}, "missing tensors: out_proj.bias"),
    "no_memory": (lambda: _phase1(_drop(_memory_state(), "memory")), {}, "missing tensor 'memory'"),
    "unexpected": (
        lambda: _phase1({**_memory_state(), "extra.weight": torch.zeros(3)}),
        {},
        "unexpected tensors: extra.weight",
    ),
    "heads_not_dividing": (lambda: _phase1(num_heads=5), {}, "not divisible by heads 5"),
    "top_k_above_slots": (lambda: _phase1(top_k=99), {}, "top_k must be in [1, slots=16]"),
}


@pytest.mark.parametrize("case", list(PHASE1_BAD))
def test_phase1_mismatch_is_a_clear_error(tmp_path, spec, case):
    make, kwargs, message = PHASE1_BAD[case]
    pth = _save(make(), tmp_path / "mirror_phase1.pth")
    with pytest.raises(ModelLoadError) as e:
        convert_memory(pth, tmp_path / "memory", spec, **kwargs)
    assert str(pth) in str(e.value) and message in str(e.value)
    assert not (tmp_path / "memory").exists()


def test_phase1_memory_wider_than_the_backbone_is_refused(tmp_path, spec):
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(tuple(48 if s == D else s for s in v.shape), generator=g) for k, v in _memory_state().items()
    }
    pth = _save(_phase1(state, feature_dim=48), tmp_path / "m.pth")
    with pytest.raises(ModelLoadError, match="memory is 48-dimensional but backbone .* gives 32-dimensional tokens"):
        convert_memory(pth, tmp_path / "memory", spec)


# -- Phase 2 ---------------------------------------------------------------------------------------------------
def _check_detector_weights(model, obj: dict) -> None:
    src = {k.removeprefix("module."): v for k, v in obj["model"].items()}
    ours = model.detector.state_dict()
    for k, v in src.items():
        if k.startswith("memory_bank."):
            assert torch.equal(ours[k], v), k
        elif k.startswith("detector."):
            assert torch.equal(ours[k[len("detector.") :]], v), k
    n_lora = 0
    for k, v in src.items():
        if ".lora_" in k:
            layer = int(k.split("layer.")[1].split(".")[0])
            proj = k.split(".lora_")[0].rsplit(".", 1)[1]
            ab = k.split(".lora_")[1][0]
            assert torch.equal(ours[_our_lora_key(ours, layer, proj, ab)], v), k
            n_lora += 1
    assert n_lora == 2 * 3 * 2  # layers x q/k/v x A/B


def test_phase2_converts_to_a_model_folder_with_the_same_weights(tmp_path, spec):
    obj = _phase2()
    pth = _save(obj, tmp_path / "checkpoint-1999.pth")
    assert inspect_checkpoint(pth) == PHASE2
    res = convert_detector(pth, tmp_path / "model", spec, heads=HEADS, top_k=TOP_K)
    n_backbone = sum(1 for k in obj["model"] if k.startswith("backbone.") and ".lora_" not in k)
    assert res.ignored == n_backbone + 2  # + norm.mean / norm.std
    assert res.checked == n_backbone  # the file's frozen backbone is the source's
    assert res.notes == [REGISTER_NOTE]  # the tiny DINOv3 has 4 register tokens
    assert f"{res.ignored} backbone tensors ignored (loaded from the backbone source)" in res.summary()
    assert res.settings == {"dim": D, "slots": K, "heads": HEADS, "top_k": TOP_K, "lora_r": R, "lora_alpha": 16.0}

    model = load_model(tmp_path / "model")
    cfg = model.config
    assert cfg.detector == "mirror" and cfg.threshold == 0.5 and cfg.protocol.format_align
    assert cfg.params["lora_r"] == R and cfg.params["slots"] == K
    assert (
        cfg.params["perplexity_dim"],
        cfg.params["residual_hidden"],
        cfg.params["residual_dim"],
        cfg.params["hidden"],
    ) == (PER, RES_HIDDEN, RES, HIDDEN)
    assert cfg.training["converted_from"] == str(pth) and cfg.training["epoch"] == 1999
    assert cfg.training["reference_backbone_path"] == "./weight/dinov3-huge"
    _check_detector_weights(model, obj)

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(img)
    scores = score_paths(model, [img], use_cache=False, progress=False)
    assert not scores.errors and 0.0 <= scores.prob[0] <= 1.0


@pytest.mark.parametrize("layer_prefix,module", [("model.", False), ("", True), ("model.", True)])
def test_phase2_layouts_and_module_prefix(tmp_path, spec, layer_prefix, module):
    obj = _phase2(layer_prefix, module=module)
    pth = _save(obj, tmp_path / "checkpoint-best.pth")
    assert inspect_checkpoint(pth) == PHASE2
    res = convert_mirror(pth, tmp_path / "model", spec, heads=HEADS, top_k=TOP_K)
    assert res.kind == PHASE2 and res.notes == [REGISTER_NOTE]
    _check_detector_weights(load_model(tmp_path / "model"), obj)


@pytest.mark.parametrize("envelope", ["state_dict", "model_state_dict", None])
def test_phase2_other_envelopes(tmp_path, spec, envelope):
    state = _phase2()["model"]
    pth = _save(state if envelope is None else {envelope: state}, tmp_path / "c.pth")
    convert_detector(pth, tmp_path / "model", spec, heads=HEADS, top_k=TOP_K)
    _check_detector_weights(load_model(tmp_path / "model"), {"model": state})


def _mutate(change):
    obj = _phase2()
    change(obj["model"])
    return obj


PHASE2_BAD = {
    "missing": (lambda m: m.pop("detector.head.3.bias"), "missing tensors: head.3.bias"),
    "unexpected": (lambda m: m.update({"detector.extra.weight": torch.zeros(2)}), "unexpected tensors: extra.weight"),
    "lora_missing": (
        lambda m: m.pop("backbone.dino.layer.1.base_model.model.attention.v_proj.lora_B.default.weight"),
        "missing tensors: backbone.model.model.layer.1.attention.v_proj.lora_B.default.weight",
    ),
    "lora_extra_layer": (
        lambda m: m.update(
            {"backbone.dino.layer.5.base_model.model.attention.q_proj.lora_A.default.weight": torch.zeros(R, D)}
        ),
        "unexpected tensors: backbone.dino.layer.5.base_model.model.attention.q_proj.lora_A.default.weight",
    ),
    "shape": (
        lambda m: m.update({"memory_bank.out_proj.bias": torch.zeros(D + 1)}),
        "memory_bank.out_proj.bias: file (33,) vs model (32,)",
    ),
}


@pytest.mark.parametrize("case", list(PHASE2_BAD))
def test_phase2_mismatch_is_a_clear_error(tmp_path, spec, case):
    change, message = PHASE2_BAD[case]
    pth = _save(_mutate(change), tmp_path / "checkpoint-0.pth")
    with pytest.raises(ModelLoadError) as e:
        convert_detector(pth, tmp_path / "model", spec, heads=HEADS, top_k=TOP_K)
    assert str(pth) in str(e.value) and message in str(e.value)
    assert not (tmp_path / "model").exists()


def test_phase2_impossible_settings_are_a_clear_error(tmp_path, spec):
    pth = _save(_phase2(), tmp_path / "checkpoint-0.pth")
    with pytest.raises(ModelLoadError, match=r"top_k \(128\) cannot exceed slots \(16\)"):
        convert_detector(pth, tmp_path / "model", spec, heads=HEADS)  # default top-k 128 > 16 slots
    with pytest.raises(ModelLoadError, match="not divisible by heads 3"):
        convert_detector(pth, tmp_path / "model", spec, heads=3, top_k=TOP_K)


def test_phase2_trained_on_another_backbone_warns(tmp_path, spec):
    pth = _save(_phase2(backbone_seed=1), tmp_path / "checkpoint-0.pth")
    res = convert_detector(pth, tmp_path / "model", spec, heads=HEADS, top_k=TOP_K)
    assert any("differ from the backbone source" in n for n in res.notes)


# -- unsafe or unreadable files ------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a folder: the proof that nothing from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("phase", [1, 2])
def test_file_needing_a_full_unpickle_is_refused_and_nothing_runs(tmp_path, spec, phase):
    marker = tmp_path / "payload_ran"
    obj = _phase1() if phase == 1 else _phase2()
    obj["extra"] = _Payload(str(marker))
    pth = _save(obj, tmp_path / "evil.pth")
    for call in (lambda: inspect_checkpoint(pth), lambda: convert_mirror(pth, tmp_path / "out", spec)):
        with pytest.raises(ModelLoadError) as e:
            call()
        assert str(pth) in str(e.value) and "refused" in str(e.value) and "posix.mkdir" in str(e.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unreadable_and_unrelated_files(tmp_path, spec):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable"):
        inspect_checkpoint(text)
    with pytest.raises(ModelLoadError, match="no such file"):
        inspect_checkpoint(tmp_path / "missing.pth")
    other = _save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="neither a MIRROR Phase 1 memory"):
        convert_mirror(other, tmp_path / "out", spec)
    legacy = tmp_path / "legacy.pth"
    torch.save({"model_state_dict": _memory_state()}, legacy, _use_new_zipfile_serialization=False)
    assert inspect_checkpoint(legacy) == PHASE1


# -- command line ---------------------------------------------------------------------------------------------
def test_cli_converts_both_phases(tmp_path, backbone_dir):
    runner = CliRunner()
    p1 = _save(_phase1(), tmp_path / "mirror_phase1.pth")
    res = runner.invoke(
        app, ["convert", "mirror", str(p1), "--out", str(tmp_path / "memory"), "--backbone-source", str(backbone_dir)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote MIRROR memory folder" in res.output
    assert load_memory(tmp_path / "memory")[1].recipe.heads == HEADS

    p2 = _save(_phase2(), tmp_path / "checkpoint-1999.pth")
    res = runner.invoke(
        app,
        [
            "convert",
            "mirror",
            str(p2),
            "--out",
            str(tmp_path / "model"),
            "--backbone-source",
            str(backbone_dir),
            "--heads",
            str(HEADS),
            "--top-k",
            str(TOP_K),
            "--lora-alpha",
            "16",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "wrote model folder" in res.output
        and "backbone tensors ignored (loaded from the backbone source)" in res.output
    )
    _check_detector_weights(load_model(tmp_path / "model"), _phase2())

    res = runner.invoke(
        app,
        [
            "convert",
            "mirror",
            str(p1),
            "--out",
            str(tmp_path / "m2"),
            "--backbone-source",
            str(backbone_dir),
            "--heads",
            "8",
        ],
    )
    assert res.exit_code == 2
    assert "num_heads=4, but 8 was given" in res.output

    res = runner.invoke(app, ["convert", "mirror", "--help"])
    assert res.exit_code == 0 and "Usage" in res.output
