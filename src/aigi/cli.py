"""The ``aigi`` command line: each command is a thin call into the library."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Tell AI-generated images from real photographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a detector on labelled folders and save a model folder.", no_args_is_help=True)
app.add_typer(train_app, name="train")

# Wide enough for the metrics table when output is piped to a file or a log.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

MODEL_HELP = "Model folder (config.json + model.safetensors). Default: the model shipped with aigi."


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def _load(model_dir: Optional[Path]):
    from aigi.checkpoints import ModelLoadError, load_default_model, load_model

    try:
        return load_model(model_dir) if model_dir else load_default_model()
    except (ModelLoadError, OSError, ValueError) as e:
        _fail(str(e))


def _backbone_spec(backbone: str, source: Optional[str], feature_level: Optional[str]):
    from aigi.backbones import BackboneSpec

    options = {"feature_level": feature_level} if feature_level else {}
    if source and Path(source).expanduser().is_dir():  # a local folder: record where it is, not how it was typed
        source = str(Path(source).expanduser().resolve())
    return BackboneSpec(family=backbone, source=source, options=options)


def _check_threshold(t: Optional[float]) -> None:
    if t is not None and not (0.0 <= t <= 1.0):
        _fail(f"--threshold must be a probability in [0, 1], got {t}")


def _perturbation(text: Optional[str]):
    from aigi.data.perturb import PerturbationError, parse_perturbation

    if text is None:
        return None
    try:
        return parse_perturbation(text)
    except PerturbationError as e:
        _fail(f"--perturb {e}")


def _report_skipped(skipped) -> None:
    for p, reason in skipped:
        err.print(f"skipped {escape(str(p))}: {escape(reason)}", highlight=False)


@app.command()
def detect(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per image) instead of a table."),
    threshold: Optional[float] = typer.Option(None, help="Override the model's decision threshold on P(generated)."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch (small batches are fastest on CPU)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    explain: bool = typer.Option(False, "--explain", help="Also write a heatmap PNG per image of the model's per-patch evidence (MIRROR: residual norm; MDMF: each patch's share of the MMD)."),
    explain_dir: Path = typer.Option(Path("aigi_heatmaps"), "--explain-dir", help="Folder for the --explain heatmaps."),
    no_provenance: bool = typer.Option(False, "--no-provenance", help="Do not read what the files declare (C2PA, metadata, watermarks); the detector alone decides."),
) -> None:
    """Say, for each image, whether it was generated or is real, and on what basis.

    What the file declares (C2PA Content Credentials, XMP/IPTC digital source type, generator metadata, invisible
    watermarks; see `aigi inspect`) is read beside the detector's probability: a generated-content declaration
    decides, anything else is mentioned beside the detector's verdict. Files that cannot be read get a reason and
    the run carries on; the exit code is non-zero only when no image at all could be read."""
    from aigi.data.folders import unlabelled
    from aigi.engine.inference import score_paths
    from aigi.provenance import inspect_file
    from aigi.provenance.fusion import fuse

    _check_threshold(threshold)
    m = _load(model)
    image_set = unlabelled([str(p) for p in inputs])
    if not image_set.samples:
        _report_skipped(image_set.skipped)
        _fail(f"no image files found in {', '.join(map(str, inputs))}")
    t = m.threshold if threshold is None else threshold
    paths = [s.path for s in image_set.samples]
    heatmaps: dict = {}
    if explain:
        from aigi.engine.explain import NoPatchMapError, explain_paths

        try:
            scores, heatmaps = explain_paths(m, paths, explain_dir, batch_size=batch_size, progress=not as_json)
        except NoPatchMapError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"could not write heatmaps to {explain_dir}: {e}")
    else:
        scores = score_paths(m, paths, use_cache=not no_cache, batch_size=batch_size, progress=not as_json)
    results = []
    for i, s in enumerate(image_set.samples):
        prob = None if np.isnan(scores.prob[i]) else float(scores.prob[i])
        r = {"path": str(s.path), "verdict": None, "basis": None, "prob_generated": None if prob is None else round(prob, 4),
             "detector_verdict": None if prob is None else ("generated" if prob >= t else "real"), "error": scores.errors.get(i)}
        prov = None if no_provenance else inspect_file(s.path)
        v = fuse(prob, t, prov)
        if v.label == "unknown":  # no score and nothing declared: the file's own problem is the answer
            r["verdict"], r["basis"] = "error", f"could not be scored: {scores.errors.get(i)}"
        else:
            r["verdict"], r["basis"] = v.label, v.basis
        if prov is not None:
            r["provenance"] = {"findings": [f.to_dict() for f in prov.findings], "problems": prov.problems}
        if explain:
            r["heatmap"] = str(heatmaps[i]) if i in heatmaps else None
        results.append(r)
    if as_json:
        payload = {"model": m.config.detector, "threshold": t, "results": results,
                   "skipped": [{"path": str(p), "reason": r} for p, r in image_set.skipped]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        caption = None if no_provenance else ("declared evidence decides when present (C2PA, watermark, generator metadata); "
                                              "camera EXIF is weak; no metadata proves nothing — see `aigi inspect`")
        table = Table(title=f"aigi detect — {m.config.detector} on {m.config.backbone.family}, threshold {t:.3f}", caption=caption)
        table.add_column("file", overflow="fold")
        table.add_column("verdict")
        table.add_column("P(generated)", justify="right")
        table.add_column("basis", overflow="fold")
        style = {"generated": "bold red", "real": "bold green", "error": "yellow"}
        for r in results:
            prob = "" if r["prob_generated"] is None else f"{r['prob_generated']:.3f}"
            note = r["basis"] if r["verdict"] != "error" else r["error"]
            table.add_row(escape(r["path"]), f"[{style[r['verdict']]}]{r['verdict']}[/]", prob, escape(note or ""))
        out.print(table)
        _report_skipped(image_set.skipped)
        n_bad = sum(r["verdict"] == "error" for r in results)
        if heatmaps:
            out.print(f"wrote {len(heatmaps)} heatmaps to {escape(str(explain_dir))}", highlight=False)
        if n_bad:
            err.print(f"{n_bad} of {len(results)} files could not be read (reasons above)", highlight=False)
    if all(r["verdict"] == "error" for r in results):
        raise typer.Exit(1)


def _pooled_real(real: Path, fakes: list[Path]):
    """``eval --real R --fake A B``: one subset per generator folder (named by it), each with all the real images."""
    from aigi.data.folders import ImageSet, Sample, collect_files

    for d in [real, *fakes]:
        if not d.is_dir():
            _fail(f"{d}: not a folder" if d.exists() else f"{d}: no such folder")
    real_files, skipped = collect_files([real])
    if not real_files:
        _fail(f"--real {real}: no image files found")
    samples = [Sample(f, 0) for f in real_files]
    pooled, real_set = list(range(len(samples))), {f.resolve() for f in real_files}
    notes, seen, gens = [], set(), []
    for d in fakes:
        if d.resolve() in seen:
            notes.append(f"--fake {d} is named twice: used once")
            continue
        seen.add(d.resolve())
        files, s = collect_files([d])
        skipped += s
        inside = [f for f in files if f.resolve() in real_set]
        if inside:
            notes.append(f"--fake {d}: {len(inside)} image(s) of the --real folder left out")
            files = [f for f in files if f.resolve() not in real_set]
        if not files:
            notes.append(f"--fake {d}: no image files, skipped")
            continue
        gens.append((d.resolve(), list(range(len(samples), len(samples) + len(files)))))
        samples += [Sample(f, 1) for f in files]
    if not gens:
        _fail("none of the --fake folders holds image files")
    names = [d.name for d, _ in gens]
    subsets: dict[str, list[int]] = {}
    for (d, idx), name in zip(gens, names):
        if names.count(name) > 1 or name == "MEAN":  # a clash: the parent's name too
            name = f"{d.parent.name}/{name}"
        base, k = name, 2
        while name in subsets:
            name, k = f"{base} #{k}", k + 1
        subsets[name] = pooled + idx
    return ImageSet(samples=samples, subsets=subsets, skipped=skipped), notes


@app.command(name="eval", context_settings={"allow_extra_args": True})  # extra args: more names after --benchmarks or --fake
def evaluate(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Labelled images: folders (0_real/1_fake, real/fake, nature/ai, pooled reals + generator folders, benchmark roots) or a CSV manifest."),
    benchmarks_root: Optional[Path] = typer.Option(None, "--benchmarks-root", help="Folder holding MIRROR's benchmark suites (instead of --data); name them with --benchmarks."),
    benchmarks: Optional[list[str]] = typer.Option(None, "--benchmarks", "-b", metavar="NAME...", help="Suite names, ignoring case: --benchmarks Chameleon GenImage, repeated, or comma-separated. See README."),
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real images, pooled: scored against each --fake folder (instead of --data)."),
    fake: Optional[list[Path]] = typer.Option(None, "--fake", metavar="GEN_DIR...", help="With --real: one folder of generated images per generator (--fake A B C, or repeated); one subset each."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (CSV, JSON, per-image scores, ROC and histogram PNGs). With --benchmarks-root: default results/."),
    threshold: Optional[float] = typer.Option(None, help="Override the model's decision threshold."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch."),
    no_cache: bool = typer.Option(False, "--no-cache"),
    perturb: Optional[str] = typer.Option(None, "--perturb", metavar="KIND:LEVEL", help="Post-process every image first: jpeg:QUALITY, blur:SIGMA (px) or noise:SIGMA (0-1 scale), e.g. jpeg:75."),
) -> None:
    """Measure a model on labelled data: Acc, Real_Acc, Fake_Acc, Bal_Acc, AUROC, AP, FPR@95TPR, EER per subset + MEAN.

    With --benchmarks-root and --benchmarks: MIRROR's suites, one CSV ({name}_{timestamp}.csv) and one report folder each.
    With --real and --fake: one subset per generator folder, each with all the real images (MDMF's per-generator table)."""
    from aigi.data.folders import DataError, discover
    from aigi.engine.evaluate import build_report, format_table, write_report
    from aigi.engine.inference import score_paths
    from aigi.engine.metrics import COLUMNS, DISPLAY

    def show(title: str, rows: list[list[str]]) -> None:
        table = Table(title=title)
        for c in ["Dataset"] + [DISPLAY.get(c, c) for c in COLUMNS]:
            table.add_column(c, justify="left" if c == "Dataset" else "right")
        for row in rows:
            table.add_row(*map(escape, row))
        out.print(table)

    _check_threshold(threshold)
    perturbation = _perturbation(perturb)
    if perturbation is not None and benchmarks_root is not None:
        _fail("--perturb works with --data or --real/--fake, not --benchmarks-root")
    pooled = real is not None or bool(fake)
    if pooled:
        if real is None or not fake:
            _fail("--real REAL_DIR and --fake GEN_DIR [GEN_DIR ...] go together")
        if data is not None or benchmarks_root is not None:
            _fail("--real/--fake replace --data and --benchmarks-root: give only one of them")
        if benchmarks:
            _fail("--benchmarks needs --benchmarks-root, not --real/--fake")
        fake = [*fake, *map(Path, ctx.args)]  # --fake A B C: the names after the first are extra arguments
    elif (data is None) == (benchmarks_root is None):
        _fail("give exactly one of --data (labelled images), --benchmarks-root (with --benchmarks NAME ...) or --real with --fake")
    names = [*(benchmarks or []), *([] if pooled else ctx.args)]
    if ctx.args and not benchmarks and not pooled:
        _fail(f"unexpected argument(s): {' '.join(ctx.args)}")
    if data is not None and benchmarks:
        _fail("--benchmarks needs --benchmarks-root, not --data")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} exists and is not a folder")
    if benchmarks_root is not None:
        from aigi.engine.benchmarks import plan_suites, run_suites
        from aigi.registry import UnknownNameError

        if not names:
            _fail("--benchmarks-root needs --benchmarks NAME ... (e.g. --benchmarks Chameleon GenImage)")
        try:
            suites = plan_suites(benchmarks_root, names)
        except (DataError, UnknownNameError, OSError) as e:
            _fail(str(e))
        for r in suites:
            for note in r.notes:
                err.print(f"note: {escape(note)}", highlight=False)
        if all(r.skipped for r in suites):
            _fail(f"none of the named suites has labelled images under {benchmarks_root}")
        m = _load(model)
        try:
            run_suites(m, suites, out_dir or Path("results"), threshold, batch_size, not no_cache, model_name=str(model or "default"))
        except OSError as e:
            _fail(f"could not write the results: {e}")
        n_images = n_bad = 0
        for r in suites:
            if r.report is None:
                continue
            rep, rows = r.report, format_table(r.report)
            show(f"aigi eval — {r.name} ({r.suite.name}: {rep.data}, threshold {rep.threshold:.3f})", rows if len(rows) > 2 else rows[:-1])
            for e in rep.errors:
                err.print(f"could not read {escape(e['path'])}: {escape(e['reason'])}", highlight=False)
            if rep.skipped:
                err.print(f"{escape(r.name)}: {len(rep.skipped)} file(s) skipped (outside label folders or not images), "
                          f"listed in {escape(str(r.files['json']))}", highlight=False)
            out.print(f"wrote {escape(str(r.csv))} and {escape(str(r.files['json'].parent))}/", highlight=False)
            n_images, n_bad = n_images + len(r.image_set.samples), n_bad + len(rep.errors)
        if n_bad == n_images:
            _fail("no image could be read", code=1)
        return
    if pooled:
        image_set, notes = _pooled_real(real, fake)
        for note in notes:
            err.print(f"note: {escape(note)}", highlight=False)
        source = f"real {real} vs " + ", ".join(map(str, fake))
    m = _load(model)
    if not pooled:
        try:
            image_set = discover(data)
        except (DataError, OSError, UnicodeDecodeError) as e:
            _fail(str(e))
        source = str(data)
    t = m.threshold if threshold is None else threshold
    scores = score_paths(m, [s.path for s in image_set.samples], use_cache=not no_cache, batch_size=batch_size, perturbation=perturbation)
    if perturbation is not None:
        source += f" ({perturbation.name})"
    report = build_report(image_set, scores.prob, t, scores.errors, model=str(model or "default"), data=source)
    show(f"aigi eval — {source} (threshold {t:.3f})", format_table(report))
    for e in report.errors:
        err.print(f"could not read {escape(e['path'])}: {escape(e['reason'])}", highlight=False)
    _report_skipped(image_set.skipped)
    if out_dir:
        files = write_report(report, out_dir, image_set, scores.prob)
        out.print("wrote " + ", ".join(escape(str(p)) for p in files.values()), highlight=False)
    if len(scores.errors) == len(image_set.samples):
        _fail("no image could be read", code=1)


