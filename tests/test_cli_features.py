"""`aigi features` (precompute the feature cache) and `aigi eval --real/--fake` (pooled reals per generator)."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi.backbones import BackboneSpec
from aigi.checkpoints import ModelConfig, build_model, load_default_model
from aigi.cli import app
from aigi.data.transforms import EvalProtocol
from aigi.engine.inference import extract_features, score_paths

runner = CliRunner()


def _img(path, seed, size=(72, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = (np.cumsum(rng.integers(0, 256, size=(size[1], size[0], 3)), axis=1) % 256).astype(np.uint8)
    Image.fromarray(a).save(path)
    return path


def _flat(text):
    return re.sub(r"\s+", " ", text)


def _counts(output):
    m = re.search(r"(\d+) computed, (\d+) already cached, (\d+) unreadable", _flat(output))
    assert m, output
    return tuple(map(int, m.groups()))


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "imgs"
    for i in range(3):
        _img(d / "0_real" / f"r{i}.png", i)
    _img(d / "1_fake" / "sd" / "f0.jpg", 10)
    _img(d / "loose" / "u0.png", 11)  # outside any label folder: cached all the same
    (d / "1_fake" / "broken.png").write_text("not a picture")
    (d / "notes.txt").write_text("not an image extension")
    return d


# -- aigi features ----------------------------------------------------------------------------------------------


def test_features_fills_the_cache_that_eval_reads(images, tmp_path):
    args = ["features", "--backbone", "efficientnet_lite0", "--data", str(images), "--kind", "global"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _counts(res.output) == (5, 0, 1)
    flat = _flat(res.output)
    assert "broken.png" in flat and "not an image" in flat  # the unreadable file and why
    assert "notes.txt" in flat  # skipped, named
    cache_dir = re.search(r"cache: (\S+)", flat).group(1)
    assert cache_dir.startswith(str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 5

    res = runner.invoke(app, args)  # second run: nothing left to compute
    assert res.exit_code == 0, res.output
    assert _counts(res.output) == (0, 5, 1)

    # a probe on the same features (EfficientNet-Lite0 head, the default format-aligned protocol) reads the same
    # entries; the shipped model fine-tunes its backbone, so its features are its own and never come from the cache
    paths = sorted(p for p in images.rglob("*") if p.suffix in {".png", ".jpg"} and p.name != "broken.png")
    probe = build_model(
        ModelConfig(detector="univfd", backbone=BackboneSpec(), protocol=EvalProtocol(format_align=True))
    )
    assert score_paths(probe, paths, progress=False).cache_hits == 5
    assert score_paths(load_default_model(), paths, progress=False).cache_hits == 0


def test_features_patches_are_the_mdmf_namespace(images, tmp_path):
    res = runner.invoke(
        app, ["features", "--backbone", "efficientnet_lite0", "--data", str(images)]
    )  # default kind: patches
    assert res.exit_code == 0, res.output
    assert _counts(res.output) == (5, 0, 1)
    assert "patches features (efficientnet_lite0, stage6)" in _flat(res.output)  # train_mdmf's default level
    spec = {"family": "efficientnet_lite0", "options": {"feature_level": "stage6"}}
    for pool in (1, 2):  # the patch unit is not part of the key: every pool size hits
        m = build_model(
            ModelConfig(detector="mdmf", params={"pool": pool}, backbone=spec, protocol=EvalProtocol(format_align=True))
        )
        ext = extract_features(m, [images / "0_real" / "r0.png", images / "loose" / "u0.png"], progress=False)
        assert ext.cache_hits == 2 and not ext.errors
    # another protocol is another namespace
    m = build_model(ModelConfig(detector="mdmf", backbone=spec, protocol=EvalProtocol(format_align=False)))
    assert extract_features(m, [images / "0_real" / "r0.png"], progress=False).cache_hits == 0
    res = runner.invoke(
        app,
        [
            "features",
            "--backbone",
            "efficientnet_lite0",
            "--feature-level",
            "stage6",
            "--no-format-align",
            "--data",
            str(images),
        ],
    )
    assert res.exit_code == 0 and _counts(res.output) == (4, 1, 1)


def test_features_tokens_and_csv_manifest(images, tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\nimgs/0_real/r0.png,real\nimgs/1_fake/sd/f0.jpg,fake\nimgs/0_real/r0.png,real\n")
    res = runner.invoke(
        app,
        [
            "features",
            "--backbone",
            "efficientnet_lite0",
            "--kind",
            "tokens",  # stage6: MIRROR's default
            "--data",
            str(manifest),
            "--batch-size",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert _counts(res.output) == (2, 0, 0)  # a path listed twice is read once
    m = build_model(
        ModelConfig(
            detector="mirror",
            params={"lora_r": 0},
            backbone={"family": "efficientnet_lite0", "options": {"feature_level": "stage6"}},
            protocol=EvalProtocol(format_align=True),
        )
    )
    assert extract_features(m, [images / "1_fake" / "sd" / "f0.jpg"], progress=False).cache_hits == 1


def test_features_failures(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("text")
    (bad / "b.jpg").write_bytes(b"")
    res = runner.invoke(app, ["features", "--backbone", "efficientnet_lite0", "--data", str(bad)])
    assert res.exit_code == 1
    assert _counts(res.output) == (0, 0, 2) and "no image could be read" in res.output

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, msg in (
        (["--data", str(empty)], "no image files"),
        (["--data", str(tmp_path / "nope")], "no such"),
        (["--data", str(bad), "--kind", "pixels"], "--kind must be one of"),
        (["--data", str(bad), "--backbone", "resnet9000"], "resnet9000"),
    ):
        base = [] if "--backbone" in args else ["--backbone", "efficientnet_lite0"]
        res = runner.invoke(app, ["features", *base, *args])
        assert res.exit_code == 2, (args, res.output)
        assert msg in _flat(res.output), (args, res.output)


# -- aigi eval --real/--fake --------------------------------------------------------------------------------------


@pytest.fixture()
def pooled(tmp_path):
    """4 reals; generators a/sdxl, b/sdxl (a name clash), midj; an image-less folder."""
    real = tmp_path / "real"
    for i in range(4):
        _img(real / f"r{i}.png", i)
    gens = {"a/sdxl": 2, "b/sdxl": 3, "midj": 2}
    for k, (g, n) in enumerate(gens.items()):
        for i in range(n):
            _img(tmp_path / g / f"g{i}.jpg", 100 * (k + 1) + i)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("nothing here")
    return tmp_path, real, [tmp_path / g for g in gens] + [tmp_path / "none"]


def _report(out):
    payload = json.loads((out / "report.json").read_text())
    return {r["subset"]: r for r in payload["rows"]}, payload


def test_eval_real_fake_reports_every_generator(pooled):
    root, real, fakes = pooled
    out = root / "report"
    res = runner.invoke(app, ["eval", "--real", str(real), "--fake", *map(str, fakes), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows, payload = _report(out)
    assert list(rows) == ["a/sdxl", "b/sdxl", "midj", "MEAN"]
    for name, n_fake in (("a/sdxl", 2), ("b/sdxl", 3), ("midj", 2)):
        assert (rows[name]["n_real"], rows[name]["n_fake"]) == (4, n_fake)  # every subset holds all the reals
        assert rows[name]["auroc"] is not None
    assert rows["MEAN"]["auroc"] == pytest.approx(
        np.mean([rows[g]["auroc"] for g in ("a/sdxl", "b/sdxl", "midj")]), abs=1e-3
    )
    flat = _flat(res.output)
    assert "MEAN" in flat and "midj" in flat and "b/sdxl" in flat
    assert "no image files, skipped" in flat and "readme.txt" in flat
    with open(out / "report_scores.csv") as fh:
        scored = list(csv.DictReader(fh))
    assert len(scored) == 4 + 7 and len({r["path"] for r in scored}) == 11  # every image scored once
    assert sorted(r["label"] for r in scored).count("0") == 4
    assert (out / "report.csv").read_text().splitlines()[0].startswith("Dataset")
    assert str(real) in payload["data"]


def test_eval_real_fake_repeated_and_mixed_forms(pooled):
    root, real, fakes = pooled
    a, b, m, _ = map(str, fakes)
    results = []
    for form in (
        ["--fake", a, "--fake", b, "--fake", m],
        ["--fake", a, b, "--fake", m],
        ["--fake", a, "--real", str(real), b, m],
    ):
        args = ["eval", *(["--real", str(real)] if "--real" not in form else []), *form, "--out", str(root / "o")]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (form, res.output)
        rows, _ = _report(root / "o")
        results.append({k: (v["n_real"], v["n_fake"], v["auroc"]) for k, v in rows.items()})
    assert results[0] == results[1] == results[2]
    assert list(results[0]) == ["a/sdxl", "b/sdxl", "midj", "MEAN"]
    res = runner.invoke(app, ["eval", "--real", str(real), "--fake", m])  # one generator, no --out
    assert res.exit_code == 0, res.output
    assert "midj" in res.output and "MEAN" in res.output


def test_eval_real_fake_usage_errors(pooled):
    root, real, fakes = pooled
    a, b = str(fakes[0]), str(fakes[1])
    cases = [
        (["--real", str(real)], "go together"),
        (["--fake", a, b], "go together"),
        (["--real", str(real), "--fake", a, "--data", str(root)], "replace --data"),
        (["--real", str(real), "--fake", a, "--benchmarks-root", str(root), "-b", "Chameleon"], "replace --data"),
        (["--real", str(real), "--fake", a, "--benchmarks", "Chameleon"], "--benchmarks needs --benchmarks-root"),
        (["--real", str(real), "--fake", a, str(root / "nope")], "no such folder"),
        (["--real", str(root / "none"), "--fake", a], "no image files"),
        (["--real", str(real), "--fake", str(root / "none")], "none of the --fake folders"),
        (["--real", str(real / "r0.png"), "--fake", a], "not a folder"),
        (["--data", str(root), "extra"], "unexpected argument"),
        ([], "--real with --fake"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, ["eval", *args, "--out", str(root / "o")])
        assert res.exit_code == 2, (args, res.output)
        assert msg in _flat(res.output), (args, res.output)
    assert not (root / "o").exists()


def test_benchmarks_still_take_several_names(tmp_path):
    res = runner.invoke(app, ["eval", "--benchmarks-root", str(tmp_path), "--benchmarks", "Chameleon", "Chamelon"])
    assert res.exit_code == 2
    assert "'Chamelon'" in _flat(res.output)  # the second name went to --benchmarks, not to --fake


def test_features_into_a_read_only_cache_is_an_error(images, tmp_path, monkeypatch):
    from faults import read_only

    (tmp_path / "cache").mkdir()
    read_only(monkeypatch, tmp_path / "cache")
    res = runner.invoke(
        app, ["features", "--backbone", "efficientnet_lite0", "--data", str(images), "--kind", "global"]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "warning: feature cache" in res.output  # said once, when the first entry failed
    assert f"error: cannot write {tmp_path / 'cache'}: the feature cache could not be written" in _flat(res.output)
