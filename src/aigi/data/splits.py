"""Training and evaluation manifests drawn from datasets laid out like aigi-mini and aigi-wide, and the
leave-one-generator-family-out split (issue #12).

Such a dataset has a ``manifest.csv`` with one row per image: ``split`` (train, val, test), ``path`` (relative to the
dataset), ``label`` (real or fake), ``generator`` and ``source``. :func:`manifest_rows` reads it, each row tagged with
its dataset; :func:`write_manifest` writes rows as the CSV manifest every ``aigi`` command reads (``path``,
``label``, ``subset`` = dataset:generator for generated images, dataset:source for real ones, so that
``--balance subset`` weights every generator and photo source alike).

:func:`lofo_split` holds one generator family out: no image of it is trained on or used to choose anything, and the
detector is then measured on that family's images alone. The family of a generator comes from a mapping
(:func:`read_families`), which must name every generator the manifests hold: a generator without a family is an
error, never silently kept in training.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aigi.errors import DataError
from aigi.io import write_text

TEST_REALS = "test/0_real/"  # the pooled real test photos of a dataset (other test folders are paired benchmarks)


def manifest_rows(root: Path, name: str) -> list[dict]:
    """The rows of ``root/name/manifest.csv``, each with ``dataset`` = ``name`` added."""
    path = Path(root) / name / "manifest.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [{**row, "dataset": name} for row in csv.DictReader(fh)]
    except OSError as e:
        raise DataError(f"{path}: cannot read the dataset's manifest ({e.strerror or e})") from None


def is_real(row: dict) -> bool:
    return row["label"] == "real"


def subset_of(row: dict) -> str:
    """dataset:generator for a generated image, dataset:source for a real one."""
    return f"{row['dataset']}:{row['source'] if is_real(row) else row['generator']}"


def write_manifest(rows: Iterable[dict], root: Path, path: Path) -> Path:
    """Write ``rows`` (from :func:`manifest_rows` of ``root``) as a ``path,label,subset`` CSV at ``path``, each image
    path relative to the CSV's folder (so the manifest and the data can move together)."""
    path = Path(path)
    here = path.parent.resolve()
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["path", "label", "subset"])
    for r in rows:
        where = os.path.relpath((Path(root) / r["dataset"] / r["path"]).resolve(), here)
        w.writerow([where, r["label"], subset_of(r)])
    return write_text(path, text.getvalue())


@dataclass(frozen=True)
class Families:
    """Which family each (dataset, generator) belongs to; ``source`` names the mapping in errors."""

    by_generator: dict[tuple[str, str], str]
    source: str = "the family mapping"

    def of(self, row: dict) -> str | None:
        """The family of a generated image's generator; None for a real photo."""
        if is_real(row):
            return None
        key = (row["dataset"], row["generator"])
        if key not in self.by_generator:
            raise DataError(f"{self.source}: no family for generator {key[1]!r} of {key[0]} (add a row for it)")
        return self.by_generator[key]

    def names(self) -> list[str]:
        return sorted(set(self.by_generator.values()))


def read_families(path: Path) -> Families:
    """A CSV with columns dataset, generator, family."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise DataError(f"{path}: cannot read the family mapping ({e.strerror or e})") from None
    if not rows or not {"dataset", "generator", "family"} <= set(rows[0]):
        raise DataError(f"{path}: a family mapping needs the columns dataset, generator and family")
    return Families({(r["dataset"], r["generator"]): r["family"] for r in rows}, source=str(path))


@dataclass
class LofoSplit:
    """One fold of the leave-one-family-out benchmark; every list holds manifest rows."""

    family: str
    train: list[dict]  # train split minus the family's images (every real train photo kept)
    val: list[dict]  # val split minus the family's images: where C and the threshold are chosen
    held_out: list[dict]  # the family's generated images of every split: never trained on in this fold
    val_reals: list[dict]  # the real photos of the val splits
    test_reals: list[dict]  # the pooled real test photos (test/0_real/)


def lofo_split(rows: Iterable[dict], families: Families, held_out: str) -> LofoSplit:
    """Hold ``held_out`` out of ``rows`` (from several datasets' manifests).

    The held-out fakes are scored against real photos no fold trains on: the val reals, whose kinds of photo are
    those of training (so a low AUROC is the unseen family, not unseen photos; they take part in choosing C and the
    threshold, which is why the test reals are there too), and the test reals (unseen kinds of photo as well)."""
    split = LofoSplit(held_out, [], [], [], [], [])
    for r in rows:
        family = families.of(r)
        if family == held_out:
            split.held_out.append(r)
        elif r["split"] in ("train", "val"):
            (split.train if r["split"] == "train" else split.val).append(r)
        if family is None and r["split"] == "val":
            split.val_reals.append(r)
        elif family is None and r["split"] == "test" and r["path"].startswith(TEST_REALS):
            split.test_reals.append(r)
    return split


LOFO_MANIFESTS = ("train", "val", "held_out_vs_val_reals", "held_out_vs_test_reals")


def write_lofo_manifests(split: LofoSplit, root: Path, out: Path) -> dict[str, Path]:
    """The fold's four manifests under ``out`` (names: :data:`LOFO_MANIFESTS`)."""
    parts = {
        "train": split.train,
        "val": split.val,
        "held_out_vs_val_reals": split.held_out + split.val_reals,
        "held_out_vs_test_reals": split.held_out + split.test_reals,
    }
    return {name: write_manifest(rows, root, Path(out) / f"{name}.csv") for name, rows in parts.items()}
