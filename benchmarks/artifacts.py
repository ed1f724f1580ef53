"""Issue #18's benchmark: the artifact detectors (NPR, the local-patch detector) beside the semantic ones, alone and in
the stack, with their robustness to post-processing.

    python benchmarks/artifacts.py [--data-root ../shared/data] [--reuse] [--no-sweep]

Models (each trained on aigi-mini + aigi-wide ``train/``, chosen and calibrated on both ``val/``; the commands are in
``benchmarks/results/artifacts/README.md``): the wide probe and the fine-tuned CNN of issue #12, NPR, the local-patch
detector, the stack of probe + CNN (issue #12) and the stack of all four (built here by ``aigi train stack`` on both
``val/`` folders when missing). Each is measured as ``benchmarks/accuracy.py`` measures a candidate default: val AUROC
(a stack's cross-fitted), ``aigi detect`` images/s end to end (median of 3 CLI runs, 256 images, cache off), model
size, and on every test set the mean AUROC over generator groups, each group's AUROC and real-photo accuracy.
The sweep scores the CNN, NPR and the local-patch detector on ``forensynths_thumbs/`` and aigi-wide ``test/`` after JPEG
95/85/75, a downscale by 0.5 and a Gaussian blur (sigma 1). The local-patch detector's pooling (mean, or the mean of the top 2/10/25% of patch logits) is compared on val.
Writes ``results/artifacts/`` (``artifacts.{json,md}``, the
per-set reports, the sweep's CSV and plots) and the README block; ``--reuse`` keeps the rows already measured.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from accuracy import VAL_SETS, candidate_row, size_text
from default_model import REPO, update_readme
from sklearn.metrics import roc_auc_score
from uncertainty import TEST_SETS

from aigi.checkpoints import ModelLoadError, load_model
from aigi.data.folders import discover
from aigi.data.perturb import parse_perturbation
from aigi.engine.inference import labelled_scores
from aigi.engine.robustness import run_sweep
from aigi.engine.trainer import train
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "artifacts"
RESULTS = OUT / "artifacts.json"
VAL_CSV = HERE / "results" / "wide_probe" / "val.csv"  # aigi-mini val + aigi-wide val
MODELS = {
    "wide probe": HERE / "results" / "wide_probe" / "model",
    "cnnspot": HERE / "results" / "cnnspot" / "model",
    "npr": OUT / "npr" / "model",
    "localpatch": OUT / "localpatch" / "model",
    "stack (probe + CNN)": HERE / "results" / "stack" / "model",
    "stack + artifacts": OUT / "stack_all" / "model",
}
STACK_MEMBERS = ("wide probe", "cnnspot", "npr", "localpatch")
SWEEP = ["none", "jpeg:95", "jpeg:85", "jpeg:75", "resize:0.5", "blur:1"]
SWEEP_MODELS = ("cnnspot", "npr", "localpatch")
SWEEP_SETS = ("forensynths_thumbs", "aigi-wide test")
POOLINGS = {"mean": {"pool": "mean"}, **{f"top {f:g}": {"pool": "topk", "top_fraction": f} for f in (0.02, 0.1, 0.25)}}


def build_stack() -> None:
    """The stack of all four, fitted on both val folders (as the probe + CNN stack was), unless it exists."""
    out = MODELS["stack + artifacts"]
    if (out / "config.json").is_file():
        return
    members = [MODELS[name] for name in STACK_MEMBERS]
    train("stack", {"member": members, "val": VAL_CSV, "calibrate_on": VAL_CSV, "out": out}, progress=False)


def measured_rows(root: Path, reuse: bool) -> dict[str, dict]:
    rows = read_json(RESULTS).get("models") or {} if reuse and RESULTS.is_file() else {}
    for name, folder in MODELS.items():
        if name in rows:
            continue
        try:
            rows[name] = candidate_row(name, folder, root, OUT / "reports")
        except ModelLoadError as e:
            print(f"skipped {name}: {e}")
            continue
        print(f"measured {name}", flush=True)
        write_json(RESULTS, {**_saved(), "models": rows})
    return rows


def _saved() -> dict:
    return read_json(RESULTS) if RESULTS.is_file() else {}


def sweep(root: Path) -> dict[str, list[dict]]:
    """The robustness sweep per test set (resumable: ``run_sweep`` keeps its rows in each set's folder)."""
    models = {name: load_model(MODELS[name]) for name in SWEEP_MODELS}
    perturbations = [parse_perturbation(t) for t in SWEEP]
    out = {}
    for name in SWEEP_SETS:
        folder = OUT / "sweep" / name.replace(" ", "_")
        out[name] = run_sweep(
            models, discover(root / TEST_SETS[name]), perturbations, folder, batch_size=16, progress=False, data=name
        )
    return out


def pooling_choice(root: Path) -> dict[str, dict[str, float]]:
    """The local-patch detector's val AUROC on each val folder with each way of pooling its patch logits."""
    model = load_model(MODELS["localpatch"])
    out = {}
    for name, params in POOLINGS.items():
        model.detector.params = model.detector.params.model_copy(update=params)
        out[name] = {}
        for val in VAL_SETS:
            y, p = labelled_scores(model, root / val, progress=False, calibrated=False)
            out[name][val] = float(roc_auc_score(y, p))
    return out


def pooling_table(pooling: dict) -> str:
    lines = ["| local-patch pooling | " + " | ".join(f"{v} AUROC" for v in VAL_SETS) + " |", "|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f3(a) for a in v.values()) + " |" for k, v in pooling.items()]
    return "\n".join(lines)


def f3(v) -> str:
    return "" if v is None else f"{v:.3f}"


def models_table(rows: dict) -> str:
    sets = list(TEST_SETS)
    head = "| model | val AUROC (mini / wide) | img/s | size | " + " | ".join(f"{s} AUROC / Real_Acc" for s in sets)
    lines = [head + " |", "|" + "---|" * (4 + len(sets))]
    for name, r in rows.items():
        val = " / ".join(f3(v) for v in r["val"].values())
        tests = " | ".join(f"{f3(r['test'][s]['auroc'])} / {f3(r['test'][s]['real_acc'])}" for s in sets)
        lines.append(f"| {name} | {val} | {r['images_per_s']:.1f} | {size_text(r['bytes'])} | {tests} |")
    return "\n".join(lines)


def groups_table(rows: dict) -> str:
    names = list(rows)
    lines = ["| test set | generator group | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    for s in TEST_SETS:
        groups = next(iter(rows.values()))["test"][s]["groups"]
        for g in groups:
            cells = " | ".join(f3(rows[n]["test"][s]["groups"].get(g)) for n in names)
            lines.append(f"| {s} | {g} | {cells} |")
    return "\n".join(lines)


def sweep_table(results: dict[str, list[dict]]) -> str:
    lines = ["| test set | model | " + " | ".join(SWEEP) + " |", "|" + "---|" * (2 + len(SWEEP))]
    for s, rows in results.items():
        for m in SWEEP_MODELS:
            by = {r["perturbation"]: r["mean_auroc"] for r in rows if r["model"] == m}
            lines.append(f"| {s} | {m} | " + " | ".join(f3(by.get(p)) for p in SWEEP) + " |")
    return "\n".join(lines)


def targets_table(rows: dict) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    npr = rows.get("npr", {}).get("test", {}).get("forensynths_thumbs", {}).get("auroc")
    if npr is not None:
        lines.append(f"| NPR mean AUROC forensynths_thumbs >= 0.80 | {npr:.3f} | {'yes' if npr >= 0.80 else 'no'} |")
    with_, without = rows.get("stack + artifacts"), rows.get("stack (probe + CNN)")
    if with_ and without:
        for s in TEST_SETS:
            for key, what in (("auroc", "mean AUROC"), ("worst_auroc", "worst group AUROC")):
                a, b = with_["test"][s][key], without["test"][s][key]
                lines.append(f"| stack with > without, {s} {what} | {a:.3f} vs {b:.3f} | {'yes' if a > b else 'no'} |")
    return "\n".join(lines)


def markdown(rows: dict, sweep_results: dict | None, pooling: dict) -> str:
    parts = [
        pooling_table(pooling),
        models_table(rows),
        "Per generator group (AUROC of each group against the set's real photos):",
        groups_table(rows),
    ]
    if sweep_results:
        parts += [
            "Robustness (mean AUROC over the set's generator groups after each post-processing):",
            sweep_table(sweep_results),
        ]
    parts += ["Targets of issue #18:", targets_table(rows)]
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(REPO.parent / "shared" / "data")))
    ap.add_argument("--reuse", action="store_true", help="keep the models already measured in artifacts.json")
    ap.add_argument("--no-sweep", action="store_true", help="skip the robustness sweep")
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    build_stack()
    saved = _saved()
    pooling = saved["pooling"] if args.reuse and "pooling" in saved else pooling_choice(args.data_root)
    write_json(RESULTS, {**saved, "pooling": pooling})
    rows = measured_rows(args.data_root, args.reuse)
    sweep_results = None if args.no_sweep else sweep(args.data_root)
    write_json(RESULTS, {"models": rows, "sweep": sweep_results, "sweep_levels": SWEEP, "pooling": pooling})
    table = markdown(rows, sweep_results, pooling)
    write_text(OUT / "artifacts.md", table + "\n")
    update_readme("artifacts", table)
    print(table)


if __name__ == "__main__":
    main()
