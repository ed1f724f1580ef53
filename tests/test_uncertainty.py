"""Issue #12, item 4: calibrated P(generated) (Platt scaling) and the uncertainty band chosen on validation data."""

import itertools
import json

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from aigi.checkpoints import ModelConfig, load_model, platt_scaled
from aigi.cli import app
from aigi.engine.calibrate import choose_band, fit_platt
from aigi.provenance.fusion import fuse

runner = CliRunner()


def _overconfident(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = (y * 2 - 1) * 0.8 + rng.normal(0, 1, n)  # a weak separator ...
    return y, 1 / (1 + np.exp(-4 * z))  # ... claiming near-certainty


def test_platt_scaling_is_monotone_and_tempers_overconfidence():
    y, p = _overconfident()
    a, b = fit_platt(y, p)
    q = platt_scaled(p, a, b)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)  # never reverses the detector's order
    assert 0 < a < 1  # overconfident: the logits are shrunk
    assert np.mean(np.abs(q - 0.5)) < np.mean(np.abs(p - 0.5))


def test_platt_never_reverses_an_anti_correlated_detector():
    y, p = _overconfident()
    a, _ = fit_platt(y, 1 - p)
    assert a == 0.0  # constant probability rather than a reversed order


def _brute_force(y, p, t, accuracy):
    best = None
    for low, high in itertools.product(sorted({*p[p < t], t}), sorted({*p[p >= t], t})):
        real, gen = p <= low, p >= high
        decided = int(real.sum() + gen.sum())
        right = int((real & (y == 0)).sum() + (gen & (y == 1)).sum())
        if decided and right / decided >= accuracy and (best is None or decided > best[0]):
            best = (decided, right / decided)
    return best


def test_band_decides_as_many_images_as_possible_at_the_target_accuracy():
    y, p = _overconfident(n=60, seed=1)
    t = 0.5
    low, high = choose_band(y, p, t, 0.9)
    assert low <= t <= high
    decided = (p <= low) | (p >= high)
    correct = ((p <= low) & (y == 0)) | ((p >= high) & (y == 1))
    assert correct[decided].mean() >= 0.9
    assert int(decided.sum()) == _brute_force(y, p, t, 0.9)[0]  # no band decides more


def test_no_band_when_the_target_cannot_be_reached():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.9, 0.1, 0.8, 0.2])  # always wrong
    assert choose_band(y, p, 0.5, 0.95) is None


@pytest.mark.parametrize(
    "prob, verdict", [(0.2999, "real"), (0.30, "real"), (0.31, "uncertain"), (0.69, "uncertain"), (0.70, "generated")]
)
def test_uncertain_exactly_inside_the_band(prob, verdict):
    assert fuse(prob, 0.5, None, (0.30, 0.70)).label == verdict
    assert fuse(prob, 0.5, None, None).label in ("real", "generated")


def test_a_band_must_hold_the_threshold():
    spec = {"family": "efficientnet_lite0"}
    with pytest.raises(ValidationError, match="must hold the threshold"):
        ModelConfig(detector="univfd", backbone=spec, threshold=0.8, band=(0.2, 0.6))
    with pytest.raises(ValidationError):
        ModelConfig(detector="univfd", backbone=spec, band=(-0.1, 0.6))


def test_calibrate_stores_probability_threshold_and_band_and_detect_uses_them(labelled_images, tmp_path):
    folder = tmp_path / "m"
    res = runner.invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(folder)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["calibrate", "--model", str(folder), "--data", str(labelled_images)])
    assert res.exit_code == 0, res.output
    cfg = load_model(folder).config
    assert cfg.platt is not None and cfg.calibration["probability"] == "Platt scaling on the calibration data"
    assert "probability: Platt scaling" in res.output
    # a band that holds every score: the detector then decides nothing
    raw = json.loads((folder / "config.json").read_text())
    raw["band"] = [0.0, 1.0]
    (folder / "config.json").write_text(json.dumps(raw))
    res = runner.invoke(app, ["detect", "--json", "--model", str(folder), str(labelled_images)])
    payload = json.loads(res.stdout)
    assert payload["band"] == [0.0, 1.0]
    assert {r["verdict"] for r in payload["results"]} == {"uncertain"}
    assert all("band 0.00-1.00" in r["basis"] for r in payload["results"])
    res = runner.invoke(
        app, ["eval", "--model", str(folder), "--data", str(labelled_images), "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "Coverage" in res.output and "uncertain between 0.000 and 1.000" in " ".join(res.output.split())
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["band"] == [0.0, 1.0] and report["rows"][-1]["coverage"] == 0.0
    assert "Coverage,Decided_Acc" in (tmp_path / "r" / "report.csv").read_text().splitlines()[0]
    res = runner.invoke(app, ["detect", "--json", "--model", str(folder), "--threshold", "0.5", str(labelled_images)])
    payload = json.loads(res.stdout)  # an explicit threshold decides every image
    assert payload["band"] is None and {r["verdict"] for r in payload["results"]} <= {"real", "generated"}


def test_calibrate_without_platt_or_band(labelled_images, tmp_path):
    folder = tmp_path / "m"
    runner.invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(folder)])
    args = ["calibrate", "--model", str(folder), "--data", str(labelled_images), "--probability", "none"]
    res = runner.invoke(app, [*args, "--band-accuracy", "0"])
    assert res.exit_code == 0, res.output
    cfg = load_model(folder).config
    assert cfg.platt is None and cfg.band is None and cfg.calibration["probability"] == "the detector's own"


def test_balanced_weights_make_every_subset_count_alike(tmp_path):
    from aigi.data.folders import ImageSet, Sample
    from aigi.engine.trainer import balanced_weights

    samples = [Sample(tmp_path / f"{i}.png", 1) for i in range(10)] + [
        Sample(tmp_path / f"r{i}.png", 0) for i in range(5)
    ]
    image_set = ImageSet(samples, {"big": list(range(8)), "small": [8, 9], "reals": list(range(10, 15))})
    w = balanced_weights(image_set, list(range(15)))
    assert w[:8].sum() == pytest.approx(5) and w[8:10].sum() == pytest.approx(5)  # 8 images weigh as much as 2
    assert w[10:].tolist() == pytest.approx([1.0] * 5)


def test_train_univfd_balanced_by_subset(labelled_images, tmp_path):
    rows = ["path,label,subset"] + [
        f"{p},{p.parent.name},{'a' if i % 3 else 'b'}" for i, p in enumerate(sorted(labelled_images.rglob("*.jpg")))
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    args = ["train", "univfd", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "m"), "--balance", "subset"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "m").config.training["config"]["balance"] == "subset"
