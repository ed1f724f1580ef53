"""MIRROR on aigi-mini with EfficientNet-Lite0, beside the shipped linear probe.

    python benchmarks/mirror.py sweep   # choose the feature level: short runs per level, scored on val AUROC
    python benchmarks/mirror.py final [--level L] [--install]

``sweep``: for each feature level, Phase 1 on ``train/0_real`` then a short frozen-backbone Phase 2 (no LoRA) on
``train/``; the level with the best val AUROC is the one ``final`` uses (results in ``level_sweep.json``).
``final``: Phase 1 + Phase 2 with LoRA on the chosen level, threshold calibrated on ``val/``, then evaluated on
``val/``, ``test/`` (each unseen generator against the pooled real photos) and ``forensynths_thumbs/``, with
``detect`` throughput against the bare backbone's. Test folders are only ever evaluated on. ``--install`` makes
the model the shipped default, and is refused unless it beats the probe on both the test generators' mean
AUROC and real-photo accuracy.

The CPU recipe (fewer slots, epochs, a larger base lr than the paper's GPU runs) is recorded in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from aigi.backbones import BackboneSpec, build_backbone
from aigi.checkpoints import load_model
from aigi.data.folders import discover
from aigi.data.transforms import EvalProtocol
from aigi.engine.evaluate import build_report, write_report
from aigi.engine.features import extract
from aigi.engine.inference import score_paths
from aigi.engine.train_mirror import DetectorRecipe, MemoryRecipe, train_detector, train_memory
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "mirror"
LEVELS = ["stage4", "stage5", "stage6", "head"]
# Compute-bound choices for a 2-core CPU; the paper's values are the library defaults.
MEMORY = dict(slots=1024, top_k=32, heads=8, epochs=6, batch_size=32, views=1, lr=3e-3)
SWEEP_P2 = dict(epochs=2, batch_size=32, blr=2e-3)
FINAL_P2 = dict(epochs=6, batch_size=32, blr=2e-3)


def fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def phase1(data: Path, level: str, cache: str) -> Path:
    mem = OUT / "work" / f"memory_{level}"
    if not (mem / "config.json").is_file() or read_json(mem / "config.json")["epochs_done"] < MEMORY["epochs"]:
        train_memory(data / "train" / "0_real", mem, BackboneSpec(options={"feature_level": level}), EvalProtocol(format_align=True),
                     MemoryRecipe(**MEMORY), cache_dir=cache, progress=False)
    return mem


def sweep(data: Path, cache: str) -> dict:
    results = {}
    for level in LEVELS:
        t0 = time.perf_counter()
        mem = phase1(data, level, cache)
        model = train_detector(data / "train", OUT / "work" / f"sweep_{level}", mem, params={"lora_r": 0},
                               recipe=DetectorRecipe(**SWEEP_P2), val=data / "val", progress=False)
        last = model.config.training["last_epoch"]
        results[level] = {"val_auroc": last.get("val_auroc"), "val_bal_acc_at_0.5": last.get("val_bal_acc"),
                          "seconds": round(time.perf_counter() - t0, 1), "dim": model.detector.backbone.dim}
        print(level, results[level], flush=True)
    best = max(results, key=lambda k: results[k]["val_auroc"] or 0)
    summary = {"memory_recipe": MEMORY, "phase2_recipe": {**SWEEP_P2, "lora_r": 0}, "levels": results, "chosen": best}
    write_json(OUT / "level_sweep.json", summary)
    return summary


def evaluate(model, folder: Path, stem: str):
    image_set = discover(folder)
    scores = score_paths(model, [s.path for s in image_set.samples], use_cache=False, progress=False)
    report = build_report(image_set, scores.prob, model.threshold, scores.errors, model="mirror (efficientnet_lite0)", data=str(folder))
    write_report(report, OUT, image_set, scores.prob, stem=stem)
    return report


def throughput(model, folder: Path, n: int = 128) -> dict:
    """Images/s of the whole detect path (decode, protocol, backbone, memory, head) vs the bare backbone's."""
    files = sorted(folder.rglob("*.jpg"))[:n]
    score_paths(model, files[:16], use_cache=False, progress=False)
    t0 = time.perf_counter()
    score_paths(model, files, use_cache=False, progress=False)
    full = len(files) / (time.perf_counter() - t0)
    bare = build_backbone(model.config.backbone)
    t0 = time.perf_counter()
    extract(files, lambda px: bare(px).patches, bare.preprocess, model.config.protocol, progress=False)
    backbone = len(files) / (time.perf_counter() - t0)
    return {"images": len(files), "detect_images_per_s": round(full, 1), "bare_backbone_images_per_s": round(backbone, 1)}


