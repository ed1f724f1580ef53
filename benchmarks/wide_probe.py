"""The probe retrained on more data (issue #12, "Data"): aigi-mini train + aigi-wide train, balanced by generator and
photo source, calibrated on both val folders; measured on every test set beside the shipped probe.

    python benchmarks/wide_probe.py [--data-root ../shared/data]

Training and validation images come from the two ``manifest.csv`` files (``split`` train / val); each image's subset
is its generator (generated) or its source (real), and ``--balance subset`` weights every subset alike within its
label, so that no generator or photo source dominates. Threshold, Platt scaling and the 0.95 band are chosen on val.
Also real-photo accuracy per kind of real test photo (aigi-wide: the manifest's family; aigi-mini: its source).
Writes ``results/wide_probe/`` (the model folder, per-set reports, ``wide_probe.{json,md}``) and the README table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from default_model import OLD_PROBE, update_readme
from uncertainty import TEST_SETS, measure

from aigi import api
from aigi.data.splits import manifest_rows, write_manifest
from aigi.engine.inference import score_paths
from aigi.engine.trainer import train
from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "wide_probe"
SETS = ("aigi-mini", "aigi-wide")


def manifest(root: Path, split: str, out: Path) -> Path:
    """One CSV manifest of ``split`` over both sets: path (relative to the manifest), label, subset = generator or
    real source."""
    rows = (r for name in SETS for r in manifest_rows(root, name) if r["split"] == split)
    return write_manifest(rows, root, out / f"{split}.csv")


REAL_KINDS = {"aigi-mini": ("test/0_real/", "source"), "aigi-wide": ("test/0_real/", "family")}


def real_accuracy_by_kind(model, root: Path) -> dict[str, dict[str, float]]:
    """Real-photo accuracy at the model's threshold per kind of real test photo (aigi-wide: the manifest's family,
    e.g. night, underwater; aigi-mini: its source), worst first: where it calls real photos generated."""
    out = {}
    for name, (prefix, column) in REAL_KINDS.items():
        rows = [r for r in manifest_rows(root, name) if r["path"].startswith(prefix)]
        scores = score_paths(model, [root / name / r["path"] for r in rows], progress=False)
        kinds: dict[str, list[bool]] = {}
        for r, p in zip(rows, scores.prob):
            if p == p:  # scored (NaN: unreadable)
                kinds.setdefault(r[column], []).append(bool(p < model.threshold))
        acc = {k: (sum(v) / len(v), len(v)) for k, v in kinds.items()}
        out[f"{name} test"] = {k: {"real_acc": a, "n": n} for k, (a, n) in sorted(acc.items(), key=lambda kv: kv[1][0])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    train_csv, val_csv = (Path(os.path.relpath(manifest(args.data_root, s, OUT))) for s in ("train", "val"))
    model_dir = Path(os.path.relpath(OUT / "model"))  # relative paths: the model's training record names them
    settings = dict(data=train_csv, val=val_csv, calibrate_on=val_csv, out=model_dir, balance="subset")
    model = train("univfd", settings, progress=True) if not (model_dir / "config.json").exists() else None
    model = api.load(model_dir) if model is None else model
    shipped = api.load(OLD_PROBE)  # the default before issue #12, as the committed numbers were measured
    rows = {
        n: {
            "shipped": measure(shipped, args.data_root, n, "shipped", OUT / "reports"),
            "wide": measure(model, args.data_root, n, "wide", OUT / "reports"),
        }
        for n in TEST_SETS
    }
    kinds = {m: real_accuracy_by_kind(x, args.data_root) for m, x in (("shipped", shipped), ("wide", model))}
    write_json(OUT / "wide_probe.json", {"model": model.config.model_dump(mode="json"), "test": rows, "real": kinds})
    table = markdown(model, rows) + "\n\n" + kinds_markdown(kinds)
    write_text(OUT / "wide_probe.md", table + "\n")
    update_readme("wide_probe", table)
    print(table)


def markdown(model, rows: dict) -> str:
    f = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    cal, band = model.config.calibration, model.config.band
    lines = [
        f"Wide probe: C={model.config.training.get('C')}, trained on {model.config.training.get('n_train')} images; "
        f"threshold {model.threshold:.3f}, band "
        + (f"{band[0]:.3f}-{band[1]:.3f}" if band else "none")
        + f" (val AUROC {f(cal.get('auroc'))}).",
        "",
        "| test set | model | AUROC | Real_Acc | Fake_Acc | ECE | coverage | decided acc | worst subset (AUROC) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_model in rows.items():
        for which, r in by_model.items():
            lines.append(
                f"| {name} | {which} | {f(r['auroc'])} | {f(r['real_acc'])} | {f(r['fake_acc'])} | {f(r['ece'])} |"
                f" {f(r['coverage'])} | {f(r['decided_acc'])} | {r['worst_subset']} ({f(r['worst_auroc'])}) |"
            )
    return "\n".join(lines)


def kinds_markdown(kinds: dict) -> str:
    """Real-photo accuracy per kind of real test photo, shipped vs wide probe, worst (for the wide probe) first."""
    lines = ["| real test photos | kind | n | Real_Acc shipped | Real_Acc wide |", "|---|---|---|---|---|"]
    for test_set, by_kind in kinds["wide"].items():
        for kind, r in list(by_kind.items())[:6]:
            before = kinds["shipped"][test_set][kind]["real_acc"]
            lines.append(f"| {test_set} | {kind} | {r['n']} | {before:.3f} | {r['real_acc']:.3f} |")
    return "Worst kinds of real photo (the six lowest per set for the wide probe):\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
