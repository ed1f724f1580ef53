"""Issue #12's scoreboard: every candidate default measured the same way, the default chosen by a rule fixed before
any test number was looked at, and where the chosen one stands against the issue's targets.

    python benchmarks/accuracy.py [--data-root ../shared/data] [--install]

The rule (fixed in advance; only validation images decide it): a candidate must run `aigi detect` at >= 20 images/s
end to end on this 2-core CPU (the median of 3 CLI runs with their start-up, 256 images, feature cache off); among
those, the one with the highest mean AUROC over aigi-mini `val/` and aigi-wide `val/` wins; AUROCs within 0.005 are a
tie, and a tie goes to the faster. A stack's combiner is fitted on val, so its val AUROC is the 5-fold cross-fitted one
(each val image scored by a combiner fitted without it).

Then every candidate is evaluated on every test set (aigi-mini `test/`, `forensynths_thumbs/`, aigi-wide `test/`:
mean AUROC over generator groups, real-photo accuracy at the model's threshold, ECE, the band's coverage and decided
accuracy, the worst generator group, the worst kind of real photo). Writes ``results/accuracy/`` (per-set reports
with reliability diagrams, ``accuracy.{json,md}``) and the README table; ``--reuse`` keeps the rows already in
``accuracy.json`` (a fresh clone reproduces the table from them: the CNN's and the stack's large weights are not
committed). ``--install`` copies the chosen model into
the package as the shipped default.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from default_model import REPO, throughput, update_readme
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from uncertainty import TEST_SETS, measure
from wide_probe import real_accuracy_by_kind

from aigi import api
from aigi.checkpoints import ModelLoadError
from aigi.data.folders import discover
from aigi.detectors.stack import StackModel
from aigi.engine.inference import labelled_scores
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "accuracy"
CANDIDATES = {
    "old probe": HERE / "results" / "default_model" / "model",  # the shipped default before issue #12
    "wide probe": HERE / "results" / "wide_probe" / "model",
    "cnnspot": HERE / "results" / "cnnspot" / "model",
    "stack": HERE / "results" / "stack" / "model",
}
VAL_SETS = ("aigi-mini/val", "aigi-wide/val")
MIN_SPEED = 20.0  # images/s end to end
TIE = 0.005


def folder_bytes(folder: Path) -> int:
    """What a user ships: the model folder without ``train_state/`` (the optimizer state kept to train on)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "train_state" not in p.parts)


def val_aurocs(model, root: Path) -> dict[str, float]:
    """AUROC on each val folder, pooled over its images (a stack: cross-fitted, see the module docstring)."""
    if isinstance(model, StackModel):
        return cross_fitted_val_aurocs(model, root)
    out = {}
    for name in VAL_SETS:
        y, p = labelled_scores(model, root / name, progress=False, calibrated=False)
        out[name] = float(roc_auc_score(y, p))
    return out


def cross_fitted_val_aurocs(model: StackModel, root: Path, folds: int = 5) -> dict[str, float]:
    """The stack's val AUROC with each val image scored by a combiner fitted (as ``aigi train stack`` fits it: balanced
    logistic regression on standardised member logits, the stack's C) on the other folds of both val folders."""
    samples = [(name, s) for name in VAL_SETS for s in discover(root / name).samples]
    x = model.member_logits(model.member_scores([s.path for _, s in samples], progress=False))
    y = np.array([s.label for _, s in samples])
    ok = np.isfinite(x).all(1)
    C = model.config.training["config"]["C"]
    combiner = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=10_000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    p = cross_val_predict(combiner, x[ok], y[ok], cv=cv, method="decision_function")
    names = np.array([n for n, _ in samples])[ok]
    return {n: float(roc_auc_score(y[ok][names == n], p[names == n])) for n in VAL_SETS}


def choose(rows: dict[str, dict]) -> str | None:
    """The rule of the module docstring, on val AUROC and speed only; None when no candidate is fast enough."""
    fast = {k: r for k, r in rows.items() if r["images_per_s"] >= MIN_SPEED}
    if not fast:
        return None
    best = max(r["val_mean_auroc"] for r in fast.values())
    tied = [k for k, r in fast.items() if r["val_mean_auroc"] >= best - TIE]
    return max(tied, key=lambda k: fast[k]["images_per_s"])


def candidate_row(name: str, folder: Path, root: Path, reports: Path = OUT / "reports") -> dict:
    """One model measured: val AUROC, ``aigi detect`` speed, every test set (reports under ``reports``), real kinds."""
    model = api.load(folder)
    val = val_aurocs(model, root)
    speed = throughput(folder, root / "aigi-mini" / "val")
    test = {t: measure(model, root, t, name.replace(" ", "_"), reports) for t in TEST_SETS}
    kinds = real_accuracy_by_kind(model, root)
    worst_real = {s: next(iter(k.items())) for s, k in kinds.items()}
    return {
        "folder": os.path.relpath(folder, REPO),
        "detector": model.config.detector,
        "val": val,
        "val_mean_auroc": float(np.mean(list(val.values()))),
        "images_per_s": speed["cli_images_per_s"],
        "speed": speed,
        "bytes": folder_bytes(folder),
        "test": test,
        "worst_real": {s: {"kind": k, **v} for s, (k, v) in worst_real.items()},
        "real_by_kind": kinds,
    }


