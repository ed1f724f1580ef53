"""Hostile model and memory folders (issue #11): sizes out of bounds, configs that would load and give wrong results,
weights files whose header disagrees with the config, JSON that is not a settings file, and backbones that would be
downloaded. Each must fail at load with one line naming the file, without allocating what the config asks for and
without touching the network; and saving the same weights twice gives the same bytes."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny import EFFNET_SPEC, SMALL_PROTOCOL

from aigi.backbones import hf_vit
from aigi.checkpoints import ModelConfig, build_model, load_model, save_model, save_safetensors
from aigi.detectors.memory_bank import MemoryBank
from aigi.detectors.mirror import Mirror
from aigi.detectors.mirror_recipe import MemoryConfig, MemorySettings, load_memory, save_memory
from aigi.errors import ModelLoadError

MIRROR_PARAMS = dict(slots=8, heads=2, top_k=4, lora_r=0, perplexity_dim=4, residual_hidden=8, residual_dim=4, hidden=8)


def _folder(tmp_path, detector: str = "univfd", params: dict | None = None, name: str = "m"):
    model = build_model(
        ModelConfig(detector=detector, params=params or {}, backbone=EFFNET_SPEC, protocol=SMALL_PROTOCOL)
    )
    return save_model(model, tmp_path / name)


def _edit_config(folder, edit) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))  # json.dumps writes NaN as the (non-standard) NaN literal, as a hand edit might


def _one_line_error(folder, match: str) -> str:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(folder) in msg
    return msg


@pytest.fixture(scope="module")
def univfd_folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("univfd"))


@pytest.fixture()
def univfd(univfd_folder, tmp_path):
    import shutil

    return shutil.copytree(univfd_folder, tmp_path / "copy")


# -- config values that would load and give wrong results, or allocate without bound --------------------------------
@pytest.mark.parametrize(
    "where, value",
    [
        (("threshold",), 5),
        (("threshold",), -1),
        (("threshold",), float("nan")),
        (("protocol", "crop"), 60000),
        (("protocol", "crop"), 4096),  # within the first bounds, yet 4.2 GB of activations per image
        (("protocol", "crop"), -5),
        (("protocol", "max_short_side"), -5),
        (("protocol", "format_align"), "no"),
        (("backbone", "preprocess"), {"size": 40000}),
        (("backbone", "preprocess"), {"size": 4096}),
        (("backbone", "preprocess"), {"size": 64, "mean": [float("nan"), 0, 0]}),
    ],
)
def test_config_values_out_of_bounds_fail_at_load(univfd, where, value):
    def edit(cfg):
        node = cfg
        for key in where[:-1]:
            node = node.setdefault(key, {})
        node[where[-1]] = value

    _edit_config(univfd, edit)
    start = time.perf_counter()
    _one_line_error(univfd, f"config.json: invalid model config \\({where[0]}")
    assert time.perf_counter() - start < 5


def test_backbone_booleans_are_strict(univfd):
    _edit_config(univfd, lambda cfg: cfg["backbone"]["options"].update(pretrained="no"))
    with pytest.raises(
        ModelLoadError, match="config.json: EfficientNet-Lite0 option pretrained must be true or false, got 'no'"
    ):
        load_model(univfd)


@pytest.mark.parametrize(
    "detector, params, field",
    [
        ("mirror", {"slots": 6_000_000}, "slots"),
        ("mirror", {"slots": 1e12}, "slots"),
        ("mirror", {"hidden": 1e10}, "hidden"),
        ("mirror", {"residual_hidden": -1}, "residual_hidden"),
        ("mdmf", {"proj_hidden": 6_000_000}, "proj_hidden"),
        ("mdmf", {"rff_features": 1e9}, "rff_features"),
    ],
)
def test_detector_sizes_are_bounded(univfd, detector, params, field):
    _edit_config(univfd, lambda cfg: cfg.update(detector=detector, params=params))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"invalid {detector} hyper-parameters: {field}: "):
        load_model(univfd)
    assert time.perf_counter() - start < 5


# -- the weights file's header is checked before the detector is built ----------------------------------------------
@pytest.fixture()
def built_on(monkeypatch):
    """The default device of every Mirror and MemoryBank construction ('meta' for a shape-only skeleton)."""
    devices = []
    for cls in (Mirror, MemoryBank):
        original = cls.__init__

        def spy(self, *args, _original=original, **kwargs):
            devices.append(torch.empty(0).device.type)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    return devices


def _strip_metadata(weights) -> None:
    """Rewrite a weights file without its settings metadata, as files written before it was recorded are."""
    save_safetensors(load_file(str(weights)), weights)


@pytest.mark.parametrize(
    "old_file, match",
    [
        (False, "memory_bank.slots: config.json says 1000000, the weights were made with 8"),
        (True, r"memory_bank.memory: file \(8, 112\) vs model \(1000000, 112\)"),
    ],
)
def test_a_config_larger_than_its_weights_fails_before_anything_is_allocated(tmp_path, built_on, old_file, match):
    folder = _folder(tmp_path, "mirror", {**MIRROR_PARAMS, "lora_r": 2})
    if old_file:
        _strip_metadata(folder / "model.safetensors")
    _edit_config(folder, lambda cfg: cfg["params"].update(slots=1_000_000))  # within bounds, but not what is stored
    built_on.clear()
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(folder)
    assert "model.safetensors does not match its config" in str(info.value)
    assert built_on and set(built_on) == {"meta"}  # only the skeleton was built


def test_lora_adapters_are_checked_before_building(tmp_path, built_on):
    folder = _folder(tmp_path, "mirror", {**MIRROR_PARAMS, "lora_r": 2})
    _edit_config(folder, lambda cfg: cfg["params"].update(lora_r=64))
    built_on.clear()
    with pytest.raises(ModelLoadError, match=r"shape mismatch: backbone\..*lora_A.default.weight: file \(2, "):
        load_model(folder)
    assert set(built_on) == {"meta"}


def test_a_matching_mirror_folder_still_loads(tmp_path):
    folder = _folder(tmp_path, "mirror", {**MIRROR_PARAMS, "lora_r": 2})
    loaded = load_model(folder)
    assert loaded.detector.memory_bank.memory.shape == (8, 112)
    assert loaded.detector.lora_modules


# -- the MIRROR memory folder gets the same checks -------------------------------------------------------------------
def _memory_folder(tmp_path):
    bank = MemoryBank(112, slots=8, heads=2, top_k=4)
    config = MemoryConfig(
        backbone=EFFNET_SPEC, protocol=SMALL_PROTOCOL, dim=112, recipe=MemorySettings(slots=8, heads=2, top_k=4)
    )
    folder = tmp_path / "memory"
    folder.mkdir()
    save_memory(bank, config, folder)
    return folder


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda cfg: cfg["recipe"].update(slots=6_000_000), "invalid memory config \\(recipe.slots"),
        (lambda cfg: cfg.update(dim=10**10), "invalid memory config \\(dim"),
        (lambda cfg: cfg["protocol"].update(crop=60000), "invalid memory config \\(protocol.crop"),
    ],
)
def test_memory_folder_sizes_are_bounded(tmp_path, edit, match):
    folder = _memory_folder(tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(ModelLoadError, match=match):
        load_memory(folder)


def test_memory_folder_header_is_checked_before_the_bank_is_built(tmp_path, built_on):
    folder = _memory_folder(tmp_path)
    _strip_metadata(folder / "memory.safetensors")
    _edit_config(folder, lambda cfg: cfg["recipe"].update(slots=1_000_000))
    built_on.clear()
    with pytest.raises(ModelLoadError, match=r"memory: file \(8, 112\) vs model \(1000000, 112\)"):
        load_memory(folder)
    assert set(built_on) == {"meta"}


# -- JSON that is not a settings file --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, match",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ('{"detector": "univfd", "note": "café"}'.encode("latin-1"), "not UTF-8"),
    ],
)
def test_json_that_is_not_a_settings_file_is_one_line_naming_it(univfd, tmp_path, content, match):
    (univfd / "config.json").write_bytes(content)
    _one_line_error(univfd, match)
    memory = _memory_folder(tmp_path)
    (memory / "config.json").write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_memory(memory)
    assert str(memory / "config.json") in str(info.value)


def test_latin1_preprocessor_config_of_a_backbone_folder_names_the_file(tmp_path):
    from tiny import tiny_vit_folder

    from aigi.backbones import BackboneSpec, build_backbone

    folder = tiny_vit_folder(tmp_path)
    (folder / "preprocessor_config.json").write_bytes('{"image_mean": "é"}'.encode("latin-1"))
    with pytest.raises(ModelLoadError, match="preprocessor_config.json: not a JSON text file") as info:
        build_backbone(BackboneSpec(family="hf_vit", source=str(folder)))
    assert "\n" not in str(info.value)


# -- a model folder does not make aigi contact the network -----------------------------------------------------------
_NETWORK: list[list[str]] = []  # the events of the test now listening (an audit hook cannot be removed)


def _audit(event: str, args) -> None:
    if _NETWORK and event in ("socket.connect", "socket.getaddrinfo"):
        _NETWORK[-1].append(event)


sys.addaudithook(_audit)


@pytest.fixture()
def network_events(monkeypatch, tmp_path):
    """Offline mode off (as on a machine where nobody set it), an empty Hugging Face cache, downloads not allowed;
    yields the list of connection attempts made during the test."""
    for var in (*hf_vit.OFFLINE_VARS, "AIGI_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_vit.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_vit.hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were the Hub asked, it would be refused at once
    events: list[str] = []
    _NETWORK.append(events)
    yield events
    _NETWORK.remove(events)


def _hub_model_folder(univfd):
    _edit_config(univfd, lambda cfg: cfg.update(backbone={"family": "hf_vit", "source": "some-org/some-model"}))
    return univfd


def test_a_model_folder_naming_a_hub_id_is_local_only(univfd, network_events):
    folder = _hub_model_folder(univfd)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    msg = str(info.value)
    assert time.perf_counter() - start < 5
    assert network_events == []
    assert "\n" not in msg and "some-org/some-model" in msg and "not in the local Hugging Face cache" in msg
    assert "--allow-download" in msg and "AIGI_ALLOW_DOWNLOAD=1" in msg


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_downloads_can_be_allowed(univfd, network_events, monkeypatch, how):
    folder = _hub_model_folder(univfd)
    if how == "environment":
        monkeypatch.setenv("AIGI_ALLOW_DOWNLOAD", "1")
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:9"):
        load_model(folder, allow_download=True if how == "argument" else None)
    assert network_events  # it did try


# -- the same weights give the same bytes ---------------------------------------------------------------------------
def test_saving_the_same_model_twice_gives_identical_files(tmp_path):
    model = build_model(
        ModelConfig(detector="mirror", params=MIRROR_PARAMS, backbone=EFFNET_SPEC, protocol=SMALL_PROTOCOL)
    )
    extra = {f"note_{c}": c for c in "zyxwvu"}  # more keys: a random order would show at once
    first = save_model(model, tmp_path / "a", extra)
    second = save_model(model, tmp_path / "b", extra)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert torch.equal(load_model(first).detector.head[0].weight, model.detector.head[0].weight)


def test_saving_the_same_memory_twice_gives_identical_files(tmp_path):
    (tmp_path / "a").mkdir()
    first = _memory_folder(tmp_path / "a")
    bank, config = load_memory(first)
    second = tmp_path / "b"
    second.mkdir()
    save_memory(bank, config, second)
    assert (first / "memory.safetensors").read_bytes() == (second / "memory.safetensors").read_bytes()


@pytest.mark.parametrize("flag", [[], ["--allow-download"]])
def test_cli_loads_a_model_folder_local_only_unless_told(univfd, network_events, tmp_path, flag):
    from PIL import Image
    from typer.testing import CliRunner

    from aigi.cli import app

    folder = _hub_model_folder(univfd)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    res = CliRunner().invoke(app, ["detect", "--model", str(folder), str(tmp_path / "x.png"), *flag])
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = [text for text in res.output.splitlines() if text.startswith("error:")]
    if flag:
        assert "cannot reach the Hugging Face Hub" in line and network_events
    else:
        assert "--allow-download" in line and network_events == []


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8])
def test_weights_of_the_wrong_dtype_are_refused(univfd, dtype):
    from safetensors.torch import load_file, save_file

    weights = univfd / "model.safetensors"
    state = {k: v.to(dtype) for k, v in load_file(weights).items()}  # right names and shapes: BOOL said "generated 1.0"
    save_file(state, weights)
    _one_line_error(univfd, "does not match its config \\(univfd\\): dtype mismatch: .*file (BOOL|I8) vs model F32")


def test_a_model_folder_whose_path_is_not_utf8_loads(univfd, tmp_path):
    import os
    import shutil

    odd = os.path.join(os.fsencode(tmp_path), b"probe_\x1b[2J\xff")
    shutil.copytree(univfd, os.fsdecode(odd))
    model = load_model(os.fsdecode(odd))  # the safetensors library opens only UTF-8 paths
    assert model.config.detector == "univfd"
