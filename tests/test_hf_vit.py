"""HFViTBackbone on tiny, randomly initialised transformers models (offline, no downloads)."""

from __future__ import annotations

import json
import time

import pytest
import torch
import transformers
from tiny import TINY_VIT, tiny_vit

from aigi.backbones import BackboneSpec, build_backbone, hf_vit
from aigi.backbones.hf_vit import BackboneLoadError, HFViTBackbone
from aigi.errors import ModelLoadError


def tiny_model(kind: str) -> tuple[torch.nn.Module, int]:
    """A tiny random model of one family and its patch size."""
    model, patch, _ = tiny_vit(kind)
    return model, patch


FAMILIES = [
    "dinov2",
    "dinov2_with_registers",
    "dinov3_vit",
    "clip_vision_model",
    "siglip_vision_model",
    "siglip_no_head",
]


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("scale", [1, 2])  # 2: a size other than the config's (position interpolation)
def test_shapes(kind: str, scale: int) -> None:
    model, p = tiny_model(kind)
    side = p * 4 * scale
    backbone = HFViTBackbone.from_model(model).freeze()
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, side, side))
    n = side // p
    assert backbone.dim == 32
    assert tokens.grid == (n, n)
    assert tokens.patches.shape == (2, n * n, 32)
    assert tokens.cls.shape == (2, 32)
    assert torch.isfinite(tokens.patches).all() and torch.isfinite(tokens.cls).all()


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_with_registers", "dinov3_vit"])
def test_dino_tokens_are_the_final_layernormed_cls_and_patches_after_registers(kind: str) -> None:
    model, p = tiny_model(kind)
    registers = getattr(model.config, "num_register_tokens", 0)
    x = torch.randn(2, 3, 4 * p, 4 * p)
    with torch.no_grad():
        tokens = HFViTBackbone.from_model(model)(x)
        hidden = model(pixel_values=x).last_hidden_state
    assert hidden.shape[1] == 1 + registers + 16
    torch.testing.assert_close(tokens.patches, hidden[:, 1 + registers :])
    torch.testing.assert_close(tokens.cls, hidden[:, 0])
    # last_hidden_state is after the final layer norm: each token has ~zero mean over channels
    # (the random init leaves the norm's weight 1 and bias 0)
    assert tokens.patches.mean(-1).abs().max() < 1e-4


def test_clip_tokens() -> None:
    model, _ = tiny_model("clip_vision_model")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = HFViTBackbone.from_model(model)(x)
        out = model(pixel_values=x)
    torch.testing.assert_close(tokens.cls, out.pooler_output)
    with torch.no_grad():
        torch.testing.assert_close(tokens.patches, model.post_layernorm(out.last_hidden_state[:, 1:]))


def test_siglip_global_token() -> None:
    with_head, _ = tiny_model("siglip_vision_model")
    without, _ = tiny_model("siglip_no_head")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = HFViTBackbone.from_model(with_head)(x)
        b = HFViTBackbone.from_model(without)(x)
        torch.testing.assert_close(a.cls, with_head(pixel_values=x).pooler_output)
        torch.testing.assert_close(a.patches, with_head(pixel_values=x).last_hidden_state)
    torch.testing.assert_close(b.cls, b.patches.mean(1))


def test_default_preprocess() -> None:
    dino = HFViTBackbone.from_model(tiny_model("dinov2")[0]).preprocess
    assert dino.size == 224 and dino.mean == (0.485, 0.456, 0.406)
    clip = HFViTBackbone.from_model(tiny_model("clip_vision_model")[0]).preprocess
    assert clip.size == 32 and clip.mean == (0.48145466, 0.4578275, 0.40821073)
    siglip = HFViTBackbone.from_model(tiny_model("siglip_vision_model")[0]).preprocess
    assert siglip.size == 32 and siglip.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("kind", ["dinov2_with_registers", "dinov3_vit", "siglip_vision_model"])
