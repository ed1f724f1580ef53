"""`aigi detect --explain`: one heatmap PNG per readable image, scores equal to plain detect."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aigi.checkpoints import ModelConfig, build_model, save_model
from aigi.cli import app
from aigi.names import shown

runner = CliRunner()


@pytest.fixture()
def mirror_dir(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        detector="mirror",
        params={"slots": 32, "top_k": 4, "heads": 4, "lora_r": 2},
        backbone={"family": "efficientnet_lite0", "options": {"feature_level": "stage4", "pretrained": False}},
    )
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.detector.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return save_model(model, tmp_path / "mirror")


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)).save(d / f"img{i}.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return d


def test_explain_writes_one_heatmap_per_readable_image(mirror_dir, images, tmp_path):
    heat = tmp_path / "heat"
    torch.manual_seed(1)  # the test backbone is randomly initialised (pretrained=False): same seed, same network
    res = runner.invoke(
        app, ["detect", "--model", str(mirror_dir), "--json", "--explain", "--explain-dir", str(heat), str(images)]
    )
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert rows["broken.jpg"]["verdict"] == "error" and rows["broken.jpg"]["heatmap"] is None
    pngs = sorted(heat.glob("*.png"))
    assert len(pngs) == 3
    for name in ("img0.jpg", "img1.jpg", "img2.jpg"):
        path = rows[name]["heatmap"]
        assert path and path.endswith(".png") and name[:-4] in path
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200
    torch.manual_seed(1)
    plain = runner.invoke(app, ["detect", "--model", str(mirror_dir), "--json", "--no-cache", str(images)])
    plain_rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(plain.stdout)["results"]}
    for name in ("img0.jpg", "img1.jpg", "img2.jpg"):
        assert rows[name]["prob_generated"] == pytest.approx(plain_rows[name]["prob_generated"], abs=1e-4)


def test_explain_needs_a_model_with_a_patch_map(images, probe_dir, tmp_path):
    res = runner.invoke(
        app, ["detect", "--model", str(probe_dir), "--explain", "--explain-dir", str(tmp_path / "h"), str(images)]
    )
    assert res.exit_code == 2
    assert "no per-patch map" in res.output
    assert not (tmp_path / "h").exists()


def test_explain_with_a_non_utf8_and_escape_file_name(mirror_dir, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    name = os.path.join(os.fsencode(d), b"caf\xe9\x1b[2J.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)).save(os.fsdecode(name))
    heat = tmp_path / "heat"
    res = runner.invoke(
        app, ["detect", "--model", str(mirror_dir), "--json", "--explain", "--explain-dir", str(heat), str(d)]
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["results"]
    assert row["path"] == f"{d}/caf\\xe9\\x1b[2J.jpg" and row["verdict"] != "error"
    (png,) = heat.iterdir()  # named after the image's own bytes, as the file system took them
    assert os.fsencode(png.name).startswith(b"caf\xe9\x1b[2J_") and row["heatmap"] == shown(png)


def test_heatmaps_that_cannot_be_written_leave_the_verdicts_printed(mirror_dir, images, tmp_path, monkeypatch):
    from faults import FullDisk

    heat = tmp_path / "heat"
    heat.mkdir()
    FullDisk(monkeypatch, heat, budget=0)
    res = runner.invoke(
        app, ["detect", "--model", str(mirror_dir), "--explain", "--explain-dir", str(heat), str(images)]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert all(name in res.output for name in ("img0.jpg", "img1.jpg", "img2.jpg"))  # the verdict table
    (line,) = [text for text in res.output.splitlines() if text.startswith("error:")]
    assert f"cannot write {heat}/" in line and "No space left on device" in line
