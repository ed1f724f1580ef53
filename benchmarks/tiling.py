"""Scoring the whole image (issue #12, item 2): which views of an image a model scores, and how their logits combine.

    python benchmarks/tiling.py [--model DIR] [--name NAME] [--data-root ../shared/data] [--speed-images 200]
                                [--choices NAME ...]

For each protocol choice (views, mirror, combination), a copy of the model (default: the shipped one) gets that
protocol and is recalibrated on the pooled validation images of aigi-mini and aigi-wide (``val/`` only: Platt
scaling, threshold, 0.95 band), then evaluated on every test set; its speed is ``score_paths`` images/s with the
feature cache off on the first ``--speed-images`` val images (after a warm-up; threads: ``--threads``), and that
relative to the centre crop's measured just before it (the machine may be shared: the ratio is the steadier number).
Choices with the same views share their cached features, so each combination after the first costs no extraction.

Nearly every image of these sets is 256 x 256: a 224 grid is then at most 2 x 2 (a larger cap changes nothing),
its four tiles are exactly the four corner crops, and ``grid, <= 1 tile`` is the whole image downscaled to 224.
Writes ``results/tiling/<name>.json``, ``tiling.json`` and ``tiling.md`` (every model measured so far) and the
README table. The rule that picks a protocol reads val only (see :func:`pick`).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from default_model import OLD_PROBE, update_readme
from uncertainty import TEST_SETS, measure, pooled_val_manifest

from aigi import api
from aigi.data.folders import discover
from aigi.engine.calibrate import calibrate
from aigi.engine.inference import score_paths
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "tiling"
# name -> the protocol's view fields; each is measured with every combination in COMBINES that differs for it
CHOICES = {
    "center (today)": {},
    "center + mirror": {"flip": True},
    "center + 4 corners": {"views": "center_corners"},
    "grid, <= 1 tile": {"views": "grid", "max_tiles": 1},
    "grid, <= 4 tiles": {"views": "grid", "max_tiles": 4},
    "grid, <= 4 tiles + mirror": {"views": "grid", "max_tiles": 4, "flip": True},
}
COMBINES = {"mean": {"combine": "mean"}, "max": {"combine": "max"}, "top-2 mean": {"combine": "topk", "top_k": 2}}
MIN_SPEED = 0.25  # a protocol must run at least this fraction of the centre crop's speed (idle CPU: ~20 images/s)
TIE = 0.002  # val AUROCs closer than this are a tie: the faster protocol wins


def combines(views: dict) -> dict:
    """The combinations that can differ for ``views``: none for one view; mean and max for two (top-2 is the mean)."""
    if not views or views.get("max_tiles") == 1:
        return {"mean": {}}
    if views == {"flip": True}:
        return {k: COMBINES[k] for k in ("mean", "max")}
    return COMBINES


def speed(model, files: list[Path]) -> float:
    """Images/s of the whole scoring path (decode, views, backbone, head, combine), feature cache off."""
    score_paths(model, files[:8], use_cache=False, progress=False)  # warm-up
    t0 = time.perf_counter()
    score_paths(model, files, use_cache=False, progress=False)
    return len(files) / (time.perf_counter() - t0)


def speeds(model, views: dict, files: list[Path]) -> tuple[float, float]:
    """Images/s with these views, and that over the centre crop's images/s measured just before."""
    centre = speed(model, files) if views else None
    with_views = copy.deepcopy(model)
    with_views.config.protocol = model.config.protocol.replace(**views)
    per_s = speed(with_views, files)
    return per_s, per_s / (centre or per_s)


