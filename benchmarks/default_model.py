"""Reproduce aigi's shipped default model from scratch and measure it.

Trains the UnivFD linear probe on EfficientNet-Lite0 features of aigi-mini ``train/`` (regularisation chosen and
threshold calibrated on ``val/``), evaluates it on ``val/``, ``test/`` (each unseen generator against the pooled
real photos) and ``forensynths_thumbs/``, measures ``aigi detect`` throughput on this CPU, and writes everything
under ``benchmarks/results/default_model/`` plus a markdown table ``benchmarks/results/default_model.md``.

    python benchmarks/default_model.py [--data ../shared/data/aigi-mini] [--install]

``--install`` copies the trained model folder into the package (``src/aigi/default_model``): it was the shipped default
until issue #12; today's default is chosen by ``benchmarks/accuracy.py``.
The test folders are only ever evaluated on; nothing is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aigi import api
from aigi.checkpoints import load_model
from aigi.engine.inference import score_paths
from aigi.engine.trainer import train
from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD_PROBE = HERE / "results" / "default_model" / "model"  # the probe this script trains: the default until issue #12
# Calibration as the committed results were measured: the threshold on the detector's own probability, no uncertainty
# band (Platt scaling and the band came later; AUROC and the decisions at the threshold do not depend on them).
AS_MEASURED = {"probability": "none", "band_accuracy": 0.0}


def fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def evaluate(model, folder: Path, out: Path, stem: str, cache_dir: str):
    report = api.evaluate(
        model, folder, cache_dir=cache_dir, model_name="default (univfd, efficientnet_lite0)", data_name=str(folder)
    )
    report.write(out, stem=stem)
    return report


def throughput(model_dir: Path, folder: Path, n: int = 256, repeats: int = 3) -> dict:
    """`aigi detect` images/s with the feature cache off: in-process (steady state) and as a CLI run (with start-up);
    each the median of ``repeats`` runs, so that one run slowed by another process does not decide."""
    files = sorted(p for p in folder.rglob("*.jpg"))[:n]
    model = load_model(model_dir)
    score_paths(model, files[:16], use_cache=False, progress=False)  # warm-up
    in_process, walls = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = score_paths(model, files, use_cache=False, progress=False)
        in_process.append(len(files) / (time.perf_counter() - t0))
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy(f, Path(tmp) / f"{f.parent.name}_{f.name}")
        cmd = [sys.executable, "-m", "aigi.cli", "detect", "--model", str(model_dir), "--no-cache", "--json", tmp]
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    n_ok = sum(r["verdict"] != "error" for r in json.loads(res.stdout)["results"])
    assert n_ok == int(scores.ok.sum()) == len(files)
    return {
        "images": n_ok,
        "in_process_images_per_s": round(statistics.median(in_process), 1),
        "cli_seconds_including_startup": round(wall, 2),
        "repeats": repeats,
        "cli_images_per_s": round(n_ok / wall, 1),
    }


def update_readme(key: str, body: str) -> None:
    """Replace the README's block between ``<!-- BENCHMARK:key -->`` and ``<!-- /BENCHMARK -->`` with ``body``."""
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- BENCHMARK:{key} -->", "<!-- /BENCHMARK -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(readme, f"{head}{start}\n{body}\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=Path(os.path.relpath(REPO.parent / "shared" / "data" / "aigi-mini"))
    )  # relative: models record it
    ap.add_argument("--out", type=Path, default=HERE / "results" / "default_model")
    ap.add_argument("--install", action="store_true", help="copy the trained model into src/aigi/default_model")
    ap.add_argument(
        "--cache-dir", default=None, help="feature cache (default: a fresh temporary one, so times are from scratch)"
    )
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="aigi-bench-cache-")
    os.environ["AIGI_CACHE_DIR"] = args.cache_dir  # training and evaluation both use it
    data: Path = args.data
    out: Path = args.out
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)

    t0 = time.perf_counter()
    model = train(
        "univfd",
        dict(
            data=data / "train",
            out=model_dir,
            val=data / "val",
            calibrate_on=data / "val",
            **AS_MEASURED,
            backbone="efficientnet_lite0",
            format_align=True,
        ),
        progress=False,
    )
    info = model.config.training
    train_s = time.perf_counter() - t0
    model = load_model(model_dir)  # measure what was saved, not what is in memory

    reports = {
        "val": evaluate(model, data / "val", out, "val", args.cache_dir),
        "test": evaluate(model, data / "test", out, "test", args.cache_dir),
        "forensynths_thumbs": evaluate(model, data / "forensynths_thumbs", out, "forensynths_thumbs", args.cache_dir),
    }
    speed = throughput(model_dir, data / "val")
    size = sum(p.stat().st_size for p in model_dir.iterdir())
    summary = {
        "model": "univfd on efficientnet_lite0 (head features, 1280-d), protocol format_align=True",
        "threshold": model.threshold,
        "C": info["C"],
        "model_folder_bytes": size,
        "train_seconds_incl_feature_extraction": round(train_s, 1),
        "detect_throughput": speed,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": {k: r.rows for k, r in reports.items()},
    }
    write_json(out / "summary.json", summary)

    test = reports["test"]
    lines = [
        "| set | subset | AUROC | AP | Acc | Real_Acc | Fake_Acc | Bal_Acc | FPR@95TPR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in reports.items():
        for r in rep.rows:
            if r["subset"] == "MEAN" and len(rep.rows) == 2:
                continue  # one subset: its MEAN row repeats it
            lines.append(
                f"| {name} | {r['subset']} | {fmt(r['auroc'])} | {fmt(r['ap'])} | {fmt(r['acc'])} | {fmt(r['real_acc'])} "
                f"| {fmt(r['fake_acc'])} | {fmt(r['bal_acc'])} | {fmt(r['fpr_at_95tpr'])} |"
            )
    real_acc = test.rows[0]["real_acc"]
    summary_lines = [
        f"Real-photo accuracy on `test/0_real` (418 photos from sources unseen in training: night, faces, degraded,"
        f" restoration inputs): {real_acc:.3f}; mean AUROC over the 7 unseen test generators: {test.mean['auroc']:.3f}.",
        f"`aigi detect` speed with the feature cache off (decode, protocol, backbone, head), {speed['images']} aigi-mini val images"
        f" on this {torch.get_num_threads()}-thread CPU (torch {torch.__version__}): {speed['in_process_images_per_s']} images/s in process,"
        f" {speed['cli_images_per_s']} images/s for the whole CLI run including start-up ({speed['cli_seconds_including_startup']} s).",
        f"Training from scratch (feature extraction for train + val, fit, calibration): {train_s:.0f} s.",
    ]
    md = "\n".join(
        [
            "# Default model benchmark (reproduce: `python benchmarks/default_model.py --install`)",
            "",
            f"UnivFD linear probe on EfficientNet-Lite0 (ImageNet) pooled head features; C={info['C']} chosen on val AUROC,"
            f" threshold {model.threshold:.3f} (max balanced accuracy on val). Model folder: {size / 1024:.1f} KiB.",
            "",
            *lines,
            "",
            *summary_lines,
            "",
        ]
    )
    write_text(out.parent / "default_model.md", md)
    update_readme("default_model", "\n".join(lines + [""] + summary_lines))
    print(md)
    if args.install:
        dest = REPO / "src" / "aigi" / "default_model"
        dest.mkdir(parents=True, exist_ok=True)
        for f in model_dir.iterdir():
            shutil.copy(f, dest / f.name)
        print(f"installed into {dest}")


if __name__ == "__main__":
    main()
