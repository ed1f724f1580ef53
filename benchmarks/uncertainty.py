"""Calibrated probability and the uncertainty band (issue #12, item 4) on the shipped model, measured honestly.

    python benchmarks/uncertainty.py [--data-root ../shared/data] [--band-accuracy 0.95]

Calibrates a copy of the shipped model (Platt scaling, the balanced-accuracy threshold, the band at which decided
images reach ``--band-accuracy``) on the pooled validation images of aigi-mini and aigi-wide (``val/`` only), then
evaluates it and the uncalibrated model on every test set: ECE before and after, and with the band the coverage
(share decided) and the accuracy on the decided images. No test image is used to choose anything. Writes
``results/uncertainty/uncertainty.{json,md}``, the per-set reports with reliability diagrams, and the README table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import tempfile
from pathlib import Path

from default_model import OLD_PROBE, update_readme

from aigi import api
from aigi.data.folders import discover
from aigi.engine.calibrate import calibrate
from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "uncertainty"
TEST_SETS = {
    "aigi-mini test": "aigi-mini/test",
    "forensynths_thumbs": "aigi-mini/forensynths_thumbs",
    "aigi-wide test": "aigi-wide/test",
}


def pooled_val_manifest(root: Path, folder: Path) -> Path:
    """A CSV manifest of every labelled image of both ``val/`` folders (absolute paths)."""
    path = folder / "val.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subset"])
        for name in ("aigi-mini", "aigi-wide"):
            for s in discover(root / name / "val").samples:
                w.writerow([str(s.path.resolve()), s.label, name])
    return path


def measure(model, root: Path, name: str, stem: str, out: Path = OUT) -> dict:
    """Evaluate ``model`` on the test set ``name``, write its report under ``out``; the MEAN row's numbers, the
    subset with the lowest AUROC and every subset's AUROC (``groups``)."""
    report = api.evaluate(model, root / TEST_SETS[name], model_name=stem, progress=False)
    report.write(out, stem=f"{stem}_{name.replace(' ', '_')}")
    mean = report.mean
    keys = ("auroc", "real_acc", "fake_acc", "ece", "coverage", "decided_acc")
    worst = min((r for r in report.rows[:-1] if r["auroc"] is not None), key=lambda r: r["auroc"])
    groups = {r["subset"]: r["auroc"] for r in report.rows[:-1]}
    return {
        **{k: mean.get(k) for k in keys},
        "worst_subset": worst["subset"],
        "worst_auroc": worst["auroc"],
        "groups": groups,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--band-accuracy", type=float, default=0.95)
    args = ap.parse_args()
    shipped = api.load(OLD_PROBE)  # the default these numbers were measured on (shipped until issue #12)
    calibrated = copy.deepcopy(shipped)
    with tempfile.TemporaryDirectory() as tmp:
        record = calibrate(calibrated, pooled_val_manifest(args.data_root, Path(tmp)), band_accuracy=args.band_accuracy)
    rows = {
        name: {
            "shipped": measure(shipped, args.data_root, name, "shipped"),
            "calibrated": measure(calibrated, args.data_root, name, "calibrated"),
        }
        for name in TEST_SETS
    }
    record["data"] = "aigi-mini val + aigi-wide val"
    write_json(OUT / "uncertainty.json", {"calibration": record, "test": rows})
    table = markdown(record, rows)
    write_text(OUT / "uncertainty.md", table + "\n")
    update_readme("uncertainty", table)
    print(table)


def markdown(record: dict, rows: dict) -> str:
    f = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    band = record["band"]
    lines = [
        f"Calibrated on aigi-mini val + aigi-wide val ({record['n_real']} real, {record['n_fake']} generated): Platt "
        f"scaling, threshold {record['threshold']:.3f}, band "
        + (f"{band[0]:.3f}-{band[1]:.3f} for decided accuracy >= {record['band_accuracy']:g}" if band else "none"),
        "",
        "| test set | AUROC | ECE shipped | ECE calibrated | real acc shipped | real acc calibrated | coverage | "
        "decided acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s, c = r["shipped"], r["calibrated"]
        lines.append(
            f"| {name} | {f(s['auroc'])} | {f(s['ece'])} | {f(c['ece'])} | {f(s['real_acc'])} | {f(c['real_acc'])} |"
            f" {f(c['coverage'])} | {f(c['decided_acc'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
