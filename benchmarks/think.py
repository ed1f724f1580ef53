"""Issue #15's benchmark: ``aigi detect --think fast|slow|auto`` on every test set.

    python benchmarks/think.py [--data-root ../shared/data] [--reuse]

Each mode runs :func:`aigi.think.detect` as ``aigi detect --think MODE`` does (the shipped model; provenance read;
the slow path = the shipped weights on the whole image, ``default_model/slow.json``, calibrated on both ``val/``; no
test image chooses anything) over every image of each test set, timed end to end. Per set and mode:

- images/s (wall time over the set, 2 threads), and for ``auto`` the share of images answered fast;
- decided: the share not ``uncertain``; accuracy, real accuracy and generated accuracy on the decided images;
- AUROC of the final probability (for ``auto``, the probability of the path that decided);
- for ``auto``, each path's own count and accuracy on the images it decided.

Writes ``results/think/think.{json,md}`` (and the per-image verdicts, ``<set>_<mode>.csv``) and the README block.
``--reuse`` keeps the (set, mode) cells already measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from default_model import update_readme
from sklearn.metrics import roc_auc_score
from uncertainty import TEST_SETS

from aigi import api, think
from aigi.data.folders import discover
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "think"
RESULTS = OUT / "think.json"
MODES = ("fast", "slow", "auto")


def verdict_rows(found: list[api.Detection], labels: list[int]) -> list[dict]:
    return [
        {
            "path": d.path,
            "label": y,
            "verdict": d.verdict,
            "prob_generated": d.prob_generated,
            "path_taken": d.thinking["path"],
        }
        for d, y in zip(found, labels)
    ]


def accuracy(rows: list[dict]) -> dict:
    """Decided share and accuracies on the decided images (uncertain and unreadable ones are not decided)."""
    decided = [r for r in rows if r["verdict"] in ("generated", "real")]
    right = [r for r in decided if (r["verdict"] == "generated") == (r["label"] == 1)]

    def share(part, whole):
        return len(part) / len(whole) if whole else None

    reals, fakes = [r for r in decided if r["label"] == 0], [r for r in decided if r["label"] == 1]
    return {
        "n": len(rows),
        "decided": share(decided, rows),
        "accuracy": share(right, decided),
        "real_acc": share([r for r in reals if r["verdict"] == "real"], reals),
        "fake_acc": share([r for r in fakes if r["verdict"] == "generated"], fakes),
    }


def cell(fast, slow, paths: list, labels: list[int], mode: str) -> dict:
    start = time.perf_counter()
    found = think.detect(fast, paths, mode, slow)
    seconds = time.perf_counter() - start
    rows = verdict_rows(found, labels)
    scored = [r for r in rows if r["prob_generated"] is not None]
    auroc = roc_auc_score([r["label"] for r in scored], [r["prob_generated"] for r in scored])
    result = {
        "images_per_s": len(paths) / seconds,
        "answered_fast": float(np.mean([r["path_taken"] == "fast" for r in rows])),
        "auroc": float(auroc),
        **accuracy(rows),
        "paths": {p: accuracy([r for r in rows if r["path_taken"] == p]) for p in ("fast", "slow")},
    }
    return result, rows


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def measure(root: Path, reuse: bool) -> dict:
    saved = read_json(RESULTS) if reuse and RESULTS.is_file() else {}
    fast = api.load()
    slow = think.load_slow_default(fast)
    for name, folder in TEST_SETS.items():
        image_set = discover(root / folder)
        paths = [s.path for s in image_set.samples]
        labels = [s.label for s in image_set.samples]
        for mode in MODES:
            if mode in saved.get(name, {}):
                continue
            result, rows = cell(fast, slow, paths, labels, mode)
            write_rows(OUT / f"{name.replace(' ', '_')}_{mode}.csv", rows)
            saved.setdefault(name, {})[mode] = result
            write_json(RESULTS, saved)
            print(f"{name} {mode}: {result['images_per_s']:.1f} images/s, AUROC {result['auroc']:.3f}", flush=True)
    return saved


def f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    head = (
        "| test set | mode | images/s | answered fast | decided | accuracy on decided | real / generated acc | AUROC |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, modes in results.items():
        for mode, r in modes.items():
            lines.append(
                f"| {name} | {mode} | {r['images_per_s']:.1f} | {f(r['answered_fast'], 2)} | {f(r['decided'], 2)} | "
                f"{f(r['accuracy'])} | {f(r['real_acc'])} / {f(r['fake_acc'])} | {f(r['auroc'])} |"
            )
    lines += ["", "Inside `auto`, each path on the images it answered:", ""]
    lines += ["| test set | path | images | decided | accuracy on decided |", "|---|---|---|---|---|"]
    for name, modes in results.items():
        for path, r in modes.get("auto", {}).get("paths", {}).items():
            lines.append(f"| {name} | {path} | {r['n']} | {f(r['decided'], 2)} | {f(r['accuracy'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--reuse", action="store_true", help="keep the cells already in results/think/think.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = measure(args.data_root, args.reuse)
    table = markdown(results)
    write_text(OUT / "think.md", table + "\n")
    update_readme("think", table)
    print(table)


if __name__ == "__main__":
    main()