def test_from_spec_matches_in_memory_model(kind: str, tmp_path) -> None:
    model, p = tiny_model(kind)
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 4 * p, 4 * p)
    with torch.no_grad():
        want = HFViTBackbone.from_model(model)(x)
        for backbone in (
            HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path))),
            build_backbone(BackboneSpec(family="hf_vit", source=str(tmp_path))),
        ):
            assert not backbone.training
            got = backbone(x)
            torch.testing.assert_close(got.patches, want.patches)
            torch.testing.assert_close(got.cls, want.cls)
            assert got.grid == want.grid


def test_preprocessor_config_in_folder_wins(tmp_path) -> None:
    model, _ = tiny_model("dinov2")
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    backbone = HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path)))
    assert backbone.preprocess.mean == (0.1, 0.2, 0.3) and backbone.preprocess.std == (0.4, 0.5, 0.6)
    assert backbone.preprocess.size == 224


def test_dtype_option(tmp_path) -> None:
    model, p = tiny_model("dinov2")
    model.save_pretrained(tmp_path)
    backbone = HFViTBackbone.from_spec(
        BackboneSpec(family="hf_vit", source=str(tmp_path), options={"dtype": "bfloat16"})
    )
    assert next(backbone.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        tokens = backbone(torch.randn(1, 3, 2 * p, 2 * p))
    assert tokens.patches.dtype == torch.float32 and tokens.patches.shape == (1, 4, 32)
    with pytest.raises(ValueError, match="dtype"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path), options={"dtype": "int8"}))
    with pytest.raises(ValueError, match="unknown hf_vit options"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path), options={"layer": 3}))


@pytest.mark.parametrize("name", ["CLIP", "Siglip"])
def test_full_checkpoint_loads_its_vision_tower(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    text = dict(**TINY_VIT, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cfg = getattr(transformers, f"{name}Config")(
        text_config=text, vision_config=dict(**TINY_VIT, image_size=32, patch_size=8)
    )
    full = getattr(transformers, f"{name}Model")(cfg).eval()
    full.save_pretrained(tmp_path)
    backbone = HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path)))
    assert isinstance(backbone.model, getattr(transformers, f"{name}VisionModel"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = backbone(x)
        want = HFViTBackbone.from_model(full)(x)  # from_model also takes the tower of a full model
        torch.testing.assert_close(got.cls, full.vision_model(pixel_values=x).pooler_output)
    torch.testing.assert_close(got.patches, want.patches)
    assert got.patches.shape == (2, 16, 32) and backbone.preprocess.size == 32


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(OSError, match="could not load backbone '.*no_such_model': no such folder"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(missing)))
    with pytest.raises(ValueError, match="needs a source"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit"))


def test_unknown_model_type_is_a_clear_error(tmp_path) -> None:
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT, image_size=32, patch_size=8))
    vit.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'vit'.*supported: dinov2"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path)))
    with pytest.raises(ValueError, match="model_type 'vit'"):
        HFViTBackbone.from_model(vit)


def test_folder_without_weights_is_a_clear_error(tmp_path) -> None:
    model, _ = tiny_model("dinov2")
    model.config.save_pretrained(tmp_path)  # config only
    with pytest.raises(OSError, match="could not load backbone"):
        HFViTBackbone.from_spec(BackboneSpec(family="hf_vit", source=str(tmp_path)))


NOT_CACHED = "nonexistent-org/nonexistent-model-xyz"