@app.command()
def robustness(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled images (any layout eval --data reads)."),
    model: Optional[list[Path]] = typer.Option(None, "--model", "-m", help="Model folder; repeat to compare models. Default: the shipped model."),
    perturb: Optional[list[str]] = typer.Option(None, "--perturb", "-p", metavar="KIND:LEVEL", help="Repeat or comma-separate: none, jpeg:Q, blur:SIGMA, noise:SIGMA. Default: none, JPEG 100/90/75/50, blur 1/2/3/5, noise 0.05/0.1/0.25."),
    out_dir: Path = typer.Option(Path("robustness"), "--out", "-o", help="Folder for robustness.json/.csv/.png (an interrupted run resumes from it)."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch."),
) -> None:
    """AUROC and accuracies under post-processing (JPEG, blur, noise), per model: a table, a CSV and a plot."""
    from aigi.data.folders import DataError, discover
    from aigi.data.perturb import DEFAULT_SWEEP
    from aigi.engine.robustness import run_sweep

    texts = [t for item in (perturb or DEFAULT_SWEEP) for t in item.split(",") if t.strip()]
    if not texts:
        _fail("--perturb: no perturbation given (e.g. -p none,jpeg:75,blur:2)")
    perturbations = list({p.name: p for p in map(_perturbation, texts)}.values())
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} exists and is not a folder")
    try:
        image_set = discover(data)
    except (DataError, OSError, UnicodeDecodeError) as e:
        _fail(str(e))
    _report_skipped(image_set.skipped)
    models = {}
    for folder in model or [None]:
        name = "default" if folder is None else (folder.resolve().name or str(folder))
        base, k = name, 2
        while name in models:
            name, k = f"{base} #{k}", k + 1
        models[name] = _load(folder)
    notes: list[str] = []
    try:
        rows = run_sweep(models, image_set, perturbations, out_dir, batch_size, data=str(data.resolve()), notes=notes)
    except OSError as e:
        _fail(f"could not write the results: {e}")
    for note in notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    table = Table(title=f"aigi robustness — {data} (mean AUROC over subsets; accuracies at each model's threshold)")
    for c in ["perturbation", "model", "AUROC", "AP", "Real_Acc", "Fake_Acc", "unreadable"]:
        table.add_column(c, justify="left" if c in ("perturbation", "model") else "right")

    def f(v):
        return "" if v is None else f"{v:.3f}"

    for p in perturbations:
        for r in (r for r in rows if r["perturbation"] == p.name):
            table.add_row(p.name, escape(r["model"]), f(r["mean_auroc"]), f(r["mean_ap"]), f(r["real_acc"]), f(r["fake_acc"]), str(r["errors"]))
    out.print(table)
    out.print(f"wrote {escape(str(out_dir))}/robustness.json, robustness.csv, robustness.png", highlight=False)
    if all(r["errors"] == len(image_set.samples) for r in rows):
        _fail("no image could be read", code=1)


