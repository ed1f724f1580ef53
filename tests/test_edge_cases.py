"""Edge cases found in review: odd file names, symlink cycles, name clashes, manifests from spreadsheets,
file modes, non-finite scores, and cache keys for local backbone folders."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aigi.cli import app
from aigi.data.folders import discover, read_manifest

runner = CliRunner()


def _img(path, v=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (v, v // 2, 255 - v)).save(path)
    return path


def test_bracketed_file_names_are_shown_verbatim(tmp_path):
    _img(tmp_path / "x[" / "photo [edited].jpg")
    _img(tmp_path / "[red]markup.jpg")
    res = runner.invoke(app, ["detect", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "photo [edited].jpg" in res.output.replace("\n", "")
    assert "[red]markup.jpg" in res.output


def test_symlink_cycle_is_walked_once(tmp_path):
    _img(tmp_path / "d" / "0_real" / "a.jpg")
    _img(tmp_path / "d" / "1_fake" / "b.jpg")
    os.symlink("..", tmp_path / "d" / "0_real" / "up")
    s = discover(tmp_path / "d")
    assert len(s.samples) == 2
    assert any("already walked" in r for _, r in s.skipped)


def test_clashing_subset_names_keep_all_images(tmp_path):
    root = tmp_path / "coll"
    for lab in ("0_real", "1_fake"):
        _img(root / lab / "x" / "1.jpg")
        _img(root / "x" / lab / "2.jpg")
    s = discover(root)
    assert sum(len(v) for v in s.subsets.values()) == len(s.samples) == 4
    assert len(s.subsets) == 2


def test_manifest_from_a_spreadsheet(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    (tmp_path / "m.csv").write_text("\ufeffPath , Label,Subset\na.jpg ,real,s1\n\nb.jpg,fake,s1\n", encoding="utf-8")
    s = read_manifest(tmp_path / "m.csv")
    assert [x.label for x in s.samples] == [0, 1]
    assert s.subsets == {"s1": [0, 1]}
    (tmp_path / "bad.csv").write_bytes(b"path,label\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_manifest(tmp_path / "bad.csv")


def test_written_files_get_normal_permissions(tmp_path):
    from aigi.io import write_text

    old = os.umask(0o022)
    try:
        p = write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_calibrate_errors_are_messages_not_tracebacks(tmp_path):
    import shutil

    from aigi.checkpoints import default_model_path

    model = tmp_path / "m"
    shutil.copytree(default_model_path(), model)
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such file or folder" in res.output
    _img(tmp_path / "only" / "0_real" / "a.jpg")
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "only")])
    assert res.exit_code == 2 and "needs both real and generated" in res.output
    res = runner.invoke(
        app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "only"), "--target-real-acc", "0.9"]
    )
    assert res.exit_code == 0, res.output
    assert "generated acc n/a" in res.output
    cfg = json.loads((model / "config.json").read_text())
    assert f"{cfg['threshold']:.4f}" in (model / "README.md").read_text()  # the model card follows the config


def test_non_finite_scores_become_errors(tmp_path, monkeypatch):
    from aigi.checkpoints import load_default_model
    from aigi.engine.inference import score_paths

    model = load_default_model()
    with torch.no_grad():
        model.detector.head.bias.fill_(float("nan"))
    scores = score_paths(model, [_img(tmp_path / "a.jpg")], use_cache=False, progress=False)
    assert np.isnan(scores.prob[0]) and "non-finite" in scores.errors[0]


def test_threshold_must_be_a_probability(tmp_path):
    res = runner.invoke(app, ["detect", "--threshold", "nan", str(_img(tmp_path / "a.jpg"))])
    assert res.exit_code == 2 and "--threshold" in res.output


def test_cache_key_follows_local_backbone_folder(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    from aigi.backbones import BackboneSpec
    from aigi.checkpoints import ModelConfig, build_model
    from aigi.engine.inference import feature_cache_for

    cfg = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    keys = []
    for name in ("A", "B"):
        torch.manual_seed(len(keys))
        Dinov2Model(cfg).save_pretrained(tmp_path / name / "vit")
        monkeypatch.chdir(tmp_path / name)
        model = build_model(ModelConfig(detector="univfd", backbone=BackboneSpec(family="hf_vit", source="vit")))
        keys.append(feature_cache_for(model).namespace)
    assert keys[0] != keys[1]  # same text "vit", different folders and weights


def test_eval_lists_skipped_files(tmp_path):
    _img(tmp_path / "d" / "0_real" / "a.jpg", 10)
    _img(tmp_path / "d" / "1_fake" / "b.jpg", 200)
    _img(tmp_path / "d" / "stray.jpg")
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "stray.jpg" in res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert any(s["path"].endswith("stray.jpg") for s in rep["skipped"])
