"""ONNX export and the onnxruntime path: the same logits as PyTorch on real photos and generated images (within
1e-4), the shipped model scored in onnxruntime by default (its graph exported into the cache once) with PyTorch's
verdicts, a folder without model.onnx in PyTorch unless asked (then exported once), a folder's own model.onnx used, heatmaps through onnxruntime, and clear refusals."""

import json

import numpy as np
import onnx
import pytest
import torch
from serving import SHARED_TEST
from typer.testing import CliRunner

from aigi import api, onnx_runtime
from aigi.cli import app
from aigi.data.decode import load_image
from aigi.onnx_runtime import OnnxDetector, export, with_onnx_runtime

runner = CliRunner()
REAL = sorted((SHARED_TEST / "0_real").glob("*"))[:3]
FAKE = sorted(p for p in (SHARED_TEST / "1_fake").rglob("*") if p.is_file())[:3]


@pytest.fixture(scope="module")
def shipped():
    return api.load(runtime="torch")


@pytest.fixture(scope="module")
def exported(shipped, tmp_path_factory):
    return export(shipped, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _pixels(model, paths):
    pre = model.detector.backbone.preprocess
    crops = []
    for p in paths:
        dec = load_image(p)
        crops.append(model.config.protocol.apply(dec.image, dec.format, pre))
    return torch.stack([c if c.dim() == 3 else c[0] for c in crops])


def test_real_images_give_the_same_logits_and_maps_within_1e_4(shipped, exported):
    assert REAL and FAKE, f"the shared test images are missing under {SHARED_TEST}"
    graph = onnx.load(str(exported))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    pixels = _pixels(shipped, [*REAL, *FAKE])
    with torch.inference_mode():
        ref = shipped.detector(pixels)
    got = OnnxDetector(exported, shipped.detector)(pixels)
    assert torch.allclose(got.logit, ref.logit, atol=1e-4)
    assert got.patch_map.shape == ref.patch_map.shape and torch.allclose(got.patch_map, ref.patch_map, atol=1e-4)
    one = OnnxDetector(exported, shipped.detector)(pixels[:1])  # another batch size, same graph
    assert torch.allclose(one.logit, ref.logit[:1], atol=1e-4)


def test_the_shipped_model_runs_in_onnxruntime_by_default_exported_once_with_pytorchs_verdicts(
    shipped, tmp_path, monkeypatch
):
    from aigi.engine.robustness import model_id

    monkeypatch.setenv("AIGI_ONNX_DIR", str(tmp_path / "onnx"))  # empty: the first run exports the shipped graph
    files = [str(p) for p in [*REAL, *FAKE]]
    runs = {
        runtime: runner.invoke(app, ["detect", *files, "--json", "--no-provenance", *flag])
        for runtime, flag in (("default", []), ("torch", ["--runtime", "torch"]), ("onnx", ["--runtime", "onnx"]))
    }
    assert all(r.exit_code == 0 for r in runs.values()), {k: r.output[-500:] for k, r in runs.items()}
    payload = {k: json.loads(r.output) for k, r in runs.items()}
    assert {k: p["runtime"] for k, p in payload.items()} == {"default": "onnx", "torch": "torch", "onnx": "onnx"}
    probs = {k: [x["prob_generated"] for x in p["results"]] for k, p in payload.items()}
    verdicts = {k: [x["verdict"] for x in p["results"]] for k, p in payload.items()}
    assert verdicts["default"] == verdicts["torch"] == verdicts["onnx"]
    assert np.allclose(probs["default"], probs["torch"], atol=2e-4) and probs["default"] == probs["onnx"]
    (graph,) = (tmp_path / "onnx").glob("*.onnx")  # one export, shared by the default and --runtime onnx
    assert onnx_runtime.stamp_of(graph) == model_id(shipped)
    monkeypatch.setattr(onnx_runtime, "export", lambda *a, **k: pytest.fail("exported again instead of reused"))
    assert onnx_runtime.runtime_of(api.load()) == "onnx" and onnx_runtime.runtime_of(shipped) == "torch"


def test_a_folder_without_model_onnx_runs_in_pytorch_unless_asked_then_is_exported_once(
    probe_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIGI_ONNX_DIR", str(tmp_path / "onnx"))
    detect = ["detect", str(REAL[0]), "--model", str(probe_dir), "--json", "--no-provenance"]
    auto = runner.invoke(app, detect)
    assert auto.exit_code == 0 and json.loads(auto.output)["runtime"] == "torch", auto.output
    asked = runner.invoke(app, [*detect, "--runtime", "onnx"])
    assert asked.exit_code == 0 and json.loads(asked.output)["runtime"] == "onnx", asked.output
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    monkeypatch.setattr(onnx_runtime, "export", lambda *a, **k: pytest.fail("exported again instead of reused"))
    again = runner.invoke(app, [*detect, "--runtime", "onnx"])
    assert again.exit_code == 0, again.output


def test_a_folders_own_model_onnx_is_used_and_heatmaps_work(shipped, exported, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(exported.read_bytes())
    model = with_onnx_runtime(shipped, folder)
    assert model.detector.path == folder / "model.onnx"
    (d,) = api.detect(model, [REAL[0]], explain=True, provenance=False)
    assert d.heatmap_png.startswith(b"\x89PNG") and d.patch_map is not None


def test_export_command_and_refusals(tmp_path, probe_dir):
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", "onnx", "--out", str(out)])
    assert res.exit_code == 0 and out.is_file() and "largest logit difference" in res.output
    bad = runner.invoke(app, ["detect", str(REAL[0]), "--runtime", "tensorrt"])
    assert bad.exit_code == 2 and "auto, torch, onnx" in bad.output


def test_scan_runs_through_onnx_and_a_stale_export_is_refused(shipped, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("AIGI_ONNX_DIR", str(tmp_path / "onnx"))
    res = runner.invoke(app, ["scan", str(REAL[0]), str(FAKE[0]), "--out", str(tmp_path / "s"), "--runtime", "onnx"])
    assert res.exit_code == 0, res.output
    from aigi.checkpoints import load_default_model, save_model

    other = load_default_model()
    other.config.threshold = 0.3  # recalibrated since the export: another model id
    folder = tmp_path / "recalibrated"
    save_model(other, folder)
    (folder / "model.onnx").write_bytes(exported.read_bytes())
    stale = runner.invoke(app, ["detect", str(REAL[0]), "--model", str(folder), "--runtime", "onnx"])
    assert stale.exit_code != 0 and "not exported from this model" in stale.output and "Traceback" not in stale.output
    auto = runner.invoke(app, ["detect", str(REAL[0]), "--model", str(folder), "--json", "--no-provenance"])
    assert auto.exit_code == 0 and "exported from other weights" in auto.output and "Traceback" not in auto.output
    assert json.loads(auto.stdout)["runtime"] == "torch"  # stale: PyTorch, said on stderr


def test_an_unstamped_cached_export_is_replaced(shipped, tmp_path, monkeypatch):
    from aigi.engine.robustness import model_id

    monkeypatch.setenv("AIGI_ONNX_DIR", str(tmp_path / "onnx"))
    stale = tmp_path / "onnx" / f"{model_id(shipped)}.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older aigi's file")
    model = with_onnx_runtime(shipped)
    assert onnx_runtime.stamp_of(stale) == model_id(shipped) and model.detector.model_id == model_id(shipped)
