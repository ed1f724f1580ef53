"""Issue #15's benchmark: the shipped detector and the ensemble under each real-world chain, on every test set.

    python benchmarks/chains.py [--data-root ../shared/data]

Models: the shipped default (``shipped``) and the stack of the wide probe and the fine-tuned CNN (``stack``, the
ensemble of the accuracy benchmark: ``results/stack/model``, rebuilt by ``benchmarks/accuracy.py``; skipped with a
line when absent). Each test set is scored clean and through every chain of :mod:`aigi.data.chains` (seed 0), with
:func:`aigi.engine.robustness.run_sweep` (resumable: ``results/chains/<set>/robustness.json``, and its plot
``robustness.png``). Reported: mean AUROC over the set's generator groups, and real / generated accuracy at each
model's threshold calibrated on clean ``val/``. The advice column reads the drops:

- AUROC falls by 0.05 or more: the ranking itself breaks; recalibrating cannot mend it (train with this processing
  in the augmentation);
- AUROC holds but real or generated accuracy moves by 0.10 or more: the scores shift as a whole; recalibrate on
  validation images put through the same chain (``aigi calibrate --data`` on them).

Writes ``results/chains/chains.{json,md}`` and the README block.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from default_model import update_readme
from uncertainty import TEST_SETS

from aigi import api
from aigi.data.folders import discover
from aigi.data.perturb import CHAIN_SWEEP, parse_perturbation
from aigi.engine.robustness import run_sweep
from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "chains"
STACK = HERE / "results" / "stack" / "model"
AUROC_DROP, ACC_SHIFT = 0.05, 0.10


def models() -> dict:
    found = {"shipped": api.load()}
    if (STACK / "config.json").is_file():
        found["stack"] = api.load(STACK)
    else:
        print(f"skipped the stack: {STACK} is missing (python benchmarks/accuracy.py builds it)")
    return found


def advice(clean: dict, chained: dict) -> str:
    auroc_drop = (clean["mean_auroc"] or 0) - (chained["mean_auroc"] or 0)
    shift = max(abs((chained[k] or 0) - (clean[k] or 0)) for k in ("real_acc", "fake_acc"))
    if auroc_drop >= AUROC_DROP:
        return f"AUROC -{auroc_drop:.2f}: retrain with this chain in the augmentation"
    if shift >= ACC_SHIFT:
        return f"accuracy moves {shift:.2f}: recalibrate on val put through this chain"
    return "holds"


def measure(root: Path) -> dict:
    chosen = models()
    sweep = [parse_perturbation(t) for t in CHAIN_SWEEP]
    results = {}
    for name, folder in TEST_SETS.items():
        image_set = discover(root / folder)
        rows = run_sweep(chosen, image_set, sweep, OUT / name.replace(" ", "_"), data=str(root / folder))
        by_model: dict[str, dict] = {}
        for r in rows:
            by_model.setdefault(r["model"], {})[r["perturbation"]] = {
                k: r[k] for k in ("mean_auroc", "real_acc", "fake_acc", "errors")
            }
        for cells in by_model.values():
            for chain, cell in cells.items():
                cell["advice"] = "" if chain == "none" else advice(cells["none"], cell)
        results[name] = by_model
    write_json(OUT / "chains.json", {"chains": CHAIN_SWEEP, "results": results})
    return results


def f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(results: dict) -> str:
    lines = [
        "| test set | chain | model | AUROC | real acc | generated acc | advice |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_model in results.items():
        for chain in CHAIN_SWEEP:
            label = "clean" if chain == "none" else chain.split(":")[1]
            for model, cells in by_model.items():
                c = cells[parse_perturbation(chain).name]
                lines.append(
                    f"| {name} | {label} | {model} | {f(c['mean_auroc'])} | {f(c['real_acc'])} | "
                    f"{f(c['fake_acc'])} | {c['advice']} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    args = ap.parse_args()
    torch.set_num_threads(2)
    table = markdown(measure(args.data_root))
    write_text(OUT / "chains.md", table + "\n")
    update_readme("chains", table)
    print(table)


if __name__ == "__main__":
    main()