def final(data: Path, cache: str, level: str | None, install: bool) -> None:
    level = level or read_json(OUT / "level_sweep.json")["chosen"]
    t0 = time.perf_counter()
    mem = phase1(data, level, cache)
    model_dir = OUT / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    train_detector(data / "train", model_dir, mem, recipe=DetectorRecipe(**FINAL_P2), val=data / "val", calibrate_on=data / "val", progress=False)
    train_s = time.perf_counter() - t0
    shutil.rmtree(model_dir / "train_state", ignore_errors=True)  # the shipped folder needs only config + weights
    model = load_model(model_dir)
    reports = {k: evaluate(model, data / f, k) for k, f in [("val", "val"), ("test", "test"), ("forensynths_thumbs", "forensynths_thumbs")]}
    speed = throughput(model, data / "val")
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    probe = read_json(HERE / "results" / "default_model" / "summary.json")["rows"]
    summary = {"level": level, "memory_recipe": MEMORY, "phase2_recipe": FINAL_P2, "threshold": model.threshold,
               "model_folder_bytes": size, "train_seconds": round(train_s, 1), "speed": speed,
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
               "rows": {k: r.rows for k, r in reports.items()}}
    write_json(OUT / "summary.json", summary)

    lines = ["| set | subset | probe AUROC | MIRROR AUROC | probe Real_Acc | MIRROR Real_Acc | MIRROR AP | MIRROR Bal_Acc | MIRROR FPR@95TPR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rep in reports.items():
        prows = {r["subset"]: r for r in probe[name]}
        for r in rep.rows:
            if r["subset"] == "MEAN" and len(rep.rows) == 2:
                continue
            p = prows.get(r["subset"], {})
            lines.append(f"| {name} | {r['subset']} | {fmt(p.get('auroc'))} | {fmt(r['auroc'])} | {fmt(p.get('real_acc'))} | {fmt(r['real_acc'])} "
                         f"| {fmt(r['ap'])} | {fmt(r['bal_acc'])} | {fmt(r['fpr_at_95tpr'])} |")
    t_m, t_p = reports["test"].rows, probe["test"]
    mean_m, mean_p = reports["test"].mean["auroc"], t_p[-1]["auroc"]
    real_m, real_p = t_m[0]["real_acc"], t_p[0]["real_acc"]
    better = mean_m > mean_p and real_m > real_p
    notes = [
        f"Feature level {level} (chosen on val AUROC, `level_sweep.json`). Memory: {MEMORY}. Phase 2: {FINAL_P2}, LoRA r=8 alpha=16 on the"
        f" pointwise convolutions of the last two stages. Threshold {model.threshold:.3f} (max balanced accuracy on val).",
        f"Test generators' mean AUROC: MIRROR {mean_m:.3f} vs probe {mean_p:.3f}; real-photo accuracy on `test/0_real`: MIRROR {real_m:.3f}"
        f" vs probe {real_p:.3f}. {'MIRROR beats the probe on both.' if better else 'MIRROR does not beat the probe on both, so the probe stays the default.'}",
        f"Model folder: {size / 1024:.1f} KiB. Training (Phase 1 + Phase 2, CPU, {torch.get_num_threads()} threads): {train_s / 60:.1f} min.",
        f"Speed, {speed['images']} val images, cache off: `detect` {speed['detect_images_per_s']} images/s, bare backbone"
        f" {speed['bare_backbone_images_per_s']} images/s.",
    ]
    md = "\n".join(["# MIRROR on aigi-mini (reproduce: `python benchmarks/mirror.py sweep && python benchmarks/mirror.py final`)", "",
                    *lines, "", *notes, ""])
    write_text(HERE / "results" / "mirror.md", md)
    from default_model import update_readme

    update_readme("mirror", "\n".join(lines + [""] + notes))
    print(md)
    if install:
        if not better:
            print("not installed: MIRROR does not beat the probe on both targets")
            return
        dest = REPO / "src" / "aigi" / "default_model"
        shutil.rmtree(dest)
        shutil.copytree(model_dir, dest)
        print(f"installed into {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["sweep", "final"])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "aigi-mini")
    ap.add_argument("--level", choices=LEVELS)
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    cache = args.cache_dir or os.path.join(tempfile.gettempdir(), "aigi-bench-mirror-cache")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage == "sweep":
        sweep(args.data, cache)
    else:
        final(args.data, cache, args.level, args.install)


if __name__ == "__main__":
    main()
