"""aigi.engine.evaluate: the CSV and JSON reports carry the same numbers (ECE always, coverage and decided accuracy
only with an uncertainty band); plots and scores are written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.data.folders import ImageSet, Sample
from aigi.engine.evaluate import build_report, format_table, reliability_png, report_csv, write_report
from aigi.engine.metrics import COLUMNS, DISPLAY, binary_metrics, decided_metrics

NAN = float("nan")


@pytest.fixture
def scored(tmp_path):
    """8 reals (pooled), 2 generators with 6 fakes each, and a fakes-only subset; some images failed (NaN)."""
    rng = np.random.default_rng(0)
    samples = [Sample(tmp_path / f"real_{i}.png", 0) for i in range(8)]
    samples += [Sample(tmp_path / f"g1_{i}.png", 1) for i in range(6)]
    samples += [Sample(tmp_path / f"g2_{i}.png", 1) for i in range(6)]
    samples += [Sample(tmp_path / f"solo_{i}.png", 1) for i in range(3)]
    reals = list(range(8))
    subsets = {"g1": reals + list(range(8, 14)), "g2": reals + list(range(14, 20)), "solo": [20, 21, 22]}
    prob = np.concatenate([rng.uniform(0, 0.7, 8), rng.uniform(0.3, 1, 6), rng.uniform(0.45, 1, 6), [0.9, 0.2, 0.8]])
    errors = {2: "truncated image data", 9: "not an image", 21: "empty file (0 bytes)"}
    for i in errors:
        prob[i] = NAN
    image_set = ImageSet(samples=samples, subsets=subsets, root=tmp_path)
    report = build_report(image_set, prob, 0.5, errors, model="toy", data=str(tmp_path))
    return image_set, prob, errors, report


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_build_report_rows_match_metrics_without_errors(scored):
    image_set, prob, errors, report = scored
    assert [r["subset"] for r in report.rows] == ["g1", "g2", "solo", "MEAN"]
    assert report.mean is report.rows[-1]
    for name, idx in image_set.subsets.items():
        ok = [i for i in idx if i not in errors]
        expected = binary_metrics([image_set.samples[i].label for i in ok], prob[ok], 0.5)
        row = report.row(name)
        for c in COLUMNS:
            assert row[c] == (pytest.approx(expected[c]) if expected[c] is not None else None), (name, c)
    assert report.row("g1")["n"] == 8 - 1 + 6 - 1  # one failed real, one failed g1 fake
    assert report.row("solo")["n"] == 2 and report.row("solo")["auroc"] is None
    assert report.mean["n"] == 12 + 13 + 2
    assert report.mean["auroc"] == pytest.approx((report.row("g1")["auroc"] + report.row("g2")["auroc"]) / 2)
    assert [e["path"] for e in report.errors] == [str(image_set.samples[i].path) for i in sorted(errors)]
    assert [e["reason"] for e in report.errors] == [errors[i] for i in sorted(errors)]


def test_write_report_csv_and_json_agree(scored, tmp_path):
    image_set, prob, errors, report = scored
    out = tmp_path / "out"
    paths = write_report(report, out, image_set, prob)
    assert set(paths) == {"csv", "json", "scores", "roc", "hist", "reliability"}
    assert all(Path(p).parent == out and Path(p).is_file() for p in paths.values())

    rows = read_csv(paths["csv"])
    header, body = rows[0], rows[1:]
    assert header == ["Dataset"] + [DISPLAY.get(c, c) for c in COLUMNS]
    assert "AUROC" in header and "Bal_Acc" in header and "FPR@95TPR" in header
    assert header[-1] == "ECE" and "Coverage" not in header and "Decided_Acc" not in header  # no band, no columns

    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["model"] == "toy" and doc["threshold"] == 0.5 and doc["band"] is None
    assert not any("coverage" in r or "decided_acc" in r for r in doc["rows"])
    assert len(body) == len(doc["rows"]) == 4
    assert body[-1][0] == "MEAN" and doc["rows"][-1]["subset"] == "MEAN"

    for cells, jrow, row in zip(body, doc["rows"], report.rows):
        assert cells[0] == jrow["subset"] == row["subset"]
        for c, cell in zip(COLUMNS, cells[1:]):
            jv = jrow[c]
            if row[c] is None:
                assert cell == "" and jv is None, (row["subset"], c)
            elif c.startswith("n"):
                assert int(cell) == jv == row[c]
            else:
                assert len(cell.split(".")[1]) == 4  # 4 decimal places
                assert float(cell) == pytest.approx(jv, abs=1e-12), (row["subset"], c)
                assert float(cell) == pytest.approx(row[c], abs=5e-5)

    solo_csv = dict(zip(header, body[2]))
    assert body[2][0] == "solo"
    assert solo_csv["AUROC"] == "" and solo_csv["AP"] == "" and solo_csv["EER"] == "" and solo_csv["Bal_Acc"] == ""
    assert solo_csv["Real_Acc"] == ""
    assert doc["rows"][2]["auroc"] is None and doc["rows"][2]["bal_acc"] is None
    assert "null" in paths["json"].read_text()

    assert [e["reason"] for e in doc["errors"]] == [errors[i] for i in sorted(errors)]


def test_write_report_scores_plots_and_no_temporaries(scored, tmp_path):
    image_set, prob, errors, report = scored
    out = tmp_path / "out"
    paths = write_report(report, out, image_set, prob, stem="run1")

    scores = read_csv(paths["scores"])
    assert scores[0] == ["path", "label", "prob_generated", "error"]
    assert len(scores) == 1 + len(image_set.samples)
    for i, (path, label, p, err) in enumerate(scores[1:]):
        assert path == str(image_set.samples[i].path)
        assert int(label) == image_set.samples[i].label
        if i in errors:
            assert p == "" and err == errors[i]
        else:
            assert float(p) == pytest.approx(prob[i], abs=1e-6) and err == ""

    for key in ("roc", "hist", "reliability"):
        assert paths[key].name == f"run1_{key}.png"
        with Image.open(paths[key]) as im:
            im.verify()
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100

    names = sorted(p.name for p in out.iterdir())
    expected = ["run1.csv", "run1.json", "run1_scores.csv", "run1_roc.png", "run1_hist.png", "run1_reliability.png"]
    assert names == sorted(expected)
    assert not any(n.startswith(".") or n.endswith(".tmp") for n in names)


def test_rewrite_replaces_files(scored, tmp_path):
    image_set, prob, errors, report = scored
    out = tmp_path / "out"
    write_report(report, out, image_set, prob)
    report2 = build_report(image_set, prob, 0.9, errors, model="again")
    paths = write_report(report2, out, image_set, prob)
    assert json.loads(paths["json"].read_text())["threshold"] == 0.9
    assert len(list(out.iterdir())) == 6


def test_all_failed_subset_and_unlabelled_rows(tmp_path):
    samples = [Sample(tmp_path / "a.png", 0), Sample(tmp_path / "b.png", 1), Sample(tmp_path / "c.png", 1)]
    image_set = ImageSet(samples=samples, subsets={"ok": [0, 1], "broken": [2]})
    prob = np.array([0.2, 0.7, NAN])
    report = build_report(image_set, prob, 0.5, {2: "corrupt"})
    assert report.row("broken")["n"] == 0 and report.row("broken")["acc"] is None
    assert report.mean["acc"] == 1.0 and report.mean["n"] == 2
    paths = write_report(report, tmp_path / "o", image_set, prob)
    body = read_csv(paths["csv"])[1:]
    assert body[1][0] == "broken" and body[1][1] == "0" and set(body[1][4:]) == {""}
    assert json.loads(paths["json"].read_text())["rows"][1]["acc"] is None
    table = format_table(report)
    assert [r[0] for r in table] == ["ok", "broken", "MEAN"]
    assert report_csv(report).splitlines()[1:] == [",".join(r) for r in table]
    assert not math.isnan(report.mean["auroc"])


def test_report_with_band_adds_coverage_columns(scored, tmp_path):
    image_set, prob, errors, _ = scored
    report = build_report(image_set, prob, 0.5, errors, model="toy", band=(0.4, 0.6))
    for name, idx in image_set.subsets.items():
        ok = [i for i in idx if i not in errors]
        expected = decided_metrics([image_set.samples[i].label for i in ok], prob[ok], 0.5, (0.4, 0.6))
        assert {k: report.row(name)[k] for k in expected} == pytest.approx(expected)
    assert report.row("solo")["coverage"] == 1.0 and report.row("solo")["n_uncertain"] == 0  # 0.9, 0.8: decided
    assert report.mean["coverage"] == pytest.approx(np.mean([r["coverage"] for r in report.rows[:-1]]))
    assert report.mean["n_uncertain"] == sum(r["n_uncertain"] for r in report.rows[:-1])

    paths = write_report(report, tmp_path / "out", image_set, prob)
    header, *body = read_csv(paths["csv"])
    assert header == ["Dataset"] + [DISPLAY.get(c, c) for c in COLUMNS] + ["Coverage", "Decided_Acc"]
    assert body == format_table(report)
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["band"] == [0.4, 0.6]
    for cells, jrow in zip(body, doc["rows"]):
        assert float(cells[-2]) == pytest.approx(jrow["coverage"], abs=1e-12)
        decided_acc = None if cells[-1] == "" else float(cells[-1])
        assert decided_acc == (None if jrow["decided_acc"] is None else pytest.approx(jrow["decided_acc"]))


def test_reliability_png_is_a_png_even_without_scored_images(tmp_path):
    samples = [Sample(tmp_path / "a.png", 0), Sample(tmp_path / "b.png", 1)]
    image_set = ImageSet(samples=samples, subsets={"all": [0, 1]})
    for prob in (np.array([0.2, 0.9]), np.array([NAN, NAN])):
        report = build_report(image_set, prob, 0.5, {})
        png = reliability_png(report, image_set, prob)
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