@app.command()
def inspect(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per file) instead of a table."),
) -> None:
    """What each file declares about its origin: C2PA Content Credentials, XMP/IPTC digital source type, camera
    EXIF, generator metadata (AUTOMATIC1111, ComfyUI, InvokeAI, NovelAI, Fooocus, Midjourney) and invisible watermarks.

    Strength says how hard a finding is to forge: strong (valid C2PA from a trusted signer), moderate (C2PA signed
    by an untrusted key, a decoded watermark), weak (plain metadata anyone can write). No findings proves nothing:
    most platforms strip metadata."""
    from aigi.data.folders import unlabelled
    from aigi.provenance import inspect_file

    image_set = unlabelled([str(p) for p in inputs])
    if not image_set.samples:
        _report_skipped(image_set.skipped)
        _fail(f"no image files found in {', '.join(map(str, inputs))}")
    results = [inspect_file(s.path) for s in image_set.samples]
    if as_json:
        payload = {"results": [r.to_dict() for r in results], "skipped": [{"path": str(p), "reason": r} for p, r in image_set.skipped]}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    table = Table(title="aigi inspect — what the files declare (weak = anyone can write it; no findings proves nothing)")
    for col in ("file", "source", "claim", "strength", "finding"):
        table.add_column(col, overflow="fold")
    for r in results:
        rows = [(f.source, f.claim, f.strength, f.summary) for f in r.findings] or ([] if r.problems else [("", "", "", "nothing declared")])
        rows += [("", "", "", f"[yellow]{escape(p)}[/]") for p in r.problems]
        for j, (src, claim, strength, text) in enumerate(rows):
            table.add_row(escape(r.path) if j == 0 else "", src, claim, strength, text if text.startswith("[yellow]") else escape(text))
    out.print(table)
    _report_skipped(image_set.skipped)


