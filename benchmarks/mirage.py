"""Issue #13's benchmark: MiraGe's objective on the offline backbone (``mirage-anchors``) against the fine-tuned CNN
trained on the same data with plain cross-entropy, beside the probe, and an ablation of the objective's three parts.

    python benchmarks/mirage.py [--data-root ../shared/data] [--reuse] [--skip-train]

No CLIP weights can be reached here, so the published ``mirage`` (prompts in CLIP's towers) is never measured; this
measures its objective. Every run trains on aigi-mini + aigi-wide ``train/``, validates and calibrates on both
``val/`` (``results/wide_probe/{train,val}.csv``); the test folders choose nothing.

- **main**: ``mirage-anchors`` with the fine-tuned CNN's recipe (EfficientNet-Lite0 from ``net.stages.3``, 6 epochs,
  the same augmentation, balanced draw, AdamW and schedule): only the objective differs. Measured as
  ``benchmarks/accuracy.py`` measures a candidate (val AUROC, ``aigi detect`` images/s end to end, size, every test
  set per generator group with real-photo accuracy). The CNN's and the probe's rows are ``accuracy.json``'s.
- **MIRROR and MDMF**, retrained on the same data with the recipes their own benchmarks chose on aigi-mini (MIRROR
  "short" at stage6 without LoRA; MDMF on stage6's native 32-pixel patches), measured the same way.
- **ablation** (1 epoch each, so that all five fit on a 2-core CPU): the full objective; without compactness and
  separation (anchor loss only); without the memory bank (the batch only); without the anchor loss (anchors set to
  the memory's class means); and cross-entropy (``cnnspot``) with the same epoch, as the baseline.
- **training step**: seconds per step of 32 images on this CPU, from the runs' logs (epoch seconds / steps).

Writes ``results/mirage/`` (``mirage.{json,md}``, per-set reports) and the README block; the runs stay under
``results/mirage/runs/`` (weights not committed). ``--reuse`` keeps rows already measured; runs resume.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from accuracy import candidate_row, f3, val_aurocs
from artifacts import OUT as ARTIFACTS_OUT
from artifacts import groups_table, models_table
from default_model import REPO, update_readme
from uncertainty import TEST_SETS, measure

from aigi import api
from aigi.engine.trainer import LOG_NAME, train
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "mirage"
RUNS = OUT / "runs"
RESULTS = OUT / "mirage.json"
TRAIN_CSV = HERE / "results" / "wide_probe" / "train.csv"
VAL_CSV = HERE / "results" / "wide_probe" / "val.csv"
CNN_PARAMS = {"train_from": "net.stages.3"}
MAIN_EPOCHS = 6  # the fine-tuned CNN's
ABLATIONS = {
    "full objective": ("mirage-anchors", {}),
    "no compactness/separation (anchor loss only)": ("mirage-anchors", {"contrast_weight": 0.0}),
    "no memory bank (batch only)": ("mirage-anchors", {"memory_size": 0}),
    "no anchor loss (class-mean anchors)": ("mirage-anchors", {"anchor_weight": 0.0}),
    "cross-entropy (cnnspot)": ("cnnspot", {}),
}
COMPARED = ("wide probe", "cnnspot")  # rows of artifacts.json (accuracy.json's, with groups), measured the same way
# MIRROR and MDMF with the recipes their own benchmarks chose on aigi-mini (benchmarks/mirror.py "short" at stage6,
# benchmarks/mdmf.py's stage6 native patches), trained here on the same data as the rest
MIRROR_MEMORY = dict(slots=1024, top_k=32, heads=8, epochs=6, batch_size=32, views=1, lr=3e-3, feature_level="stage6")
MIRROR_PHASE2 = dict(epochs=6, batch_size=32, blr=2e-3, params={"lora_r": 0})  # no LoRA: cached tokens (CPU)
MDMF = dict(steps=1000, lr=1e-3, images_per_side=16, patches_per_side=512, criterion="image", feature_level="stage6")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:40]


def train_run(recipe: str, extra: dict, out: Path, epochs: int) -> Path:
    """Train (or resume, or keep) one run; returns its model folder."""
    if (out / "config.json").is_file() and not (out / "train_state").is_dir():
        return out
    settings = {
        "data": TRAIN_CSV,
        "val": VAL_CSV,
        "calibrate_on": VAL_CSV,
        "out": out,
        "epochs": epochs,
        "params": dict(CNN_PARAMS),
        **extra,
    }
    train(recipe, settings, progress=True)
    return out


def seconds_per_step(folder: Path) -> float:
    """Seconds per training step (batch 32) in the run's fastest epoch: the log's seconds are each epoch's wall time,
    and the slower epochs shared the CPU with other jobs (or were paused), so the fastest is the cleanest measure."""
    log = [json.loads(line) for line in (folder / LOG_NAME).read_text().splitlines()]
    images = sum(1 for _ in TRAIN_CSV.open()) - 1
    return min(r["seconds"] for r in log) / (images // 32)


def ablation_row(folder: Path, root: Path) -> dict:
    model = api.load(folder)
    val = val_aurocs(model, root)
    test = {t: measure(model, root, t, folder.name, OUT / "reports") for t in TEST_SETS}
    return {
        "val": val,
        "val_mean_auroc": float(np.mean(list(val.values()))),
        "test": test,
        "seconds_per_step": seconds_per_step(folder),
    }


def real_train_manifest() -> Path:
    """The real photos of the training manifest, as a manifest of their own (MIRROR's memory, MDMF's bank)."""
    out = RUNS / "train_real.csv"
    lines = TRAIN_CSV.read_text().splitlines()
    header = lines[0].split(",")
    label = header.index("label")
    reals = [line for line in lines[1:] if line.split(",")[label] in ("real", "0")]
    base = os.path.relpath(TRAIN_CSV.parent, out.parent)
    rows = [",".join([os.path.join(base, line.split(",")[0]), *line.split(",")[1:]]) for line in reals]
    write_text(out, "\n".join([lines[0], *rows]) + "\n")
    return out


def train_others() -> dict[str, Path]:
    """MIRROR and MDMF on the same data (kept when already trained)."""
    reals, calibration = real_train_manifest(), {"val": VAL_CSV, "calibrate_on": VAL_CSV}
    memory, mirror, mdmf = RUNS / "mirror_memory", RUNS / "mirror", RUNS / "mdmf"
    if not (memory / "config.json").is_file():
        train("mirror-memory", dict(data=reals, out=memory, format_align=True, **MIRROR_MEMORY), progress=False)
    if not (mirror / "config.json").is_file() or (mirror / "train_state").is_dir():
        train("mirror", dict(data=TRAIN_CSV, out=mirror, memory=memory, **calibration, **MIRROR_PHASE2), progress=False)
    if not (mdmf / "config.json").is_file():
        settings = dict(data=TRAIN_CSV, out=mdmf, reference=reals, params={"pool": 1}, seed=0, **MDMF)
        train("mdmf", {**settings, **calibration}, progress=False)
    return {"MIRROR": mirror, "MDMF": mdmf}


def rows(root: Path, reuse: bool, skip_train: bool) -> dict:
    saved = read_json(RESULTS) if reuse and RESULTS.is_file() else {}
    main_rows, ablation = saved.get("main", {}), saved.get("ablation", {})
    main_folder = RUNS / "mirage_anchors_6ep"
    if "mirage-anchors" not in main_rows:
        if not skip_train:
            train_run("mirage-anchors", {}, main_folder, MAIN_EPOCHS)
        row = candidate_row("mirage-anchors", main_folder, root, OUT / "reports")
        main_rows["mirage-anchors"] = {**row, "seconds_per_step": seconds_per_step(main_folder)}
        write_json(RESULTS, {"main": main_rows, "ablation": ablation})
    main_rows["mirage-anchors"]["seconds_per_step"] = seconds_per_step(main_folder)  # re-read: the rule may change
    others = train_others() if not skip_train else {"MIRROR": RUNS / "mirror", "MDMF": RUNS / "mdmf"}
    for name, folder in others.items():
        if name not in main_rows:
            main_rows[name] = candidate_row(name, folder, root, OUT / "reports")
            write_json(RESULTS, {"main": main_rows, "ablation": ablation})
    for name, (recipe, extra) in ABLATIONS.items():
        if name in ablation:
            continue
        folder = RUNS / f"ablation_{slug(name)}"
        if not skip_train:
            train_run(recipe, extra, folder, 1)
        ablation[name] = ablation_row(folder, root)
        print(f"measured {name}", flush=True)
        write_json(RESULTS, {"main": main_rows, "ablation": ablation})
    return {"main": main_rows, "ablation": ablation}


def compared_rows(main_rows: dict) -> dict:
    # the probe's and the CE CNN's rows as benchmarks/artifacts.py measured them: accuracy.json's numbers, plus each
    # generator group's AUROC
    accuracy = read_json(ARTIFACTS_OUT / "artifacts.json")["models"]
    order = [*COMPARED, "MIRROR", "MDMF", "mirage-anchors"]
    merged = {**{name: accuracy[name] for name in COMPARED}, **main_rows}
    return {name: merged[name] for name in order if name in merged}


def ablation_table(ablation: dict) -> str:
    sets = list(TEST_SETS)
    head = "| 1 epoch | val AUROC (mini / wide) | " + " | ".join(f"{s} AUROC / worst group" for s in sets)
    lines = [head + " | s/step |", "|" + "---|" * (3 + len(sets))]
    for name, r in ablation.items():
        val = " / ".join(f3(v) for v in r["val"].values())
        tests = " | ".join(f"{f3(r['test'][s]['auroc'])} / {f3(r['test'][s]['worst_auroc'])}" for s in sets)
        lines.append(f"| {name} | {val} | {tests} | {r['seconds_per_step']:.2f} |")
    return "\n".join(lines)


def target_table(table_rows: dict) -> str:
    lines = ["| target: mirage-anchors > the CE-trained CNN | mirage-anchors | cnnspot | met |", "|---|---|---|---|"]
    ours, cnn = table_rows.get("mirage-anchors"), table_rows.get("cnnspot")
    if ours and cnn:
        for s in TEST_SETS:
            a, b = ours["test"][s]["auroc"], cnn["test"][s]["auroc"]
            lines.append(f"| {s} mean AUROC | {a:.3f} | {b:.3f} | {'yes' if a > b else 'no'} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    table_rows = compared_rows(result["main"])
    return "\n\n".join(
        [
            models_table(table_rows),
            "Per generator group (AUROC of each group against the set's real photos):",
            groups_table(table_rows),
            f"Training: {result['main']['mirage-anchors']['seconds_per_step']:.2f} s per step of 32 images for "
            "mirage-anchors on this CPU (its fastest epoch). Ablation of the objective (each run 1 epoch, otherwise "
            "the main run's recipe; s/step from each run's one epoch, under varying load):",
            ablation_table(result["ablation"]),
            target_table(table_rows),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(REPO.parent / "shared" / "data")))
    ap.add_argument("--reuse", action="store_true", help="keep the rows already measured in mirage.json")
    ap.add_argument("--skip-train", action="store_true", help="measure the run folders as they are")
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    result = rows(args.data_root, args.reuse, args.skip_train)
    write_json(RESULTS, result)
    table = markdown(result)
    write_text(OUT / "mirage.md", table + "\n")
    update_readme("mirage", table)
    print(table)


if __name__ == "__main__":
    main()
