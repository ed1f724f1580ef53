"""Post-processing perturbations and the robustness sweep (library and CLI)."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi.cli import app
from aigi.data.perturb import (
    DEFAULT_SWEEP,
    Perturbation,
    PerturbationError,
    Perturbed,
    parse_perturbation,
)
from aigi.data.transforms import EvalProtocol

runner = CliRunner()


def _photo(seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    a = np.cumsum(rng.integers(0, 9, (size[1], size[0], 3)), axis=1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a)


def test_resize_rescales_each_side_by_the_factor():
    im = _photo(size=(96, 81))
    assert parse_perturbation("resize:0.5").apply(im).size == (48, 40)
    assert parse_perturbation("resize:2").apply(im).size == (192, 162)


def test_parse_and_names():
    assert parse_perturbation("JPEG:75") == Perturbation(kind="jpeg", level=75)
    assert parse_perturbation("none").kind == "none"
    assert parse_perturbation("noise:0.1").name == "noise:0.1"
    assert [parse_perturbation(t).name for t in DEFAULT_SWEEP] == DEFAULT_SWEEP
    for bad, why in [
        ("jpeg:0", "1 to 100"),
        ("jpeg:75.5", "whole number"),
        ("blur:-1", "between"),
        ("noise:2", "between"),
        ("resize:0", "between"),
        ("resize:5", "between"),
        ("sharpen:2", "expected none"),
        ("jpeg:high", "not a number"),
        ("jpeg", "expected none"),
    ]:
        with pytest.raises(PerturbationError, match=why):
            parse_perturbation(bad)


def test_each_perturbation_changes_the_image_as_its_level_says():
    im = _photo()
    x = np.asarray(im, dtype=np.float64)

    def err(p):
        return np.abs(np.asarray(parse_perturbation(p).apply(im), dtype=np.float64) - x).mean()

    assert err("none") == 0
    assert 0 < err("jpeg:90") < err("jpeg:50")
    assert 0 < err("blur:1") < err("blur:5")
    assert 0 < err("noise:0.05") < err("noise:0.25")
    noisy = parse_perturbation("noise:0.1").apply(im)
    assert np.array_equal(np.asarray(noisy), np.asarray(parse_perturbation("noise:0.1").apply(im)))  # repeatable
    assert abs((np.asarray(noisy, dtype=np.float64) - x).std() / 255 - 0.1) < 0.02
    # a JPEG at quality q is what the model sees: same bytes as encoding it ourselves
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=50)
    assert np.array_equal(
        np.asarray(parse_perturbation("jpeg:50").apply(im)),
        np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")),
    )


def test_perturbed_protocol_applies_before_the_crop():
    from aigi.backbones.base import Preprocess

    pre = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    proto = EvalProtocol(crop=32, format_align=True)
    im = _photo(size=(64, 64))
    blurred = Perturbed(proto, parse_perturbation("blur:3")).apply(im, "JPEG", pre)
    # blurred pixels are new, lossless pixels: format alignment treats a JPEG and a PNG source alike
    expected = proto.apply(parse_perturbation("blur:3").apply(im), "PNG", pre)
    assert blurred.shape == (3, 32, 32) and np.allclose(blurred.numpy(), expected.numpy())
    assert np.allclose(Perturbed(proto, parse_perturbation("blur:3")).apply(im, "PNG", pre).numpy(), blurred.numpy())
    assert not np.allclose(proto.apply(parse_perturbation("blur:3").apply(im), "JPEG", pre).numpy(), blurred.numpy())


def test_eval_perturb_scores_differ_and_bad_values_are_messages(labelled_images, tmp_path):
    clean = runner.invoke(app, ["eval", "--data", str(labelled_images), "--out", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output
    res = runner.invoke(
        app, ["eval", "--data", str(labelled_images), "--perturb", "blur:4", "--out", str(tmp_path / "blur")]
    )
    assert res.exit_code == 0, res.output
    assert "(blur:4)" in res.output
    a = (tmp_path / "clean" / "report_scores.csv").read_text()
    b = (tmp_path / "blur" / "report_scores.csv").read_text()
    assert a != b
    bad = runner.invoke(app, ["eval", "--data", str(labelled_images), "--perturb", "jpeg:500"])
    assert bad.exit_code == 2 and "1 to 100" in bad.output and "Traceback" not in bad.output


def test_robustness_sweep_writes_table_csv_plot_and_resumes(labelled_images, tmp_path, monkeypatch):
    out = tmp_path / "rob"
    args = [
        "robustness",
        "--data",
        str(labelled_images),
        "--perturb",
        "none,jpeg:50",
        "--perturb",
        "noise:0.2",
        "--out",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    state = json.loads((out / "robustness.json").read_text())
    assert [r["perturbation"] for r in state["rows"]] == ["none", "jpeg:50", "noise:0.2"]
    assert all(0 <= r["mean_auroc"] <= 1 and r["errors"] == 0 for r in state["rows"])
    assert (out / "robustness.csv").read_text().count("\n") == 4
    assert Image.open(out / "robustness.png").size[0] > 300
    assert "noise:0.2" in res.output
    # resuming: finished rows are not scored again
    import aigi.engine.robustness as rob

    def boom(*a, **k):
        raise AssertionError("a finished row was scored again")

    monkeypatch.setattr(rob, "sweep_row", boom)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "robustness.json").read_text())["rows"] == state["rows"]
    # another model under the same name (here: re-calibrated) is measured again, not read from the old rows
    monkeypatch.undo()
    from aigi.checkpoints import load_default_model, save_model

    model = tmp_path / "default_model"
    m = load_default_model()
    m.config.threshold = 0.3
    save_model(m, model)
    res = runner.invoke(
        app, ["robustness", "--data", str(labelled_images), "--model", str(model), "-p", "none", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "robustness.json").read_text())["rows"]
    assert len(rows) == 4 and rows[:3] == state["rows"]  # earlier rows are kept, the new model's row is added
    assert rows[3]["model"] == "default_model" and rows[3]["model_id"] != state["rows"][0]["model_id"]
    assert (out / "robustness.csv").read_text().count("\n") == 2  # the CSV and plot show this call's rows
    # changed images are measured again
    Image.new("RGB", (40, 40), (9, 9, 9)).save(labelled_images / "0_real" / "extra.jpg")
    res = runner.invoke(
        app, ["robustness", "--data", str(labelled_images), "--model", str(model), "-p", "none", "--out", str(out)]
    )
    assert res.exit_code == 0 and len(json.loads((out / "robustness.json").read_text())["rows"]) == 5


def test_robustness_damaged_state_and_empty_sweep_are_messages(labelled_images, tmp_path):
    out = tmp_path / "rob"
    out.mkdir()
    (out / "robustness.json").write_text("[1, 2")
    res = runner.invoke(app, ["robustness", "--data", str(labelled_images), "-p", "none", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "not a sweep state" in res.output and "Traceback" not in res.output
    assert len(json.loads((out / "robustness.json").read_text())["rows"]) == 1
    res = runner.invoke(app, ["robustness", "--data", str(labelled_images), "-p", ",", "--out", str(out)])
    assert res.exit_code == 2 and "no perturbation given" in res.output
