"""Leave one generator family out (issue #12, item 5): how a detector does on a family of generators it never saw.

    python benchmarks/lofo.py --detector univfd|cnnspot|npr [--epochs N] [--data-root ../shared/data] [--reuse]

For each family in ``families.csv`` with at least ``MIN_TRAIN`` generated images in aigi-mini + aigi-wide train and
val, trains the detector on both train splits without that family (every real photo kept; ``--balance subset``),
chooses C and the threshold on both val splits without it, then scores the family's generated images of every split
(test included: this fold never trained on them) against the real photos of both val splits (their kinds of photo
are those of training, so a low AUROC is the unseen family, not unseen photos) and against both ``test/0_real/``
folders. Reports AUROC and AP, accuracy on the family's images at the fold's threshold, and the fold's val AUROC
(families it trained on) for contrast. The split is :func:`aigi.data.splits.lofo_split`; no test image chooses
anything. Writes ``results/lofo/<detector>.json``, ``results/lofo/lofo.md`` (every detector measured so far) and the
README table; each fold's manifests and model folder stay under ``results/lofo/runs/`` (not committed).

The family mapping, ``families.csv`` (dataset, generator, family), follows each generator's lineage (the weights
or architecture its pixels come from), not the manifests' coarse ``family`` column:

- sd1: Stable Diffusion 1.x/2.x and what is built on their weights: fine-tunes (Deliberate, DreamShaper), LoRA,
  LCM-DreamShaper, ELLA, Core ML ports, InstaFlow (a reflow-distilled SD 1.5).
- sdxl: SDXL and its derivatives (Turbo, DMD2, TCD, IterComp, RPG, Animagine XL), and Kolors (InstantID), which has
  SDXL's U-Net architecture and VAE.
- flux: FLUX.1 dev/schnell, quantised (nunchaku, SVDQuant) or adapted (InfiniteYou, IC-LoRA, UNO,
  InstantCharacter), and FLUX 1.1 Pro Ultra.
- dit_flow: the other transformer diffusion and flow models (DiT, SiT, LightningDiT, MDT, U-ViT, PixArt and its
  LCM/DMD versions, SD3/3.5 and PCM-SD3), and unified multimodal models that draw with a flow or diffusion head on
  VAE latents (OmniGen 1/2, Bagel, JanusFlow, HunyuanImage 3.0).
- gan: every GAN (StyleGAN 1-3, StyleGAN-XL, StyleSwin, ProGAN, BigGAN, CycleGAN, GauGAN, StarGAN, CIPS, GALIP).
- clip_vqgan: CLIP-guided generation (pixray VQGAN+CLIP, Disco and Majesty diffusion) and VQGAN itself (taming
  transformers).
- unclip_dalle: the DALL-E line (DALL-E 2, DALL-E 3, one of unknown version) and Kandinsky 2.x (open unCLIP).
- ar_masked: autoregressive and masked-token models (DALL-E mini, minDALL-E, CogView2, RQ-Transformer, Janus, Liquid,
  Lumina-mGPT, Infinity, Switti, HART, RAR, MaskGen, TiTok, Show-o, Meissonic).
- other_diffusion: U-Net diffusion outside the SD lines: latent diffusion (LDM, GLID-3-XL), DeepFloyd IF,
  Kandinsky 3, Stable Cascade, NCSN++ (score SDE), EDM2.
- commercial_closed: closed services whose architecture is not published (Midjourney, ChatGPT / GPT-image, Gemini
  and Nano Banana, Imagen 4, Ideogram, Seedream, Krea 1).
- cnn_synthesis (CRN, IMLE), restoration (SAN, SeeingDark) and faceswap (deepfake): CNNDetection's sets that are
  not generators of new images; test-only, so never a fold.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from default_model import update_readme
from sklearn.metrics import roc_auc_score

from aigi import api
from aigi.data.folders import discover
from aigi.data.splits import Families, LofoSplit, lofo_split, manifest_rows, read_families, write_lofo_manifests
from aigi.engine.inference import score_paths
from aigi.engine.metrics import binary_metrics
from aigi.engine.trainer import train
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "lofo"
RUNS = OUT / "runs"  # each fold's manifests and model folder (git-ignored)
FAMILIES = HERE / "families.csv"
SETS = ("aigi-mini", "aigi-wide")
MIN_TRAIN = 20  # generated train+val images a family needs to be a fold (fewer: leaving it out changes little)
# Training settings per detector beyond the fold's manifests (both recipes take DetectorTrainConfig's fields);
# "epochs": None marks a detector that trains in epochs (the recipe's default unless --epochs says otherwise).
# cnnspot: the shipped fine-tuning's settings (backbone trained from stage 3 on), one epoch per fold on this CPU;
# npr: its recipe's defaults.
DETECTORS = {
    "univfd": {"balance": "subset"},
    "cnnspot": {"balance": "subset", "epochs": None, "params": {"train_from": "net.stages.3"}},
    "npr": {"balance": "subset", "epochs": None},  # NPR's recipe defaults (128-pixel native crops)
}
CALIBRATION = {"probability": "none", "band_accuracy": 0.0}  # the threshold on the detector's own probability
AGAINST = {"val": "held_out_vs_val_reals", "test": "held_out_vs_test_reals"}


def generated_train_val(rows: list[dict], families: Families) -> Counter:
    """Generated train+val images per family (how much a fold takes out of training)."""
    return Counter(families.of(r) for r in rows if r["label"] != "real" and r["split"] in ("train", "val"))


def train_fold(detector: str, manifests: dict[str, Path], out: Path, epochs: int | None, reuse: bool):
    """The fold's model: trained afresh, or with ``reuse`` a finished one loaded (an unfinished one resumed)."""
    if reuse and (out / "config.json").is_file():
        return api.load(out)
    if not reuse and out.exists():
        shutil.rmtree(out)
    train_csv, val_csv = (Path(os.path.relpath(manifests[k])) for k in ("train", "val"))  # the record names them
    settings = dict(data=train_csv, val=val_csv, calibrate_on=val_csv, out=Path(os.path.relpath(out)))
    settings.update({k: v for k, v in DETECTORS[detector].items() if v is not None}, **CALIBRATION)
    if epochs is not None:
        settings["epochs"] = epochs
    return train(detector, settings, progress=True)


