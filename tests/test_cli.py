"""The aigi command line, end to end on small folders built here."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi.api import SCORED_VERDICTS
from aigi.cli import app

runner = CliRunner()


def _photo(path, seed, size=(96, 80), smooth=True):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    if smooth:
        a = np.cumsum(a.astype(np.int64), axis=1) % 256
    Image.fromarray(a.astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def mixed(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    _photo(d / "good1.jpg", 1)
    _photo(d / "good2.png", 2)
    (d / "empty.jpg").write_bytes(b"")
    full = (d / "good1.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "notes.png").write_text("this is text, not a picture")
    Image.new("1", (30000, 30000)).save(d / "bomb.png", optimize=True)
    return d


def test_detect_reports_bad_files_and_carries_on(mixed):
    res = runner.invoke(app, ["detect", "--json", str(mixed)])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in payload["results"]}
    assert set(by_name) == {"good1.jpg", "good2.png", "empty.jpg", "truncated.jpg", "notes.png", "bomb.png"}
    for good in ("good1.jpg", "good2.png"):
        assert by_name[good]["verdict"] in SCORED_VERDICTS
        assert 0.0 <= by_name[good]["prob_generated"] <= 1.0
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    assert "not an image" in by_name["notes.png"]["error"]
    assert "too large" in by_name["bomb.png"]["error"]
    for bad in ("empty.jpg", "truncated.jpg", "notes.png", "bomb.png"):
        assert by_name[bad]["verdict"] == "error" and by_name[bad]["prob_generated"] is None


def test_detect_table_names_each_bad_file(mixed):
    res = runner.invoke(app, ["detect", str(mixed)])
    assert res.exit_code == 0
    text = res.output
    assert "good1.jpg" in text and "bomb.png" in text and "too large" in text
    assert "4 of 6 files could not be read" in text


def test_detect_fails_only_when_nothing_is_readable(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    res = runner.invoke(app, ["detect", str(tmp_path)])
    assert res.exit_code == 1
    res = runner.invoke(app, ["detect", str(tmp_path / "missing.jpg")])
    assert res.exit_code == 1
    assert "file not found" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["detect", str(tmp_path / "empty")])
    assert res.exit_code == 2
    assert "no image files" in res.output


def _labelled_tree(root, n=6):
    for label, seed0 in (("0_real", 0), ("1_fake", 100)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            _photo(root / label / f"{i}.jpg", seed0 + i, smooth=(label == "0_real"))
    return root


def test_train_eval_calibrate_round_trip(tmp_path):
    data = _labelled_tree(tmp_path / "data")
    model = tmp_path / "model"
    res = runner.invoke(app, ["train", "univfd", "--data", str(data), "--out", str(model), "--C", "1.0"])
    assert res.exit_code == 0, res.output
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    res = runner.invoke(app, ["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert rows[-1]["subset"] == "MEAN"
    assert rows[0]["auroc"] == 1.0  # separable synthetic data, trained on itself
    for f in ("report.csv", "report_scores.csv", "report_roc.png", "report_hist.png"):
        assert (tmp_path / "rep" / f).is_file()
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--data", str(data), "--target-real-acc", "1.0"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["calibration"]["target_real_acc"] == 1.0
    assert cfg["calibration"]["real_acc"] == 1.0


def test_eval_on_unlabelled_folder_explains(tmp_path):
    _photo(tmp_path / "x.jpg", 0)
    res = runner.invoke(app, ["eval", "--data", str(tmp_path)])
    assert res.exit_code == 2
    assert "found no labelled images" in res.output


def test_bad_model_folder_is_a_clear_error(tmp_path):
    _photo(tmp_path / "x.jpg", 0)
    res = runner.invoke(app, ["detect", "--model", str(tmp_path / "nope"), str(tmp_path / "x.jpg")])
    assert res.exit_code == 2
    assert "not a model folder" in res.output


@pytest.mark.parametrize(
    "cmd", [[], ["detect"], ["eval"], ["train"], ["train", "univfd"], ["calibrate"], ["info"], ["samples"]]
)
def test_every_command_has_help(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0
    assert "Usage" in res.output


def test_samples_and_info(tmp_path):
    pytest.importorskip("skimage")
    res = runner.invoke(app, ["samples", str(tmp_path / "s")])
    assert res.exit_code == 0
    assert (tmp_path / "s" / "chelsea.png").is_file()
    res = runner.invoke(app, ["info"])
    assert json.loads(res.stdout)["detector"] == "cnnspot"