RESULTS = OUT / "accuracy.json"  # the rule, the choice and every candidate's row (written as each is measured)
RULE = __doc__.split("\n\n")[2]


def measured_rows(root: Path, reuse: bool) -> dict[str, dict]:
    """Each candidate's row, saved as soon as it is measured (``reuse``: the rows already in ``accuracy.json`` are kept,
    so an interrupted run goes on where it stopped). A candidate whose folder is incomplete is skipped with a line
    saying why (the fine-tuned CNN's 12.8 MiB of weights are not committed: rebuild it with its training command)."""
    rows = read_json(RESULTS)["candidates"] if reuse and RESULTS.is_file() else {}
    for name, folder in CANDIDATES.items():
        if name in rows or not (folder / "config.json").is_file():
            continue
        try:
            rows[name] = candidate_row(name, folder, root)
        except ModelLoadError as e:
            print(f"skipped {name}: {e}")
            continue
        write_json(RESULTS, {"rule": RULE, "chosen": None, "candidates": rows})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(REPO.parent / "shared" / "data")))
    ap.add_argument("--install", action="store_true", help="copy the chosen model into src/aigi/default_model")
    ap.add_argument("--reuse", action="store_true", help="keep the candidates already measured in accuracy.json")
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    rows = measured_rows(args.data_root, args.reuse)
    chosen = choose(rows)
    write_json(RESULTS, {"rule": RULE, "chosen": chosen, "candidates": rows})
    table = markdown(rows, chosen)
    write_text(OUT / "accuracy.md", table + "\n")
    update_readme("accuracy", table)
    print(table)
    if args.install and chosen is not None:
        install(CANDIDATES[chosen])


def install(folder: Path) -> None:
    dest = REPO / "src" / "aigi" / "default_model"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("train_state", "train_log.jsonl"))
    print(f"installed {folder} into {dest}")


def size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def f3(v) -> str:
    return "" if v is None else f"{v:.3f}"


def markdown(rows: dict, chosen: str) -> str:
    head = (
        "| model | val AUROC (mini / wide) | img/s | size | test set | AUROC | Real_Acc | worst real kind (acc) "
        "| worst group (AUROC) | ECE | coverage | decided acc |"
    )
    lines = [head, "|" + "---|" * 12]
    for name, r in rows.items():
        mark = f"**{name}** (chosen)" if name == chosen else name
        val = " / ".join(f3(v) for v in r["val"].values())
        for i, (t, m) in enumerate(r["test"].items()):
            worst = r["worst_real"][f"{t.split()[0]} test"] if t != "forensynths_thumbs" else None
            first = (mark, val, f"{r['images_per_s']:.1f}", size_text(r["bytes"])) if i == 0 else ("",) * 4
            kind = f"{worst['kind']} ({worst['real_acc']:.2f})" if worst else ""
            lines.append(
                "| " + " | ".join(first) + f" | {t} | {f3(m['auroc'])} | {f3(m['real_acc'])} | {kind} "
                f"| {m['worst_subset']} ({f3(m['worst_auroc'])}) | {f3(m['ece'])} | {f3(m['coverage'])} "
                f"| {f3(m['decided_acc'])} |"
            )
    if chosen is None:
        return "\n".join(lines) + f"\n\nNo candidate reached {MIN_SPEED:g} images/s end to end: none is chosen."
    return "\n".join(lines) + "\n\n" + targets_markdown(rows[chosen], chosen)


def targets_markdown(r: dict, chosen: str) -> str:
    t = r["test"]
    groups = min(m["worst_auroc"] for m in t.values())
    real = {s: m["real_acc"] for s, m in t.items() if s != "forensynths_thumbs"}
    checks = [
        ("mean AUROC aigi-mini test >= 0.85", t["aigi-mini test"]["auroc"], 0.85),
        ("mean AUROC aigi-wide test >= 0.85", t["aigi-wide test"]["auroc"], 0.85),
        ("mean AUROC forensynths_thumbs >= 0.75", t["forensynths_thumbs"]["auroc"], 0.75),
        ("no generator group below 0.70", groups, 0.70),
        *((f"real-photo accuracy {s} >= 0.90", v, 0.90) for s, v in real.items()),
        ("aigi detect >= 20 images/s end to end", r["images_per_s"], MIN_SPEED),
    ]
    lines = [
        f"Targets of issue #12 for the chosen default ({chosen}):",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {v:.3f} | {'yes' if v >= bound else 'no'} |" for what, v, bound in checks]
    cover = ", ".join(f"{s} {f3(m['coverage'])}" for s, m in t.items())
    lines += ["", f"Coverage of the 0.95 band on each test set: {cover}. Model folder: {size_text(r['bytes'])}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
