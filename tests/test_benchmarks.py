"""`aigi eval --benchmarks-root/--benchmarks`: MIRROR's suites on a tiny benchmark tree built here."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import aigi.engine.benchmarks as bm
from aigi.cli import app
from aigi.registry import UnknownNameError

runner = CliRunner()
HEADER = ["Dataset", "Acc", "Real_Acc", "Fake_Acc", "Bal_Acc", "AUC", "AP"]
KEYS = ["acc", "real_acc", "fake_acc", "bal_acc", "auroc", "ap"]


def _img(path, seed, ext="png"):
    path.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(a).save(path / f"{seed}.{ext}")


def _pair(folder, seed, real="0_real", fake="1_fake"):
    for k in range(2):
        _img(folder / real, seed + k, "jpg")
        _img(folder / fake, seed + 10 + k)


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "bench"
    _pair(r / "Chameleon" / "test", 100)
    (r / "Chameleon" / "test" / "1_fake" / "broken.png").write_text("not a picture")
    _pair(r / "Genimage" / "ADM", 200)
    _pair(r / "Genimage" / "Glide" / "val", 300, real="nature", fake="ai")
    _pair(r / "AIGC_bm" / "progan" / "car", 400)
    _pair(r / "AIGC_bm" / "progan" / "cat", 500)
    _pair(r / "AIGC_bm" / "biggan", 600)
    _pair(r / "MyOwn", 700)
    return r


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _flat(text):
    return " ".join(text.split())  # rich wraps long lines


def _one(folder, pattern):
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_csv_per_suite_matches_json_and_notes_skipped_subsets(root, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["eval", "--benchmarks-root", str(root), "--benchmarks", "Chameleon", "GenImage", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    cham, gen = _one(out, "Chameleon_*.csv"), _one(out, "GenImage_*.csv")
    stamp = re.fullmatch(r"Chameleon_(\d{8}_\d{6})\.csv", cham.name).group(1)
    assert gen.name == f"GenImage_{stamp}.csv"  # one timestamp per run, the name as typed
    for f, subsets in ((cham, ["ALL"]), (gen, ["ADM", "Glide", "MEAN"])):
        rows = _csv(f)
        assert rows[0] == HEADER
        assert [r[0] for r in rows[1:]] == subsets
        report = json.loads((out / f.stem / "report.json").read_text())
        for r in rows[1:]:
            j = next(x for x in report["rows"] if x["subset"] == r[0])
            for cell, key in zip(r[1:], KEYS):
                assert float(cell) == pytest.approx(j[key], abs=6e-5)
        for name in ("report_scores.csv", "report_roc.png", "report_hist.png"):
            assert (out / f.stem / name).is_file()
    rows = _csv(gen)
    body = np.array([[float(c) for c in r[1:]] for r in rows[1:3]])
    assert [float(c) for c in rows[3][1:]] == pytest.approx(body.mean(axis=0).tolist(), abs=1e-12)
    assert report["suite"] == "GenImage" and report["timestamp"] == stamp
    # the corrupt file is reported, the run carries on
    assert "could not read" in res.output and "broken.png" in res.output
    cham_json = json.loads((out / cham.stem / "report.json").read_text())
    assert [e["path"].rsplit("/", 1)[-1] for e in cham_json["errors"]] == ["broken.png"]
    assert cham_json["rows"][0]["n"] == 4
    # missing subsets are notes, not errors
    assert "GenImage: subset Midjourney not found" in _flat(res.output)
    assert any("subset wukong not found" in n for n in report["notes"])


def test_aliases_repeated_and_comma_separated_names(root, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["eval", "--benchmarks-root", str(root), "-b", "aigcdetect,GENIMAGE", "-b", "myown", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    aigc = _one(out, "aigcdetect_*.csv")
    assert [r[0] for r in _csv(aigc)[1:]] == ["progan", "biggan", "MEAN"]
    report = json.loads((out / aigc.stem / "report.json").read_text())
    assert report["suite"] == "AIGCDetectBenchmark"
    assert report["rows"][0]["n"] == 8  # progan/{car,cat}/{0_real,1_fake}: one subset
    _one(out, "GENIMAGE_*.csv")
    # not in the table but a folder under the root: the whole folder, as ALL, no MEAN row
    assert [r[0] for r in _csv(_one(out, "myown_*.csv"))[1:]] == ["ALL"]


def test_unknown_suite_is_a_usage_error(root, tmp_path):
    res = runner.invoke(
        app,
        ["eval", "--benchmarks-root", str(root), "--benchmarks", "Chameleon", "Chamelon", "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2
    assert "unknown benchmark suite 'Chamelon'; did you mean 'Chameleon'?" in _flat(res.output)
    assert not (tmp_path / "o").exists()


def test_missing_suite_is_skipped_and_nothing_found_fails(root, tmp_path):
    res = runner.invoke(
        app,
        [
            "eval",
            "--benchmarks-root",
            str(root),
            "--benchmarks",
            "Chameleon",
            "Synthbuster",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Synthbuster: no folder" in res.output
    assert [p.suffix for p in (tmp_path / "o").glob("*.csv")] == [".csv"]
    res = runner.invoke(app, ["eval", "--benchmarks-root", str(root), "--benchmarks", "WildRF"])
    assert res.exit_code == 2 and "none of the named suites" in res.output


def test_data_and_benchmarks_root_are_exclusive(root, tmp_path):
    for args in (
        [],
        ["--data", str(root / "MyOwn"), "--benchmarks-root", str(root), "-b", "MyOwn"],
        ["--benchmarks-root", str(root)],
        ["--data", str(root / "MyOwn"), "-b", "MyOwn"],
        ["--data", str(root / "MyOwn"), "extra"],
        ["--benchmarks-root", str(root / "nope"), "-b", "MyOwn"],
    ):
        res = runner.invoke(app, ["eval", *args])
        assert res.exit_code == 2, (args, res.output)
        assert "error" in res.output
    res = runner.invoke(app, ["eval", "--data", str(root / "MyOwn")])  # unchanged
    assert res.exit_code == 0, res.output


def test_every_image_is_scored_once(root, tmp_path, monkeypatch):
    from aigi.checkpoints import load_default_model

    calls = []
    real = bm.score_paths

    def counting(model, paths, **kw):
        calls.append(list(paths))
        return real(model, paths, **kw)

    monkeypatch.setattr(bm, "score_paths", counting)
    bm.evaluate_suites(
        load_default_model(), root, ["GenImage", "Genimage"], tmp_path / "o", threshold=0.5, timestamp="20250101_000000"
    )
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 8
    a, b = (_csv(tmp_path / "o" / f"{n}_20250101_000000.csv") for n in ("GenImage", "Genimage"))
    assert a == b


def test_lookup_and_csv_format(root):
    assert bm.find_suite("univfd", root).folder == "UniversalFakeDetect"
    assert bm.find_suite("B-Free", root).name == "BFree-Online"
    assert bm.find_suite("drct", root).subsets[0] == "real"
    with pytest.raises(UnknownNameError, match="known: AIGCDetectBenchmark"):
        bm.find_suite("nothing", root)
    assert bm.split_names(["a, b", "c  d", "a"]) == ["a", "b", "c", "d"]
    (root / "genimage_lower").mkdir()
    assert bm.locate(root, "GENIMAGE_LOWER") == root / "genimage_lower"
    assert bm.locate(root, "Chameleon/TEST") == root / "Chameleon" / "test"
    rep = bm.Report(
        rows=[{"subset": "ALL", **dict.fromkeys(KEYS, None), "acc": 1 / 3}, {"subset": "MEAN"}], threshold=0.5
    )
    assert bm.suite_csv(rep).splitlines() == [",".join(HEADER), f"ALL,{1 / 3!r},,,,,"]
