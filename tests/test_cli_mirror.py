"""`aigi train mirror-memory` -> `aigi train mirror` -> `aigi detect`, end to end through the command line."""

import json

import pytest
from typer.testing import CliRunner

from aigi.cli import app

runner = CliRunner()


def _train_memory(data, out, *extra: str):
    """`aigi train mirror-memory` on the real images, with a tiny memory (32 slots, top-4)."""
    args = [
        "train",
        "mirror-memory",
        "--data",
        str(data / "0_real"),
        "--out",
        str(out),
        "--slots",
        "32",
        "--top-k",
        "4",
    ]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture()
def data(labelled_images):
    return labelled_images


def test_train_both_phases_then_detect(data, tmp_path):
    mem, model = tmp_path / "mem", tmp_path / "model"
    res = _train_memory(data, mem, "--epochs", "1", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "32 slots x 320 dims, 1 epochs" in res.output  # stage6 tokens of EfficientNet-Lite0 by default
    args = [
        "train",
        "mirror",
        "--data",
        str(data),
        "--memory",
        str(mem),
        "--out",
        str(model),
        "--val",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "val AUROC" in res.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["detector"] == "mirror" and cfg["params"]["slots"] == 32 and cfg["training"]["epochs_done"] == 1
    # rerun with more epochs: resumes, trains only the new one
    res = runner.invoke(app, [*args[:-6], "--epochs", "2", "--batch-size", "4", "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["epoch"] for line in (model / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    res = runner.invoke(app, ["detect", "--model", str(model), "--json", str(data)])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["results"]) == 12


def test_clear_errors_for_bad_training_input(data, tmp_path):
    res = runner.invoke(app, ["train", "mirror-memory", "--data", str(data / "1_fake"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "no real images" in res.output
    res = runner.invoke(
        app,
        ["train", "mirror", "--data", str(data), "--memory", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
    )
    assert res.exit_code == 2 and "not a MIRROR memory folder" in res.output
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    res = _train_memory(data, tmp_path / "used")
    assert res.exit_code == 2 and "already exists" in res.output


def test_train_mdmf_then_explain(data, tmp_path):
    model = tmp_path / "mdmf"
    res = runner.invoke(
        app, ["train", "mdmf", "--data", str(data), "--val", str(data), "--out", str(model), "--steps", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "val AUROC" in res.output
    res = runner.invoke(
        app, ["detect", "--model", str(model), "--json", "--explain", "--explain-dir", str(tmp_path / "h"), str(data)]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "h").glob("*.png"))) == 12
    res = runner.invoke(
        app, ["train", "mdmf", "--data", str(data / "0_real"), "--out", str(tmp_path / "x"), "--steps", "1"]
    )
    assert res.exit_code == 2 and "needs both real and generated images" in res.output