@pytest.fixture
def hub_online(monkeypatch):
    """Offline mode off, whatever the environment says (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    for var in hf_vit.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_vit.hub_constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def _load_error(source: str) -> tuple[BackboneLoadError, float]:
    start = time.perf_counter()
    with pytest.raises(BackboneLoadError) as info:
        build_backbone(BackboneSpec(family="hf_vit", source=source), allow_download=True)
    return info.value, time.perf_counter() - start


@pytest.mark.parametrize("var", hf_vit.OFFLINE_VARS)
def test_uncached_hub_id_offline_fails_at_once_in_one_line(var: str, hub_online, capfd) -> None:
    hub_online.setenv(var, "1")
    hub_online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were the Hub asked, it would be refused, not answered
    err, elapsed = _load_error(NOT_CACHED)
    msg = str(err)
    assert elapsed < 5
    assert msg == (
        f"could not load backbone '{NOT_CACHED}': not in the local Hugging Face cache and offline mode is on "
        f"({var} is set); pass a local model folder, or unset {var} to download it"
    )
    assert isinstance(err, ModelLoadError) and isinstance(err, ValueError) and isinstance(err, OSError)
    assert "Retry" not in capfd.readouterr().err


def test_uncached_hub_id_with_the_hub_unreachable_fails_at_once_in_one_line(hub_online, capfd, caplog) -> None:
    hub_online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9: refused at once
    err, elapsed = _load_error(NOT_CACHED)
    msg = str(err)
    assert elapsed < 5
    assert msg.startswith(
        f"could not load backbone '{NOT_CACHED}': cannot reach the Hugging Face Hub at http://127.0.0.1:9 ("
    )
    assert msg.endswith(") and it is not in the local cache; check the network, or pass a local model folder")
    assert "\n" not in msg and isinstance(err, ModelLoadError)
    assert "Retry" not in capfd.readouterr().err and "Retry" not in caplog.text


@pytest.fixture
def cached_id(tmp_path, monkeypatch) -> str:
    """A tiny DINOv2 as a hub id in a Hugging Face cache of its own (the layout huggingface_hub writes)."""
    model, _ = tiny_model("dinov2")
    repo = tmp_path / "hub" / "models--tiny-org--tiny-dino"
    commit = "0" * 40
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_vit.hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return "tiny-org/tiny-dino"


@pytest.mark.parametrize("offline", [True, False])
def test_cached_hub_id_loads_without_the_hub(cached_id: str, offline: bool, hub_online) -> None:
    if offline:
        hub_online.setenv("HF_HUB_OFFLINE", "1")
    else:  # not offline, but the Hub cannot be reached: the cached copy is used, at once
        hub_online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    backbone = build_backbone(BackboneSpec(family="hf_vit", source=cached_id))
    assert time.perf_counter() - start < 5
    assert backbone.dim == 32 and not backbone.training
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 28, 28)).patches.shape == (1, 4, 32)


def test_cli_prints_one_error_line_for_an_uncached_hub_id_offline(labelled_images, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from aigi.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    res = CliRunner().invoke(
        app,
        [
            "train",
            "univfd",
            "--data",
            str(labelled_images),
            "--out",
            str(tmp_path / "m"),
            "--backbone",
            "hf_vit",
            "--backbone-source",
            NOT_CACHED,
        ],
    )
    assert time.perf_counter() - start < 5
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: could not load backbone '{NOT_CACHED}': not in the local"
    ), res.output


def test_mdmf_trains_and_scores_on_a_local_vit_folder(labelled_images, tmp_path) -> None:
    """MDMF's patch unit on a ViT is the native token (``--pool 1``): train from a local DINOv2 folder, then detect."""
    import json

    from typer.testing import CliRunner

    from aigi.cli import app

    model, _ = tiny_model("dinov2")
    model.save_pretrained(tmp_path / "vit")
    runner = CliRunner()
    out = tmp_path / "mdmf_vit"
    res = runner.invoke(
        app,
        [
            "train",
            "mdmf",
            "--data",
            str(labelled_images),
            "--val",
            str(labelled_images),
            "--out",
            str(out),
            "--backbone",
            "hf_vit",
            "--backbone-source",
            str(tmp_path / "vit"),
            "--pool",
            "1",
            "--steps",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"]["family"] == "hf_vit" and cfg["params"]["pool"] == 1 and cfg["params"]["score_form"] == "log"
    res = runner.invoke(app, ["detect", "--model", str(out), "--json", str(labelled_images / "1_fake")])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert len(rows) == 6 and all(0.0 <= r["prob_generated"] <= 1.0 for r in rows)