def held_out_metrics(model, manifest: Path) -> dict:
    """AUROC, AP and accuracy at the model's threshold of the held-out fakes against the manifest's reals, and the
    AUROC of each held-out generator (its fakes against all those reals)."""
    image_set = discover(manifest)
    prob = score_paths(model, [s.path for s in image_set.samples], progress=False).prob
    y, ok = np.array(image_set.labels), ~np.isnan(prob)
    m = binary_metrics(y[ok], prob[ok], model.threshold)
    reals = np.flatnonzero(ok & (y == 0))
    by_generator = {}
    for name, idx in image_set.subsets.items():
        fakes = [i for i in idx if ok[i] and y[i] == 1]
        if fakes:
            both = np.concatenate([reals, fakes])
            by_generator[name] = {"n": len(fakes), "auroc": float(roc_auc_score(y[both], prob[both]))}
    keep = ("n_real", "n_fake", "auroc", "ap", "fake_acc", "real_acc")
    return {**{k: m[k] for k in keep}, "by_generator": by_generator}


def run_fold(detector: str, split: LofoSplit, args) -> dict:
    folder = RUNS / detector / split.family
    manifests = write_lofo_manifests(split, args.data_root, folder / "manifests")
    model = train_fold(detector, manifests, folder / "model", args.epochs, args.reuse)
    return {
        "family": split.family,
        "n_train": len(split.train),
        "n_held_out": len(split.held_out),
        "threshold": model.threshold,
        "C": model.config.training.get("C"),
        "val_auroc": model.config.calibration.get("auroc"),
        **{against: held_out_metrics(model, manifests[name]) for against, name in AGAINST.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", choices=sorted(DETECTORS), default="univfd")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (detectors that train in epochs)")
    ap.add_argument("--data-root", type=Path, default=Path(os.path.relpath(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--reuse", action="store_true", help="keep the folds' model folders from an earlier run")
    args = ap.parse_args()
    if args.epochs is not None and "epochs" not in DETECTORS[args.detector]:
        ap.error(f"--epochs: {args.detector} does not train in epochs")
    rows = [r for name in SETS for r in manifest_rows(args.data_root, name)]
    families = read_families(FAMILIES)
    sizes = generated_train_val(rows, families)
    folds = [f for f in families.names() if sizes[f] >= MIN_TRAIN]
    results = [run_fold(args.detector, lofo_split(rows, families, f), args) for f in folds]
    skipped = {f: sizes[f] for f in families.names() if f not in folds}
    write_json(OUT / f"{args.detector}.json", {"detector": args.detector, "folds": results, "skipped": skipped})
    table = markdown({d: read_json(OUT / f"{d}.json") for d in DETECTORS if (OUT / f"{d}.json").is_file()}, sizes)
    write_text(OUT / "lofo.md", table + "\n")
    update_readme("lofo", table)
    print(table)


def markdown(measured: dict[str, dict], sizes: Counter) -> str:
    """One row per held-out family, five columns per detector measured."""
    f = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    folds = {r["family"]: r for r in next(iter(measured.values()))["folds"]}
    head = ["held-out family", "train+val fakes left out", "held-out fakes"]
    for d in measured:
        head += [f"{d} AUROC vs val reals", f"{d} AUROC vs test reals", f"{d} AP", f"{d} Fake_Acc", f"{d} val AUROC"]
    lines = [
        "Each family's generated images (every split) against the real photos of both val splits, or of both "
        "`test/0_real/`; AP and Fake_Acc (at the fold's threshold) against the val reals; val AUROC: the fold's own "
        "val split, families it trained on.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for family, first in folds.items():
        cells = [family, str(sizes[family]), str(first["n_held_out"])]
        for result in measured.values():
            r = next((x for x in result["folds"] if x["family"] == family), None)
            v, t = (r["val"], r["test"]) if r else ({}, {})
            cells += [f(v.get("auroc")), f(t.get("auroc")), f(v.get("ap")), f(v.get("fake_acc"))]
            cells.append(f(r["val_auroc"]) if r else "")
        lines.append("| " + " | ".join(cells) + " |")
    skipped = next(iter(measured.values()))["skipped"]
    note = ", ".join(f"{k} ({n})" for k, n in skipped.items())
    return "\n".join(lines) + f"\n\nNo fold (fewer than {MIN_TRAIN} generated train+val images): {note}."


if __name__ == "__main__":
    main()