FEATURE_KINDS = {"patches": "mdmf", "global": "univfd", "tokens": "mirror"}  # feature kind -> the detector that caches it
# efficientnet_lite0 level when --feature-level is not given: the training defaults (both chosen on aigi-mini val)
KIND_LEVELS = {"patches": "stage6", "tokens": "stage6"}


@app.command()
def features(
    data: Path = typer.Option(..., "--data", "-d", help="Images: a folder (every image below it, whatever its layout), an image file or a CSV manifest."),
    backbone: str = typer.Option(..., help="Backbone family: efficientnet_lite0 or hf_vit."),
    backbone_source: Optional[str] = typer.Option(None, help="hf_vit: Hugging Face model id or local folder."),
    feature_level: Optional[str] = typer.Option(None, help="efficientnet_lite0: head, stage6, stage5, stage4, stage3. Default: the detector's training default (patches: stage6 as MDMF, tokens: stage6 as MIRROR, global: head)."),
    kind: str = typer.Option("patches", help="What to cache: patches (mdmf), global (univfd) or tokens (mirror with a frozen backbone)."),
    format_align: bool = typer.Option(True, help="Evaluation protocol: re-encode lossless inputs as JPEG q96. Must match the model that will read the cache."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch."),
) -> None:
    """Precompute backbone features into the on-disk feature cache, so that later `aigi train` / `aigi eval` runs read them.

    The cache is keyed as the detectors key it (backbone, preprocessing, protocol, feature kind, file contents).
    Unreadable files get a reason and the run carries on; the exit code is 1 only when no image could be read."""
    from aigi.checkpoints import ModelConfig, ModelLoadError, build_model
    from aigi.data.folders import DataError, discover, unlabelled
    from aigi.data.transforms import EvalProtocol
    from aigi.engine.inference import extract_features, feature_cache_for
    from aigi.registry import UnknownNameError

    kind = kind.lower()
    if kind not in FEATURE_KINDS:
        _fail(f"--kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    if not data.exists():
        _fail(f"{data}: no such file or folder")
    if data.is_file() and data.suffix.lower() == ".csv":
        try:
            image_set = discover(data)
        except (DataError, OSError) as e:
            _fail(str(e))
    else:  # every image below the folder, labelled or not
        image_set = unlabelled([data])
    paths = list(dict.fromkeys(s.path for s in image_set.samples))
    if not paths:
        _report_skipped(image_set.skipped)
        _fail(f"no image files found in {data}")
    detector = FEATURE_KINDS[kind]
    level = feature_level or (KIND_LEVELS.get(kind) if backbone == "efficientnet_lite0" else None)
    try:  # a throwaway model of that detector: its cache namespace is the one training and scoring use
        m = build_model(ModelConfig(detector=detector, params={"lora_r": 0} if detector == "mirror" else {},
                                    backbone=_backbone_spec(backbone, backbone_source, level),
                                    protocol=EvalProtocol(format_align=format_align)))
    except (ModelLoadError, UnknownNameError, OSError, ValueError) as e:
        _fail(str(e))
    ext = extract_features(m, paths, use_cache=True, batch_size=batch_size, description=f"{kind} features")
    for i, reason in sorted(ext.errors.items()):
        err.print(f"could not read {escape(str(paths[i]))}: {escape(reason)}", highlight=False, soft_wrap=True)
    _report_skipped(image_set.skipped)
    n_ok = len(ext.ok)
    what = escape(backbone + (f", {level}" if level else ""))
    out.print(f"{kind} features ({what}): {n_ok - ext.cache_hits} computed, {ext.cache_hits} already cached, "
              f"{len(ext.errors)} unreadable", highlight=False)
    out.print(f"cache: {escape(str(feature_cache_for(m).dir))}", highlight=False, soft_wrap=True)
    if not n_ok:
        _fail("no image could be read", code=1)


@app.command()
def calibrate(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled validation images."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder to update in place."),
    target_real_acc: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Lowest threshold keeping this real-photo accuracy; default: maximise balanced accuracy."),
) -> None:
    """Choose the decision threshold on validation data and store it in the model folder."""
    from aigi.checkpoints import save_model
    from aigi.engine.calibrate import calibrate as run

    from aigi.data.folders import DataError

    m = _load(model)
    try:
        rec = run(m, data, target_real_acc)
    except (DataError, ValueError, OSError) as e:
        _fail(str(e))
    save_model(m, model)

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    out.print(f"threshold {rec['threshold']:.4f} ({rec['rule']}): real acc {f(rec['real_acc'])}, "
              f"generated acc {f(rec['fake_acc'])} on {escape(str(data))}", highlight=False)


@train_app.command("univfd")
def train_univfd(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled training images."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    val: Optional[Path] = typer.Option(None, help="Labelled validation images, used to choose the regularisation."),
    calibrate_on: Optional[Path] = typer.Option(None, "--calibrate-on", help="Labelled images on which to choose the threshold."),
    target_real_acc: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="With --calibrate-on: keep this real-photo accuracy."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone family: efficientnet_lite0 or hf_vit."),
    backbone_source: Optional[str] = typer.Option(None, help="hf_vit: Hugging Face model id or local folder."),
    feature_level: Optional[str] = typer.Option(None, help="efficientnet_lite0: head (default), stage6, stage5, stage4, stage3."),
    C: Optional[float] = typer.Option(None, "--C", help="Inverse regularisation strength; default: chosen on --val."),
) -> None:
    """UnivFD linear probe: frozen backbone global feature -> logistic regression."""
    from aigi.data.folders import DataError
    from aigi.engine.train import train_univfd as run

    try:
        m, info = run(data, out_dir, backbone=_backbone_spec(backbone, backbone_source, feature_level),
                      params={"C": C} if C is not None else {}, val=val, calibrate_on=calibrate_on, target_real_acc=target_real_acc)
    except (DataError, ValueError, OSError) as e:
        _fail(str(e))
    out.print(f"saved {escape(str(out_dir))} (C={info['C']}, threshold {m.threshold:.4f})", highlight=False)


@train_app.command("mdmf")
def train_mdmf(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled training images (real and generated)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    reference: Optional[Path] = typer.Option(None, help="Clean real images for the reference bank (default: the real training images)."),
    val: Optional[Path] = typer.Option(None, help="Labelled validation images (AUROC recorded in the config)."),
    calibrate_on: Optional[Path] = typer.Option(None, "--calibrate-on", help="Labelled images on which to choose the threshold."),
    target_real_acc: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="With --calibrate-on: keep this real-photo accuracy."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone family: efficientnet_lite0 or hf_vit."),
    backbone_source: Optional[str] = typer.Option(None, help="hf_vit: Hugging Face model id or local folder (the paper: DINOv2 ViT-L/14)."),
    feature_level: Optional[str] = typer.Option(None, help="efficientnet_lite0: stage6 (default: 32-px cells, best on aigi-mini val), stage5, stage4 (16-px cells), stage3."),
    pool: int = typer.Option(1, min=1, help="Patch unit: average tokens over pool x pool cells (stage6 cells are 32 px, the paper's best; at stage4, 2 x 16 px)."),
    estimator: str = typer.Option("fast", help="fast (random-feature mean embedding of the bank) or exact (kernel sums against a bank sample)."),
    bank_patches: int = typer.Option(4096, min=2, max=1_000_000, help="Reference patches stored for the exact estimator (the fast one summarises every patch)."),
    steps: int = typer.Option(1000, min=1),
    lr: float = typer.Option(1e-3),
    criterion: str = typer.Option("image", help="image (separation of per-image scores) or pooled (patch-level test power)."),
) -> None:
    """MDMF: patch-distribution detection by MMD against a bank of real images (deep kernel, test-power training)."""
    from aigi.data.folders import DataError
    from aigi.engine.train_mdmf import train_mdmf as run

    level = feature_level or ("stage6" if backbone == "efficientnet_lite0" else None)
    try:
        m = run(data, out_dir, reference=reference, val=val, backbone=_backbone_spec(backbone, backbone_source, level),
                params={"pool": pool, "estimator": estimator, "bank_patches": bank_patches}, steps=steps, lr=lr, criterion=criterion,
                calibrate_on=calibrate_on, target_real_acc=target_real_acc)
    except (DataError, ValueError, OSError) as e:
        _fail(str(e))
    auroc = m.config.training.get("val_auroc")
    out.print(f"saved {escape(str(out_dir))} (threshold {m.threshold:.4f}" + (f", val AUROC {auroc:.3f}" if auroc is not None else "") + ")",
              highlight=False)


MIXED_HELP = "Mixed precision on GPU: no, fp16 or bf16. Several GPUs: run under `accelerate launch -m aigi.cli ...`."


@train_app.command("mirror-memory")
def train_mirror_memory(
    data: Path = typer.Option(..., "--data", "-d", help="Real images (e.g. train/0_real, or a labelled tree: its real images are used)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Memory folder to write (rerun with the same folder to resume)."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone family: efficientnet_lite0 or hf_vit."),
    backbone_source: Optional[str] = typer.Option(None, help="hf_vit: Hugging Face model id or local folder (DINOv2/v3, CLIP, SigLIP)."),
    feature_level: Optional[str] = typer.Option(None, help="efficientnet_lite0: head, stage6 (default here: best on aigi-mini val for its size), stage5, stage4, stage3."),
    slots: int = typer.Option(4096, min=1, help="Memory slots K."),
    heads: int = typer.Option(8, min=1),
    top_k: int = typer.Option(128, min=1, help="Attention entries kept per head and token."),
    epochs: int = typer.Option(100, min=1),
    batch_size: int = typer.Option(128, min=1, help="Images per step."),
    lr: float = typer.Option(1e-4),
    weight_decay: float = typer.Option(1e-4),
    ortho_weight: float = typer.Option(0.01, help="Weight of || norm(M) norm(M)^T - I ||_F."),
    views: int = typer.Option(1, min=1, help="Crops per image whose tokens are cached: the evaluation crop + views-1 augmented ones."),
    format_align: bool = typer.Option(True, help="Evaluation protocol: re-encode lossless inputs as JPEG q96 (MIRROR's protocol)."),
    mixed_precision: str = typer.Option("no", help=MIXED_HELP),
) -> None:
    """MIRROR Phase 1: learn the memory of real images from frozen backbone tokens (cached)."""
    from aigi.checkpoints import ModelLoadError
    from aigi.data.folders import DataError
    from aigi.data.transforms import EvalProtocol
    from aigi.engine.train_mirror import MemoryRecipe, train_memory

    level = feature_level or ("stage6" if backbone == "efficientnet_lite0" else None)
    try:
        recipe = MemoryRecipe(slots=slots, heads=heads, top_k=top_k, epochs=epochs, batch_size=batch_size, lr=lr,
                              weight_decay=weight_decay, ortho_weight=ortho_weight, views=views)
        cfg = train_memory(data, out_dir, _backbone_spec(backbone, backbone_source, level), EvalProtocol(format_align=format_align),
                           recipe, mixed_precision=mixed_precision)
    except (DataError, ModelLoadError, ValueError, OSError) as e:
        _fail(str(e))
    out.print(f"saved memory {escape(str(out_dir))}: {cfg.recipe.slots} slots x {cfg.dim} dims, {cfg.epochs_done} epochs", highlight=False)


@train_app.command("mirror")
def train_mirror(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled training images (real and generated)."),
    memory: Path = typer.Option(..., "--memory", help="Memory folder from `aigi train mirror-memory` (fixes the backbone and protocol)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model folder to write (rerun with the same folder to resume)."),
    val: Optional[Path] = typer.Option(None, help="Labelled validation images, scored after every epoch (logged)."),
    calibrate_on: Optional[Path] = typer.Option(None, "--calibrate-on", help="Labelled images on which to choose the threshold at the end."),
    target_real_acc: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="With --calibrate-on: keep this real-photo accuracy."),
    epochs: int = typer.Option(100, min=1),
    batch_size: int = typer.Option(64, min=1, help="Images per step and device."),
    blr: float = typer.Option(5e-4, help="Base learning rate: lr = blr * total batch / 256."),
    lora_r: int = typer.Option(8, min=0, help="LoRA rank on the backbone (0: backbone frozen)."),
    lora_alpha: float = typer.Option(16.0),
    num_workers: int = typer.Option(1, min=0, help="Data-loading worker processes."),
    mixed_precision: str = typer.Option("no", help=MIXED_HELP),
) -> None:
    """MIRROR Phase 2: frozen memory, LoRA on the backbone, dual-branch head (perplexity + residual + global token)."""
    from aigi.checkpoints import ModelLoadError
    from aigi.data.folders import DataError
    from aigi.engine.train_mirror import DetectorRecipe, train_detector

    try:
        recipe = DetectorRecipe(epochs=epochs, batch_size=batch_size, blr=blr, num_workers=num_workers)
        m = train_detector(data, out_dir, memory, params={"lora_r": lora_r, "lora_alpha": lora_alpha}, recipe=recipe, val=val,
                           calibrate_on=calibrate_on, target_real_acc=target_real_acc, mixed_precision=mixed_precision)
    except (DataError, ModelLoadError, ValueError, OSError) as e:
        _fail(str(e))
    last = m.config.training.get("last_epoch", {})
    extra = f", val AUROC {last['val_auroc']:.3f}" if "val_auroc" in last else ""
    out.print(f"saved {escape(str(out_dir))} (threshold {m.threshold:.4f}{extra})", highlight=False)


@app.command()
def info(model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP)) -> None:
    """Print a model folder's config."""
    from aigi.checkpoints import default_model_path, read_config

    try:
        cfg = read_config(model or default_model_path())
    except ValueError as e:
        _fail(str(e))
    sys.stdout.write(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")


@app.command()
def samples(out_dir: Path = typer.Argument(..., help="Folder to copy the sample photos into.")) -> None:
    """Copy real sample photos that ship with scikit-image (available offline) into a folder."""
    try:
        import skimage.data
    except ImportError:
        _fail("sample photos come from scikit-image: pip install scikit-image")
    src = Path(skimage.data.__file__).parent
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg"]
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, out_dir / name)
            n += 1
    out.print(f"copied {n} scikit-image photos to {out_dir}")


