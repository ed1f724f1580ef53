"""``--think fast|slow|auto``: the routing rule (confident -> fast; inside the band -> slow; the reason recorded), the
slow path's evidence and templated explanation, the shipped slow settings, and the CLI."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi import api, think
from aigi.checkpoints import Model
from aigi.cli import app
from aigi.provenance.findings import Finding, Provenance

runner = CliRunner()


@pytest.fixture(scope="module")
def fast():
    return api.load()


def _with_band(model: Model, band) -> Model:
    return Model(model.detector, model.config.model_copy(update={"band": band}))


def _detection(prob, band=(0.2, 0.8), threshold=0.5, provenance=None):
    """What api.detect makes of a score (and what the file declares), through the same fusion."""
    from aigi.provenance.fusion import fuse

    v = fuse(prob, threshold, provenance, band)
    return api.Detection("x.png", v.label, v.basis, prob, None, threshold, band, decided_by=v.source)


def test_the_rule_escalates_inside_the_band_and_keeps_confident_answers():
    assert think.escalation(_detection(0.9)) is None and "outside" in think.settled(_detection(0.9))
    assert think.escalation(_detection(0.05)) is None
    why = think.escalation(_detection(0.41))
    assert why and "inside the uncertainty band (0.20, 0.80)" in why and "0.41" in why
    # without a band: within the margin of the threshold
    assert "within 0.15 of the threshold" in think.escalation(_detection(0.6, band=None))
    assert think.escalation(_detection(0.7, band=None)) is None
    assert think.escalation(_detection(0.6, band=None), margin=0.05) is None
    # a declared origin (C2PA, a watermark) or an unreadable file is never escalated, even inside the band
    c2pa = Provenance("x.png", [Finding("c2pa", "generated", "strong", "C2PA by OpenAI")])
    mark = Provenance("x.png", [Finding("watermark", "generated", "moderate", "SynthID-like watermark")])
    for declared in (_detection(0.5, provenance=c2pa), _detection(0.5, provenance=mark)):
        assert declared.verdict == "generated" and declared.decided_by in ("declared", "watermark")
        assert think.escalation(declared) is None and "declares" in think.settled(declared)
    assert think.escalation(api.Detection("x", "error", "could not", None, None, 0.5, (0.2, 0.8))) is None


def test_hottest_regions_name_the_place_and_share():
    m = np.zeros((6, 6))
    m[0, 5], m[5, 0], m[3, 3] = 5.0, 3.0, 2.0
    regions = think.hottest_regions(m)
    assert [r["where"] for r in regions] == ["top right", "bottom left", "middle centre"]
    assert regions[0]["share"] == pytest.approx(0.5)


def test_the_shipped_slow_path_scores_the_whole_image_with_the_same_weights(fast):
    slow = think.load_slow_default(fast)
    assert slow.detector is fast.detector  # no second copy of the weights
    assert slow.config.protocol.views == "grid" and slow.config.protocol.max_tiles == 4
    assert slow.config.band is not None and slow.config.threshold != fast.config.threshold
    assert slow.config.calibration["data"] == fast.config.calibration["data"]


def _images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        a = np.cumsum(rng.integers(0, 9, (160, 200, 3)), axis=1).clip(0, 255).astype(np.uint8)
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def test_auto_answers_fast_when_confident_and_slow_inside_the_band(fast, tmp_path):
    paths = _images(tmp_path)
    confident = think.detect(_with_band(fast, None), paths, "auto", margin=0.0)
    assert all(d.thinking["path"] == "fast" and "clear of the threshold" in d.thinking["reason"] for d in confident)
    unsure = think.detect(_with_band(fast, (0.0, 1.0)), paths, "auto")
    for d, f in zip(unsure, confident):
        t = d.thinking
        assert t["mode"] == "auto" and t["path"] == "slow" and "inside the uncertainty band" in t["reason"]
        assert t["fast_prob_generated"] == pytest.approx(f.prob_generated, abs=1e-4)
        assert t["evidence"]["views"].startswith("grid") and len(t["evidence"]["hottest_regions"]) == 3
        assert t["explanation"]["source"] == think.TEMPLATED and "Verdict:" in t["explanation"]["text"]
        assert d.heatmap_png is not None and d.prob_generated != f.prob_generated
    assert all(d.thinking["path"] == "fast" for d in think.detect(fast, paths, "fast"))
    assert all(d.thinking["path"] == "slow" for d in think.detect(fast, paths, "slow"))


def test_the_explanation_quotes_the_provenance_and_never_claims_a_model():
    d = _detection(0.9)
    d.provenance = Provenance("x.png", [Finding("exif", "captured", "weak", "camera EXIF: Canon EOS R5")])
    evidence = {
        "views": "grid",
        "fast_prob_generated": 0.6,
        "hottest_regions": [{"where": "top left"}],
        "provenance": [],
    }
    evidence["provenance"] = [f.to_dict() for f in d.provenance.findings]
    text = think.explain_in_words(d, evidence)
    assert "camera EXIF: Canon EOS R5 (weak)" in text and "top left" in text and "0.60" in text
    assert "I think" not in text and "reasoning" not in text


def test_cli_think_json_table_and_errors(tmp_path):
    paths = [str(p) for p in _images(tmp_path, 2)]
    maps = ["--explain-dir", str(tmp_path / "maps")]
    res = runner.invoke(app, ["detect", *paths, "--think", "slow", "--json", *maps])
    assert res.exit_code == 0, res.output
    results = json.loads(res.output)["results"]
    assert all(r["thinking"]["path"] == "slow" and r["thinking"]["explanation"]["text"] for r in results)
    slow = think.load_slow_default(api.load())
    assert all(r["thinking"]["threshold"] == pytest.approx(slow.threshold, abs=1e-4) for r in results)
    assert all(r["thinking"]["evidence"]["map_covers"].startswith("the first view") for r in results)
    assert not (tmp_path / "maps").exists()  # heatmaps are written only with --explain
    drawn = runner.invoke(app, ["detect", *paths, "--think", "slow", "--json", "--explain", *maps])
    assert all(r["heatmap"] for r in json.loads(drawn.output)["results"]) and (tmp_path / "maps").is_dir()
    table = runner.invoke(app, ["detect", *paths, "--think", "fast"])
    assert table.exit_code == 0 and "decided by" in table.output and "fast: --think fast" in table.output
    plain = runner.invoke(app, ["detect", *paths, "--json"])
    assert "thinking" not in json.loads(plain.output)["results"][0]
    for args, why in [
        (["--think", "maybe"], "fast, slow or auto"),
        (["--think", "auto", "--threshold", "0.5"], "drop --threshold"),
        (["--slow-model", str(tmp_path)], "add --think"),
    ]:
        bad = runner.invoke(app, ["detect", *paths, *args])
        assert bad.exit_code == 2 and why in bad.output and "Traceback" not in bad.output


def test_another_model_without_a_slow_path_is_told_to_give_one(probe_dir, tmp_path):
    paths = [str(p) for p in _images(tmp_path, 1)]
    res = runner.invoke(app, ["detect", *paths, "--model", str(probe_dir), "--think", "auto"])
    assert res.exit_code == 2 and "--slow-model" in res.output and "Traceback" not in res.output
    ok = runner.invoke(
        app, ["detect", *paths, "--model", str(probe_dir), "--think", "auto", "--slow-model", str(probe_dir)]
    )
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["detect", *paths, "--model", str(probe_dir), "--think", "fast"]).exit_code == 0
