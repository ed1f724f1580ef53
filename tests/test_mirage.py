"""MiraGe (``mirage``, MaPLe prompts in both CLIP towers) and its offline variant (``mirage-anchors``), on a tiny
random CLIP and a character-level tokenizer built here: prompt insertion, where gradients go, the memory bank, the
objective, model folders and the errors a user without CLIP meets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import EFFNET_SPEC, tiny_clip, tiny_clip_folder, tiny_vit_folder
from typer.testing import CliRunner

from aigi.backbones import BackboneSpec, build_backbone
from aigi.checkpoints import ModelConfig, ModelLoadError, build_model, load_model, read_safetensors, save_model
from aigi.cli import app
from aigi.detectors.discriminative import (
    DiscriminativeObjective,
    FeatureMemory,
    anchor_alignment,
    supervised_contrast,
)
from aigi.engine.trainer import train
from aigi.errors import ConfigError

runner = CliRunner()
PROTOCOL = {"max_short_side": None, "crop": 32}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


def _clip_spec(folder) -> BackboneSpec:
    return BackboneSpec(family="hf_clip", source=str(folder))


def _mirage(clip_dir, **params):
    torch.manual_seed(0)
    return build_model(ModelConfig(detector="mirage", params=params, backbone=_clip_spec(clip_dir)))


def _pixels(n=2, side=32):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(3))


def _sequence_lengths(layers) -> list[int]:
    lengths = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    return lengths


# -- the backbone ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["eos-id", "eos-largest-id"])
def test_the_text_tower_without_context_is_clips_own(legacy, tmp_path):
    backbone = build_backbone(_clip_spec(tiny_clip_folder(tmp_path, legacy)))
    clip, _ = tiny_clip(legacy=legacy)
    ids, eos = backbone.tokenize(["a photo of a real.", "a photo of a fake image."])
    assert (ids[torch.arange(2), eos] == backbone.tokenizer.convert_tokens_to_ids("<|endoftext|>")).all()
    with torch.no_grad():
        ours = backbone.text_features(ids, eos)
        theirs = clip.get_text_features(input_ids=ids).pooler_output
        start = clip.text_model.embeddings.token_embedding(ids[:1, 1:3])[0]
        spliced = backbone.text_features(ids, eos, context=start)  # the context the tokens would have given
        cls_token, patches = backbone.prompted_vision(_pixels())
        plain = clip.vision_model(pixel_values=_pixels())
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.equal(spliced, ours)
    assert torch.allclose(cls_token, plain.pooler_output, atol=1e-6) and patches.shape == (2, 16, 48)


def test_siglip_and_missing_clips_are_refused_in_one_line(tmp_path):
    siglip = tiny_vit_folder(tmp_path, "siglip_vision_model")
    with pytest.raises(ConfigError, match="hf_clip needs a whole CLIP .*SigLIP"):
        build_backbone(BackboneSpec(family="hf_clip", source=str(siglip)))
    with pytest.raises(OSError, match="could not load backbone '/no/such/clip': no such folder"):
        build_backbone(BackboneSpec(family="hf_clip", source="/no/such/clip"))


# -- mirage: prompts in both towers ---------------------------------------------------------------------------------
def test_prompts_are_inserted_in_both_towers_to_the_configured_depth(clip_dir):
    det = _mirage(clip_dir, n_ctx=2, prompt_depth=2).detector
    vision = _sequence_lengths(det.backbone.model.encoder.layers)
    text = _sequence_lengths(det.backbone.text_model.encoder.layers)
    with torch.no_grad():
        out = det(_pixels())
    assert vision == [1 + 16 + 2] * 3  # CLS, a 4x4 grid of patches, two prompt tokens
    assert text == [det.prompt_ids.shape[1]] * 3  # the context replaces tokens: the length is the prompt's
    assert out.logit.shape == (2,) and out.patch_map.shape == (2, 4, 4) and det.anchors().shape == (2, 24)
    assert len(det.deep_ctx) == 1 and len(det.vision_proj) == 2


def test_each_layer_gets_its_own_prompts_in_the_right_places(clip_dir):
    det = _mirage(clip_dir, n_ctx=2, prompt_depth=3).detector
    seen = {}
    for tower, layers in (
        ("vision", det.backbone.model.encoder.layers),
        ("text", det.backbone.text_model.encoder.layers),
    ):
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda m, args, key=(tower, i): seen.__setitem__(key, args[0].detach()))
    with torch.no_grad():
        det(_pixels())
        vision_prompts = [proj(ctx) for proj, ctx in zip(det.vision_proj, [det.ctx, *det.deep_ctx])]
        first = det.backbone.model.pre_layrnorm(vision_prompts[0])
    assert torch.allclose(seen["vision", 0][0, 17:], first, atol=1e-6)  # appended after CLS + 16 patches
    for i in (1, 2):
        assert torch.equal(seen["vision", i][0, 17:], vision_prompts[i])  # replaced, not appended
        assert torch.equal(seen["text", i][0, 1:3], det.deep_ctx[i - 1])  # the tokens after the start token
    assert not torch.equal(seen["text", 1][0, 1:3], seen["text", 2][0, 1:3])


def test_deep_prompts_reach_both_towers_through_the_coupling(clip_dir):
    det = _mirage(clip_dir, prompt_depth=3).detector
    with torch.no_grad():
        before_img, before_text = det.embed(_pixels()), det.anchors()
        det.deep_ctx[1].add_(torch.randn(det.deep_ctx[1].shape))  # layer 2 text prompts; vision: their projection
        after_img, after_text = det.embed(_pixels()), det.anchors()
    assert not torch.allclose(before_img, after_img) and not torch.allclose(before_text, after_text)


def test_gradients_reach_only_the_prompts_and_their_projections(clip_dir):
    det = _mirage(clip_dir, prompt_depth=3).detector.train()
    features, anchors, scale = det.training_outputs(_pixels(4))
    loss, _ = DiscriminativeObjective(1.0, 1.0, 0.07, 8)(features, torch.tensor([0, 1, 0, 1]), anchors, scale)
    loss.backward()
    learned = {n for n, p in det.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert learned == {n for n, _ in det.named_parameters() if n.startswith(("ctx", "deep_ctx.", "vision_proj."))}
    assert all(not p.requires_grad for p in det.backbone.parameters())


def test_mirage_needs_a_text_tower_and_enough_layers(clip_dir):
    with pytest.raises(ModelLoadError, match="mirage needs a whole CLIP .*use mirage-anchors"):
        build_model(ModelConfig(detector="mirage", backbone=EFFNET_SPEC))
    with pytest.raises(ModelLoadError, match="prompt_depth 9 exceeds the 3 layers"):
        _mirage(clip_dir)
    with pytest.raises(ModelLoadError, match="fewer than n_ctx=4 tokens"):
        _mirage(clip_dir, prompt_depth=2, n_ctx=4, ctx_init="a")


def test_a_mirage_model_folder_round_trips_without_the_frozen_clip(clip_dir, tmp_path):
    model = _mirage(clip_dir, prompt_depth=2)
    with torch.no_grad():
        model.detector.deep_ctx[0].add_(0.5)
        expected = model.detector(_pixels()).logit
    save_model(model, tmp_path / "m")
    tensors, _ = read_safetensors(tmp_path / "m" / "model.safetensors")
    assert not any(k.startswith("backbone.") for k in tensors) and "ctx" in tensors
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m").detector(_pixels()).logit, expected)


# -- the objective and the memory -----------------------------------------------------------------------------------
def test_the_memory_is_a_fifo_queue_of_features_and_labels():
    memory = FeatureMemory(5)
    for start in (0, 3):
        memory.push(torch.arange(start, start + 3.0)[:, None].repeat(1, 2), torch.tensor([0, 1, 0]))
    feats, labels = memory.contents(torch.zeros(1, 2))
    assert feats[:, 0].tolist() == [1, 2, 3, 4, 5] and labels.tolist() == [1, 0, 0, 1, 0]
    off = FeatureMemory(0)
    off.push(torch.ones(3, 2), torch.ones(3))
    assert len(off) == 0 and off.contents(torch.zeros(1, 2))[0].shape == (0, 2)


def test_the_memory_enters_the_contrast_and_is_filled_after_the_loss():
    real = F.normalize(torch.tensor([[1.0, 0.1]]), dim=-1)
    fake = F.normalize(torch.tensor([[0.1, 1.0]]), dim=-1)
    batch, labels = torch.cat([real, fake]), torch.tensor([0, 1])
    assert supervised_contrast(batch, labels) == 0  # alone in its class: no positive, nothing to pull
    with_bank = supervised_contrast(batch, labels, torch.cat([real, fake]), labels)
    assert with_bank > 0  # the memory gave each image a positive and another negative
    objective = DiscriminativeObjective(0.0, 1.0, 0.07, 4)
    first, _ = objective(batch, labels, None, None)
    second, _ = objective(batch, labels, None, None)
    assert first == 0 and torch.isclose(second, with_bank) and len(objective.memory) == 4


def test_the_loss_is_lower_for_separated_features_than_for_mixed_ones():
    anchors = torch.eye(2)
    labels = torch.tensor([0, 0, 1, 1])
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * 0.05
    separated = F.normalize(anchors[labels] + noise, dim=-1)
    mixed = F.normalize(anchors[torch.tensor([0, 1, 0, 1])] + noise, dim=-1)
    for anchor_weight, contrast_weight in ((1, 0), (0, 1), (1, 1)):
        objective = DiscriminativeObjective(anchor_weight, contrast_weight, 0.07, 0)
        assert objective(separated, labels, anchors, 10.0)[0] < objective(mixed, labels, anchors, 10.0)[0]
    assert anchor_alignment(separated, labels, anchors, 10.0) < 0.01


# -- mirage-anchors: the offline variant ----------------------------------------------------------------------------
def test_the_offline_variant_trains_its_head_anchors_and_chosen_blocks_only():
    torch.manual_seed(0)
    params = {"train_from": "net.stages.3", "embed_dim": 8}
    det = build_model(ModelConfig(detector="mirage-anchors", params=params, backbone=EFFNET_SPEC)).detector.train()
    features, anchors, scale = det.training_outputs(_pixels(4, 64))
    loss, _ = DiscriminativeObjective(1.0, 1.0, 0.07, 0)(features, torch.tensor([0, 1, 0, 1]), anchors, scale)
    loss.backward()
    graded = {n for n, p in det.named_parameters() if p.grad is not None}
    assert "anchor_weights" in graded and any(n.startswith("head.") for n in graded)
    backbone = {n for n in graded if n.startswith("backbone.")}
    early = ("backbone.net.stem", "backbone.net.stages.0", "backbone.net.stages.1", "backbone.net.stages.2")
    assert any(n.startswith("backbone.net.stages.3") for n in backbone) and not any(
        n.startswith(early) for n in backbone
    )
    assert all(not p.requires_grad for n, p in det.named_parameters() if n.startswith(early))


def test_the_offline_variant_says_which_it_is_and_uses_clip_text_anchors_when_there_are_some(clip_dir, tmp_path):
    torch.manual_seed(0)
    learned = build_model(ModelConfig(detector="mirage-anchors", params={"embed_dim": 8}, backbone=EFFNET_SPEC))
    save_model(learned, tmp_path / "learned")
    _, header = read_safetensors(tmp_path / "learned" / "model.safetensors")
    assert header["anchors"] == "learned" and "not the published" in header["variant"]
    text = build_model(ModelConfig(detector="mirage-anchors", backbone=_clip_spec(clip_dir))).detector
    backbone = text.backbone
    ids, eos = backbone.tokenize(["a photo of a real.", "a photo of a fake."])
    with torch.no_grad():
        assert torch.allclose(text.anchors(), F.normalize(backbone.text_features(ids, eos), dim=-1))
        cls_token = backbone(_pixels()).cls
        assert torch.allclose(text.embed(_pixels()), F.normalize(backbone.visual_projection(cls_token), dim=-1))
    assert not text.learned_anchors and "anchor_weights" not in text.trainable_state_dict()
    saved = text.trainable_state_dict()
    assert any(k.startswith("backbone.model.") for k in saved)  # the vision tower fine-tunes
    assert not any(
        k.startswith(("backbone.text_model", "backbone.text_projection", "backbone.logit_scale")) for k in saved
    )


def test_without_the_anchor_loss_the_anchors_become_the_class_means(labelled_images, tmp_path):
    settings = {
        "data": labelled_images,
        "out": tmp_path / "m",
        "spec": EFFNET_SPEC.model_dump(mode="json"),
        "eval_protocol": {"max_short_side": None, "crop": 64},
        "epochs": 1,
        "batch_size": 6,
        "num_workers": 0,
        "augment": {"crop": 64},
        "anchor_weight": 0.0,
        "memory_size": 64,
        "params": {"embed_dim": 8},
    }
    means = {}
    original = DiscriminativeObjective.class_means

    def spy(self, like):
        means["last"] = original(self, like)
        return means["last"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiscriminativeObjective, "class_means", spy)
        model = train("mirage-anchors", settings, progress=False)
    log = json.loads((tmp_path / "m" / "train_log.jsonl").read_text().splitlines()[-1])
    assert "anchor_loss" not in log and log["contrast_loss"] >= 0
    assert not model.detector.anchor_weights.requires_grad
    assert torch.allclose(model.detector.anchors(), means["last"], atol=1e-6)
    for bad, why in (({"memory_size": 0}, "memory_size > 0"), ({"contrast_weight": 0.0}, "nothing would learn")):
        with pytest.raises(ConfigError, match=why):
            train("mirage-anchors", {**settings, **bad, "out": tmp_path / "refused"}, progress=False)


def test_mirage_without_clip_weights_fails_in_one_line(labelled_images, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # a cached CLIP would be used
    res = runner.invoke(app, ["train", "mirage", "--data", str(labelled_images), "--out", str(tmp_path / "m")])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: could not load backbone 'openai/clip-vit-large-patch14': not in the local")
