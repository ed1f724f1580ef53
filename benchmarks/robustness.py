"""Robustness of the probe, MIRROR and MDMF on aigi-mini ``test/`` under post-processing (MDMF's sweep).

    python benchmarks/robustness.py [--data ../shared/data/aigi-mini]

Each ``test/`` image (7 unseen generators, each against the pooled real photos) is decoded, post-processed
(JPEG quality 100/90/75/50, Gaussian blur sigma 1/2/3/5 px, Gaussian noise sigma 0.05/0.1/0.25 on the [0, 1]
scale), then scored by each model under its own protocol. Models: the shipped probe, the val-chosen MIRROR run of
``benchmarks/mirror.py`` and the MDMF run of ``benchmarks/mdmf.py`` (run those first). Results: mean AUROC over the
generators and real/generated accuracy at each model's val-calibrated threshold, in
``results/robustness/robustness.{json,csv,png}`` and ``results/robustness.md``; the run resumes if interrupted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from default_model import OLD_PROBE

from aigi.checkpoints import load_model
from aigi.data.folders import discover
from aigi.data.perturb import DEFAULT_SWEEP, parse_perturbation
from aigi.engine.robustness import run_sweep
from aigi.io import read_json, write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "robustness"


def fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def models() -> dict:
    mirror_runs = sorted((HERE / "results" / "mirror" / "runs").glob("*/summary.json"))
    best = max(mirror_runs, key=lambda p: read_json(p)["rows"]["val"][0]["auroc"])
    folders = {
        "probe": OLD_PROBE,  # the probe these numbers were measured with (the shipped default until issue #12)
        "MIRROR": best.parent / "model",
        "MDMF": HERE / "results" / "mdmf" / "run" / "model",
    }
    for name, folder in folders.items():
        if not (folder / "config.json").is_file():
            raise SystemExit(
                f"{name}: no model at {folder}; run its benchmark first (benchmarks/mirror.py final / benchmarks/mdmf.py final)"
            )
    return {name: load_model(folder) for name, folder in folders.items()}


def report(rows: list[dict]) -> None:
    names = list(dict.fromkeys(r["model"] for r in rows))
    perts = list(dict.fromkeys(r["perturbation"] for r in rows))
    by = {(r["model"], r["perturbation"]): r for r in rows}
    lines = [
        "| perturbation | "
        + " | ".join(f"{n} AUROC" for n in names)
        + " | "
        + " | ".join(f"{n} Real_Acc" for n in names)
        + " | "
        + " | ".join(f"{n} Fake_Acc" for n in names)
        + " |",
        "|---|" + "---|" * (3 * len(names)),
    ]
    for p in perts:
        cells = [fmt(by[(n, p)]["mean_auroc"]) for n in names] + [fmt(by[(n, p)]["real_acc"]) for n in names]
        cells += [fmt(by[(n, p)]["fake_acc"]) for n in names]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    means = {n: sum(by[(n, p)]["mean_auroc"] for p in perts if p != "none") / max(1, len(perts) - 1) for n in names}
    best = max(means, key=means.get)
    notes = [
        "",
        "Mean AUROC over the 7 `test/` generators (each against the pooled real photos); accuracies at each model's"
        " threshold calibrated on clean val images. Plot: `benchmarks/results/robustness/robustness.png`.",
        "Average AUROC over the perturbed levels: "
        + ", ".join(f"{n} {v:.3f}" for n, v in means.items())
        + f"; the most robust here is **{best}**.",
    ]
    body = "\n".join(lines + notes)
    write_text(
        HERE / "results" / "robustness.md",
        "# Robustness on aigi-mini test/ (reproduce: `python benchmarks/robustness.py`)\n\n"
        + body
        + "\n\n![robustness](robustness/robustness.png)\n",
    )
    from default_model import update_readme

    update_readme("robustness", body)
    print(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "aigi-mini")
    args = ap.parse_args()
    os.environ.setdefault("AIGI_NO_PROGRESS", "1")
    folder = args.data / "test"
    rows = run_sweep(
        models(),
        discover(folder),
        [parse_perturbation(t) for t in DEFAULT_SWEEP],
        OUT,
        batch_size=16,
        progress=False,
        data="aigi-mini/test",
        on_row=lambda r: print(f"{r['model']:7s} {r['perturbation']:10s} AUROC {fmt(r['mean_auroc'])}", flush=True),
    )
    report(rows)


if __name__ == "__main__":
    main()