convert_app = typer.Typer(help="Convert published checkpoints of other projects into aigi folders.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@convert_app.command("mirror")
def convert_mirror(
    checkpoint: Path = typer.Argument(..., help="MIRROR's Phase 1 memory (mirror_phase1*.pth) or Phase 2 detector (checkpoint-*.pth)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write: a memory folder (Phase 1) or a model folder (Phase 2)."),
    backbone_source: str = typer.Option(..., help="The DINO backbone the checkpoint was trained with: Hugging Face id or local folder (MIRROR's release: facebook/dinov3-vith16plus-pretrain-lvd1689m)."),
    heads: Optional[int] = typer.Option(None, min=1, help="Memory attention heads. Default: the file's memory_config, else 8."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Attention entries kept per head and token. Default: the file's memory_config, else 128."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha of a Phase 2 file (not stored in it). Default: 16."),
) -> None:
    """Convert a checkpoint published by MIRROR (handsome-rich/MIRROR). The phase is detected from the file's contents.

    The file is read as weights only and is never fully unpickled. For Phase 2, the frozen backbone stored in the file is not copied: it is loaded from --backbone-source."""
    from aigi.checkpoints import ModelLoadError
    from aigi.convert import convert_mirror as run

    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} exists and is not a folder")
    try:
        res = run(checkpoint, out_dir, _backbone_spec("hf_vit", backbone_source, None), heads=heads, top_k=top_k, lora_alpha=lora_alpha)
    except (ModelLoadError, OSError, ValueError) as e:
        _fail(str(e))
    for note in res.notes:
        err.print(f"note: {escape(note)}", highlight=False)
    out.print(escape(res.summary()), highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