def run_choice(base, fields: dict, val_csv: Path, root: Path, reports: Path) -> dict:
    """Recalibrate a copy of ``base`` with these protocol fields on val; its val AUROC and each test set's numbers."""
    model = copy.deepcopy(base)
    model.config.protocol = base.config.protocol.replace(**fields)
    record = calibrate(model, val_csv, progress=False)
    tests = {name: measure(model, root, name, "tiling", reports) for name in TEST_SETS}
    return {
        "views": model.config.protocol.describe(),
        "val_auroc": record["auroc"],
        "threshold": record["threshold"],
        "test": {name: {k: r[k] for k in ("auroc", "real_acc", "fake_acc")} for name, r in tests.items()},
    }


def pick(rows: list[dict]) -> dict:
    """The protocol this benchmark would choose, from val only: the best val AUROC among the choices at least
    ``MIN_SPEED`` times as fast as the centre crop; AUROCs within ``TIE`` of the best are a tie, won by the fastest."""
    fast = [r for r in rows if r["speed_vs_center"] >= MIN_SPEED]
    best = max(r["val_auroc"] for r in fast)
    return max((r for r in fast if r["val_auroc"] >= best - TIE), key=lambda r: r["speed_vs_center"])


def measure_model(model, root: Path, speed_files: list[Path], choices: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        val_csv = pooled_val_manifest(root, Path(tmp))
        for choice in choices:
            views = CHOICES[choice]
            per_s, ratio = speeds(model, views, speed_files)
            for how, combine in combines(views).items():
                row = run_choice(model, {**views, **combine}, val_csv, root, Path(tmp) / "reports")
                rows.append({"choice": choice, "combine": how, **row, "images_per_s": per_s, "speed_vs_center": ratio})
                print(f"{choice:28} {how:10} val {row['val_auroc']:.3f} {per_s:6.1f} img/s ({ratio:.2f}x)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--name", default=None, help="how the results name the model (default: from the folder)")
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--speed-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--choices", nargs="+", choices=list(CHOICES), default=list(CHOICES), metavar="NAME")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or OLD_PROBE  # the default its committed results were measured on
    name = args.name or (
        "shipped" if args.model is None else Path(os.path.relpath(folder, HERE / "results")).as_posix()
    )
    speed_files = [s.path for s in discover(args.data_root / "aigi-mini" / "val").samples][: args.speed_images]
    rows = measure_model(api.load(folder), args.data_root, speed_files, args.choices)
    result = {"model": name, "threads": args.threads, "speed_images": len(speed_files), "rows": rows}
    write_json(OUT / f"{name.replace('/', '_')}.json", {**result, "pick": pick(rows)})
    table = "\n\n".join(markdown(read_json(p)) for p in sorted(OUT.glob("*.json")) if p.name != "tiling.json")
    write_json(OUT / "tiling.json", [read_json(p) for p in sorted(OUT.glob("*.json")) if p.name != "tiling.json"])
    write_text(OUT / "tiling.md", table + "\n")
    update_readme("tiling", table)
    print(table)


def markdown(result: dict) -> str:
    sets = list(TEST_SETS)
    lines = [
        f"Model `{result['model']}`, recalibrated on aigi-mini val + aigi-wide val for each protocol; images/s: "
        f"{result['speed_images']} val images, cache off, {result['threads']} threads.",
        "",
        "| views | combine | images/s | x centre | val AUROC | " + " | ".join(f"{s} AUROC" for s in sets) + " |",
        "|---|---|---|---|---|" + "---|" * len(sets),
    ]
    for r in result["rows"]:
        tests = " | ".join(f"{r['test'][s]['auroc']:.3f}" for s in sets)
        speed = f"{r['images_per_s']:.1f} | {r['speed_vs_center']:.2f}"
        lines.append(f"| {r['choice']} | {r['combine']} | {speed} | {r['val_auroc']:.3f} | {tests} |")
    p = result["pick"]
    rule = f"best val AUROC at >= {MIN_SPEED:g}x the centre's speed, ties within {TIE} to the faster"
    lines += ["", f"Picked on val ({rule}): **{p['choice']}, {p['combine']}** (val AUROC {p['val_auroc']:.3f})."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
