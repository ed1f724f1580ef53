"""The library API (aigi.api) and the CLI's single error path: what the CLI, notebooks and the server share."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi import api
from aigi.cli import app
from aigi.data.folders import pooled_real
from aigi.errors import AigiError, DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return api.load()


def _jpeg_bytes(seed: int) -> bytes:
    import io

    a = np.random.default_rng(seed).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def test_uploads_score_as_the_same_file_does(model, tmp_path):
    data = _jpeg_bytes(1)
    (tmp_path / "a.jpg").write_bytes(data)
    from_file, from_bytes = api.detect(model, [tmp_path / "a.jpg", ("upload.jpg", data)])
    assert from_bytes.path == "upload.jpg" and from_bytes.verdict == from_file.verdict
    assert from_bytes.verdict in api.SCORED_VERDICTS  # the shipped model has an uncertainty band
    assert from_bytes.prob_generated == pytest.approx(
        from_file.prob_generated, abs=1e-6
    )  # cached-feature path vs one pass: float32 rounding
    assert from_bytes.provenance is not None and from_bytes.threshold == model.threshold


def test_uploads_are_never_cached(model, tmp_path, monkeypatch):
    monkeypatch.setenv("AIGI_CACHE_DIR", str(tmp_path / "cache"))
    api.detect(model, [("upload.jpg", _jpeg_bytes(2))], provenance=False)
    assert not (tmp_path / "cache").exists()


def test_a_bad_upload_is_an_error_row_not_an_exception(model):
    bad, good = api.detect(model, [("notes.png", b"not a picture"), ("ok.jpg", _jpeg_bytes(3))])
    assert bad.verdict == "error" and "not an image" in bad.error and bad.prob_generated is None
    assert good.verdict in api.SCORED_VERDICTS


def test_to_dict_is_what_detect_json_prints(model, tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes(4))
    res = runner.invoke(app, ["detect", "--json", str(tmp_path / "a.jpg")])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)["results"][0]
    assert printed == api.detect(model, [tmp_path / "a.jpg"])[0].to_dict()
    assert set(printed) == {"path", "verdict", "basis", "prob_generated", "detector_verdict", "error", "provenance"}


def test_explain_without_a_patch_map_is_a_clear_error(probe_dir):
    with pytest.raises(AigiError, match="no per-patch map"):
        api.detect(api.load(probe_dir), [("a.jpg", _jpeg_bytes(5))], explain=True)


def test_evaluate_returns_a_report_that_writes_its_files(model, labelled_images, tmp_path):
    report = api.evaluate(model, labelled_images, progress=False)
    assert report.mean["n_real"] == 6 and report.mean["n_fake"] == 6
    files = report.write(tmp_path / "rep")
    assert {"csv", "json", "scores", "roc", "hist"} <= set(files) and all(p.is_file() for p in files.values())


def test_pooled_real_builds_one_subset_per_generator(tmp_path):
    for d, n in (("real", 3), ("gen/a", 2), ("gen/b", 1)):
        (tmp_path / d).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / d / f"{i}.png")
    image_set, notes = pooled_real(tmp_path / "real", [tmp_path / "gen/a", tmp_path / "gen/b", tmp_path / "gen/a"])
    assert {k: len(v) for k, v in image_set.subsets.items()} == {"a": 5, "b": 4}
    assert notes == [f"--fake {tmp_path / 'gen/a'} is named twice: used once"]
    with pytest.raises(DataError, match="no such folder"):
        pooled_real(tmp_path / "nowhere", [tmp_path / "gen/a"])


def _one_error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "pydantic" not in res.output
    return lines[0]


def test_a_memory_folder_given_as_model_is_one_line(tmp_path):
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "config.json").write_text(json.dumps({"kind": "mirror-memory", "dim": 4}))
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes(6))
    line = _one_error_line(runner.invoke(app, ["detect", "--model", str(tmp_path / "mem"), str(tmp_path / "a.jpg")]))
    assert "MIRROR memory folder" in line and "--memory" in line


def test_a_model_folder_given_as_memory_is_one_line(labelled_images, tmp_path):
    from aigi.checkpoints import default_model_path

    args = [
        "train",
        "mirror",
        "--data",
        str(labelled_images),
        "--memory",
        str(default_model_path()),
        "--out",
        str(tmp_path / "o"),
    ]
    assert "a model folder, not a MIRROR memory folder" in _one_error_line(runner.invoke(app, args))


def test_bad_hyper_parameter_is_one_line(labelled_images, tmp_path):
    args = ["train", "mdmf", "--data", str(labelled_images), "--out", str(tmp_path / "o"), "--estimator", "foo"]
    line = _one_error_line(runner.invoke(app, args))
    assert "estimator" in line and "fast" in line


def test_inspect_of_a_missing_file_exits_1(tmp_path):
    res = runner.invoke(app, ["inspect", str(tmp_path / "nosuch.jpg")])
    assert res.exit_code == 1 and "file not found" in res.output


def test_version_and_info_say_where_the_model_is():
    from aigi import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"aigi {__version__}"
    info = json.loads(runner.invoke(app, ["info"]).stdout)
    assert info["folder"].endswith("default_model") and info["detector"] == "cnnspot"


def test_the_shipped_config_holds_no_absolute_paths():
    from aigi.checkpoints import default_model_path

    text = (default_model_path() / "config.json").read_text()
    assert '"/' not in text and ":\\\\" not in text


def test_train_univfd_aligns_formats_by_default_like_the_shipped_model(labelled_images, tmp_path):
    res = runner.invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["protocol"]["format_align"] is True
    assert api.load().config.protocol.format_align is True


def test_train_help_lists_every_recipe_and_an_unknown_one_gets_a_suggestion():
    from aigi.engine.trainer import recipe_names

    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and all(name in res.output for name in recipe_names())
    res = runner.invoke(app, ["train", "mdmff"])
    assert res.exit_code == 2 and "did you mean 'mdmf'" in res.output


def test_generated_options_carry_the_recipe_defaults():
    res = runner.invoke(app, ["train", "mdmf", "--help"], env={"COLUMNS": "240"})
    assert res.exit_code == 0 and "(default: 1000)" in res.output and "--steps" in res.output


def test_config_repeats_a_run_from_its_model_folder(labelled_images, tmp_path):
    first = ["train", "univfd", "--data", str(labelled_images), "--out", str(tmp_path / "a"), "--C", "0.1"]
    assert runner.invoke(app, first).exit_code == 0
    res = runner.invoke(app, ["train", "univfd", "--config", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert a["threshold"] == b["threshold"] and a["params"] == b["params"] and b["params"]["C"] == 0.1
    assert {**a["training"]["config"], "out": None} == {**b["training"]["config"], "out": None}
    res = runner.invoke(app, ["train", "mdmf", "--config", str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not from `aigi train mdmf`" in res.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["features", "--backbone", "hf_vit", "--data", "{img}"], "needs a source"),
        (
            ["train", "univfd", "--data", "{data}", "--out", "{tmp}/o", "--target-real-acc", "0.9"],
            "needs --calibrate-on",
        ),
        (["train", "univfd", "--config", "{img}", "--out", "{tmp}/o"], "not a JSON text file"),
        (["train", "univfd", "--data", "{data}", "--out", "{tmp}/o", "--calibrate-on", "{tmp}/nowhere"], "no such"),
    ],
)
def test_more_bad_settings_are_one_line(args, expected, labelled_images, tmp_path):
    img = next((labelled_images / "0_real").iterdir())
    filled = [a.format(img=img, data=labelled_images, tmp=tmp_path) for a in args]
    assert expected in _one_error_line(runner.invoke(app, filled))
    assert not (tmp_path / "o").exists()  # refused before anything was written
