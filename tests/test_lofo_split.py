"""Issue #12, item 5: the leave-one-generator-family-out split never puts a held-out family's image in training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from aigi.data.folders import read_manifest
from aigi.data.splits import (
    LOFO_MANIFESTS,
    Families,
    lofo_split,
    manifest_rows,
    read_families,
    write_lofo_manifests,
    write_manifest,
)
from aigi.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = ("aigi-mini", "aigi-wide")
FAMILIES = REPO / "benchmarks" / "families.csv"
needs_data = pytest.mark.skipif(
    not all((DATA / n / "manifest.csv").is_file() for n in DATASETS), reason="../shared/data not here"
)


@pytest.fixture(scope="module")
def real_rows() -> list[dict]:
    return [r for n in DATASETS for r in manifest_rows(DATA, n)]


def row(dataset, split, label, generator="real", path=None, source="src") -> dict:
    path = path or f"{split}/{'0_real' if label == 'real' else '1_fake'}/{generator}_{split}.jpg"
    return dict(dataset=dataset, split=split, label=label, generator=generator, source=source, path=path)


@needs_data
def test_the_committed_mapping_names_every_generator_of_both_manifests(real_rows):
    families = read_families(FAMILIES)
    missing = {(r["dataset"], r["generator"]) for r in real_rows if r["label"] != "real"} - set(families.by_generator)
    assert not missing, f"generators without a family in {FAMILIES.name}: {sorted(missing)}"
    assert {"sd1", "sdxl", "flux", "dit_flow", "gan", "clip_vqgan", "unclip_dalle"} <= set(families.names())


@needs_data
@pytest.mark.parametrize("family", read_families(FAMILIES).names() if FAMILIES.is_file() else [])
def test_no_held_out_image_is_trained_or_validated_on(real_rows, family):
    families = read_families(FAMILIES)
    split = lofo_split(real_rows, families, family)
    assert split.held_out and all(families.of(r) == family for r in split.held_out)
    assert not any(families.of(r) == family for r in split.train + split.val)
    assert all(r["split"] == s for s in ("train", "val") for r in getattr(split, s))
    held = {(r["dataset"], r["path"]) for r in split.held_out}
    assert not held & {(r["dataset"], r["path"]) for r in split.train + split.val}
    assert all(r["label"] != "real" for r in split.held_out)  # no real photo among the held-out fakes
    # every other generated train/val image stays in training, and every real train photo
    others = [r for r in real_rows if r["split"] in ("train", "val") and families.of(r) != family]
    assert len(split.train) + len(split.val) == len(others)
    assert {r["split"] for r in split.val_reals} == {"val"} and {r["split"] for r in split.test_reals} == {"test"}


def test_synthetic_rows_split_by_family_and_the_manifests_say_so(tmp_path):
    data = tmp_path / "data"
    rows = [
        row("a", "train", "real"),
        row("a", "train", "fake", "sd15"),
        row("a", "train", "fake", "sdxl_turbo"),
        row("a", "val", "real"),
        row("a", "val", "fake", "sd15"),
        row("a", "val", "fake", "sdxl_turbo"),
        row("a", "test", "real"),
        row("a", "test", "real", path="forensynths_thumbs/x/0_real/r.jpg"),  # a paired benchmark's real: not pooled
        row("a", "test", "fake", "sdxl_turbo"),
    ]
    families = Families({("a", "sd15"): "sd1", ("a", "sdxl_turbo"): "sdxl"})
    split = lofo_split(rows, families, "sdxl")
    assert [(r["split"], r["generator"]) for r in split.train] == [("train", "real"), ("train", "sd15")]
    assert [(r["split"], r["generator"]) for r in split.val] == [("val", "real"), ("val", "sd15")]
    assert [r["split"] for r in split.held_out] == ["train", "val", "test"]
    assert [r["path"] for r in split.test_reals] == ["test/0_real/real_test.jpg"]

    paths = write_lofo_manifests(split, data, tmp_path / "fold")
    assert sorted(paths) == sorted(LOFO_MANIFESTS)
    held = read_manifest(paths["held_out_vs_val_reals"])
    assert held.labels == [1, 1, 1, 0]
    assert held.samples[-1].path.resolve() == (data / "a" / "val/0_real/real_val.jpg").resolve()
    with open(paths["train"], newline="") as fh:
        assert [r["subset"] for r in csv.DictReader(fh)] == ["a:src", "a:sd15"]  # photo source / generator


def test_a_generator_without_a_family_is_an_error_naming_the_mapping(tmp_path):
    mapping = tmp_path / "families.csv"
    mapping.write_text("dataset,generator,family\na,sd15,sd1\n")
    rows = [row("a", "train", "fake", "sd15"), row("a", "train", "fake", "brand_new")]
    with pytest.raises(DataError, match=r"families\.csv: no family for generator 'brand_new' of a"):
        lofo_split(rows, read_families(mapping), "sd1")


def test_a_mapping_without_the_columns_is_refused(tmp_path):
    mapping = tmp_path / "families.csv"
    mapping.write_text("generator,family\nsd15,sd1\n")
    with pytest.raises(DataError, match="needs the columns dataset, generator and family"):
        read_families(mapping)


def test_write_manifest_paths_are_relative_to_the_manifest(tmp_path):
    out = write_manifest([row("a", "train", "fake", "g")], tmp_path / "data", tmp_path / "m" / "x.csv")
    assert out.read_text().splitlines()[1] == "../data/a/train/1_fake/g_train.jpg,fake,a:g"
