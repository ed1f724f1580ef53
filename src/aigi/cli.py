"""The ``aigi`` command line: each command is a thin call into the library (:mod:`aigi.api` and the engines).

Errors: library code raises :class:`aigi.errors.AigiError` (or an ``OSError`` from the file system); :class:`AigiGroup`
turns either into one ``error: ...`` line and the error's exit code, in this one place.
"""

from __future__ import annotations

import json
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from aigi import cli_tables as show
from aigi._version import __version__
from aigi.cli_errors import AigiGroup
from aigi.cli_reason import reason_app
from aigi.cli_train import TrainGroup
from aigi.errors import ConfigError, DataError, ModelLoadError, NothingScoredError

app = typer.Typer(
    cls=AigiGroup,
    help="Tell AI-generated images from real photographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(
    cls=TrainGroup, help="Train a detector on labelled folders and save a model folder.", no_args_is_help=True
)
app.add_typer(train_app, name="train")


def _version(value: bool) -> None:
    if value:
        show.say(f"aigi {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Tell AI-generated images from real photographs."""


class ProbabilityChoice(str, Enum):
    platt = "platt"
    none = "none"


class ViewsChoice(str, Enum):
    center = "center"
    center_corners = "center_corners"
    grid = "grid"


class CombineChoice(str, Enum):
    mean = "mean"
    max = "max"
    topk = "topk"


# -- shared options --------------------------------------------------------------------------------------------------
MODEL_HELP = "Model folder (config.json + model.safetensors). Default: the model shipped with aigi."
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help=MODEL_HELP)]
ThresholdOpt = Annotated[
    Optional[float], typer.Option(min=0.0, max=1.0, help="Override the model's decision threshold on P(generated).")
]
BatchOpt = Annotated[int, typer.Option(min=1, help="Images per batch (small batches are fastest on CPU).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the feature cache.")]
OutDirOpt = Annotated[
    Optional[Path],
    typer.Option("--out", "-o", help="Report folder (CSV, JSON, per-image scores, ROC and histogram PNGs)."),
]
InputsArg = Annotated[
    # readable=False: click's os.access check would stop the whole run; an unreadable input gets its own row instead
    list[Path], typer.Argument(help="Image files and/or folders (searched recursively).", readable=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one object per file) instead of a table.")]
AllowDownloadOpt = Annotated[
    bool,
    typer.Option(
        "--allow-download",
        help="Let the model folder's backbone be downloaded from the Hugging Face Hub when it is not in the local "
        "cache (default: local files only, or AIGI_ALLOW_DOWNLOAD=1). A model folder is someone else's choice.",
    ),
]


def _load(model_dir: Optional[Path], allow_download: bool = False, runtime: str = "torch"):
    from aigi import api

    return api.load(
        model_dir, allow_download=allow_download or None, runtime=runtime
    )  # None: AIGI_ALLOW_DOWNLOAD decides


RuntimeOpt = Annotated[
    str,
    typer.Option(
        metavar="auto|torch|onnx",
        help="Run the detector in onnxruntime or PyTorch (the same verdicts). auto: onnxruntime when the model folder "
        "has a model.onnx made from its current weights and settings (the shipped default does; aigi export onnx "
        "makes one), else PyTorch. onnx: always (a folder without model.onnx is exported once into the cache; a "
        "stale one is refused). torch: always PyTorch.",
    ),
]


def _perturbation(text: Optional[str]):
    from aigi.data.perturb import PerturbationError, parse_perturbation

    if text is None:
        return None
    try:
        return parse_perturbation(text)
    except PerturbationError as e:
        raise ConfigError(f"--perturb {e}") from None


def _image_inputs(inputs: list[Path]):
    """The images named on a command line (folders walked); none at all is an error."""
    from aigi.data.folders import unlabelled

    image_set = unlabelled([str(p) for p in inputs])
    if not image_set.samples:
        show.skipped(image_set.skipped)
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    return image_set


def _out_folder(out_dir: Optional[Path]) -> None:
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")


def _write_heatmaps(results, folder: Path):
    """Write each heatmap PNG; returns how many were written and the write error that stopped them (or None), so the
    verdicts are still printed when the heatmaps cannot be written."""
    from aigi.engine.explain import heatmap_file_name
    from aigi.io import WriteError, write_bytes

    try:
        for d in results:
            if d.heatmap_png is not None:
                d.heatmap_path = str(write_bytes(folder / heatmap_file_name(d.path), d.heatmap_png))
    except WriteError as e:
        return sum(d.heatmap_path is not None for d in results), e
    return sum(d.heatmap_path is not None for d in results), None


def _check_think(think: Optional[str], slow_model: Optional[Path], threshold, no_provenance: bool, reasoner) -> None:
    from aigi.think import MODES

    if think in (None, "fast"):
        for given, name in ((slow_model, "--slow-model"), (reasoner, "--reasoner")):
            if given is not None:
                raise ConfigError(f"{name} is for the slow path of --think: add --think slow or --think auto")
    if think is None:
        return
    if think not in MODES:
        raise ConfigError(f"--think must be fast, slow or auto, not {think!r}")
    if threshold is not None:
        raise ConfigError("--think decides with the models' calibrated thresholds and band: drop --threshold")
    if no_provenance:
        raise ConfigError("--think reads what the files declare as evidence: drop --no-provenance")


def _check_port(host: str, port: int) -> None:
    """Refuse at once, before the models load, an address this machine cannot listen on (e.g. a port in use)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


# -- commands --------------------------------------------------------------------------------------------------------
@app.command()
def detect(
    inputs: InputsArg,
    model: ModelOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a 'results' list, one object per image) instead of a table.")
    ] = False,
    threshold: ThresholdOpt = None,
    batch_size: BatchOpt = 8,
    no_cache: NoCacheOpt = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Also write a heatmap PNG per image of the model's per-patch evidence (MIRROR: residual norm; MDMF: each patch's share of the MMD).",
        ),
    ] = False,
    explain_dir: Annotated[Path, typer.Option("--explain-dir", help="Folder for the --explain heatmaps.")] = Path(
        "aigi_heatmaps"
    ),
    no_provenance: Annotated[
        bool,
        typer.Option(
            "--no-provenance",
            help="Do not read what the files declare (C2PA, metadata, watermarks); the detector alone decides.",
        ),
    ] = False,
    think: Annotated[
        Optional[str],
        typer.Option(
            "--think",
            metavar="fast|slow|auto",
            help="fast: the model alone; slow: the whole image, heatmap, provenance and an explanation; auto: fast, "
            "and slow for images inside the model's uncertainty band. The answer says which path decided and why.",
        ),
    ] = None,
    reasoner: Annotated[
        Optional[str],
        typer.Option(
            help="--think: a Hugging Face vision-language model (id or local folder) that reasons over each slow-path "
            "image and its evidence; its answer is shown beside them (the verdict stays the slow model's)."
        ),
    ] = None,
    slow_model: Annotated[
        Optional[Path],
        typer.Option(
            help="--think: the slow path's model folder (e.g. a stack). Default: the shipped model, whole image."
        ),
    ] = None,
    runtime: RuntimeOpt = "auto",
    allow_download: AllowDownloadOpt = False,
) -> None:
    """Say, for each image, whether it was generated or is real, and on what basis.

    What the file declares (C2PA Content Credentials, XMP/IPTC digital source type, generator metadata, invisible
    watermarks; see `aigi inspect`) is read beside the detector's probability: a generated-content declaration
    decides, anything else is mentioned beside the detector's verdict. Files that cannot be read get a reason and
    the run carries on; the exit code is non-zero only when no image at all could be read."""
    from aigi import api
    from aigi.checkpoints import views_of

    _check_think(think, slow_model, threshold, no_provenance, reasoner)
    image_set, m = _image_inputs(inputs), _load(model, allow_download, runtime)
    paths = [s.path for s in image_set.samples]
    if think is None:
        options = dict(threshold=threshold, provenance=not no_provenance, explain=explain, use_cache=not no_cache)
        results = api.detect(m, paths, batch_size=batch_size, progress=not as_json, **options)
    else:
        from aigi import think as thinking
        from aigi.reasoner import VLMReasoner

        slow = None if slow_model is None else _load(slow_model, allow_download, runtime)
        vlm = None if reasoner is None else VLMReasoner(reasoner, allow_download)
        results = thinking.detect(
            m, paths, think, slow, explain=explain, batch_size=batch_size, progress=not as_json, reasoner=vlm
        )
    n_maps, heatmap_error = _write_heatmaps(results, explain_dir) if explain else (0, None)
    t, band = (m.threshold, m.config.band) if threshold is None else (threshold, None)
    if as_json:
        from aigi.onnx_runtime import runtime_of

        show.detections_json(m.config.detector, t, band, results, image_set.skipped, views_of(m.config), runtime_of(m))
    else:
        show.detections(results, show.detect_title(m.config, t, band), not no_provenance)
        show.batch_notes(results, image_set.skipped, n_maps, explain_dir)
    if heatmap_error is not None:
        raise heatmap_error
    if all(d.verdict == "error" for d in results):
        raise typer.Exit(1)


def _eval_mode(data, benchmarks_root, benchmarks, real, fake, extra: list[str], perturbed: bool) -> str:
    """Which of eval's three inputs was given: ``data`` (--data), ``pooled`` (--real + --fake) or ``suites``."""
    if real is not None or fake:
        if real is None or not fake:
            raise ConfigError("--real REAL_DIR and --fake GEN_DIR [GEN_DIR ...] go together")
        if data is not None or benchmarks_root is not None:
            raise ConfigError("--real/--fake replace --data and --benchmarks-root: give only one of them")
        if benchmarks:
            raise ConfigError("--benchmarks needs --benchmarks-root, not --real/--fake")
        return "pooled"
    if (data is None) == (benchmarks_root is None):
        raise ConfigError(
            "give exactly one of --data (labelled images), --benchmarks-root (with --benchmarks NAME ...) or --real with --fake"
        )
    if data is not None and benchmarks:
        raise ConfigError("--benchmarks needs --benchmarks-root, not --data")
    if data is not None and extra:
        raise ConfigError(f"unexpected argument(s): {' '.join(extra)}")
    if benchmarks_root is not None and perturbed:
        raise ConfigError("--perturb works with --data or --real/--fake, not --benchmarks-root")
    if benchmarks_root is not None and not [*(benchmarks or []), *extra]:
        raise ConfigError("--benchmarks-root needs --benchmarks NAME ... (e.g. --benchmarks Chameleon GenImage)")
    return "data" if data is not None else "suites"


def _eval_images(mode: str, data: Optional[Path], real: Optional[Path], fakes: list[Path], confine: bool):
    """The labelled images of --data or of --real/--fake, and how to name them in the report."""
    from aigi.data.folders import discover, pooled_real

    if mode == "data":
        return discover(data, confine=confine), str(data)
    image_set, notes = pooled_real(real, fakes)
    for text in notes:
        show.note(text)
    return image_set, f"real {real} vs " + ", ".join(map(str, fakes))


def _eval_suites(model, model_name: str, root: Path, names: list[str], out_dir: Path, scoring: dict) -> None:
    """--benchmarks-root: MIRROR's suites, one CSV and one report folder each."""
    from aigi.engine.benchmarks import plan_suites, run_suites

    suites = plan_suites(root, names)
    for r in suites:
        for text in r.notes:
            show.note(text)
    if all(r.skipped for r in suites):
        raise DataError(f"none of the named suites has labelled images under {root}")
    run_suites(model, suites, out_dir, model_name=model_name, **scoring)
    show.suites(suites)
    if all(len(r.report.errors) == len(r.image_set.samples) for r in suites if r.report is not None):
        raise NothingScoredError("no image could be read")


@app.command(
    name="eval", context_settings={"allow_extra_args": True}
)  # extra args: more names after --benchmarks or --fake
def evaluate(
    ctx: typer.Context,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            "-d",
            help="Labelled images: folders (0_real/1_fake, real/fake, nature/ai, pooled reals + generator folders, benchmark roots) or a CSV manifest.",
        ),
    ] = None,
    benchmarks_root: Annotated[
        Optional[Path],
        typer.Option(
            "--benchmarks-root",
            help="Folder holding MIRROR's benchmark suites (instead of --data); name them with --benchmarks.",
        ),
    ] = None,
    benchmarks: Annotated[
        Optional[list[str]],
        typer.Option(
            "--benchmarks",
            "-b",
            metavar="NAME...",
            help="Suite names, ignoring case: --benchmarks Chameleon GenImage, repeated, or comma-separated. See README.",
        ),
    ] = None,
    real: Annotated[
        Optional[Path],
        typer.Option(
            "--real", help="Folder of real images, pooled: scored against each --fake folder (instead of --data)."
        ),
    ] = None,
    fake: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--fake",
            metavar="GEN_DIR...",
            help="With --real: one folder of generated images per generator (--fake A B C, or repeated); one subset each.",
        ),
    ] = None,
    model: ModelOpt = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Report folder (CSV, JSON, per-image scores, ROC and histogram PNGs). With --benchmarks-root: default results/.",
        ),
    ] = None,
    threshold: ThresholdOpt = None,
    batch_size: BatchOpt = 8,
    no_cache: NoCacheOpt = False,
    perturb: Annotated[
        Optional[str],
        typer.Option(
            "--perturb",
            metavar="KIND:LEVEL",
            help="Post-process every image first: jpeg:QUALITY, blur:SIGMA (px), noise:SIGMA (0-1 scale), "
            "resize:FACTOR or chain:NAME[:SEED] (social, screenshot, messenger, editing, upscale), e.g. jpeg:75, "
            "chain:social.",
        ),
    ] = None,
    confine: Annotated[
        bool,
        typer.Option(
            "--confine",
            help="A --data CSV manifest may list only files inside its own folder (symbolic links resolved); rows "
            "outside are skipped, each with its line number. For manifests you did not write.",
        ),
    ] = False,
    allow_download: AllowDownloadOpt = False,
) -> None:
    """Measure a model on labelled data: Acc, Real_Acc, Fake_Acc, Bal_Acc, AUROC, AP, FPR@95TPR, EER per subset + MEAN.

    Three inputs: --data (any labelled layout or a CSV manifest); --real with --fake (one subset per generator folder,
    each with all the real images); --benchmarks-root with --benchmarks (MIRROR's suites, one CSV each)."""
    from aigi import api

    perturbation = _perturbation(perturb)
    mode = _eval_mode(data, benchmarks_root, benchmarks, real, fake, ctx.args, perturbation is not None)
    if confine and mode != "data":
        raise ConfigError("--confine is for a CSV manifest given with --data")
    _out_folder(out_dir)
    scoring = dict(threshold=threshold, use_cache=not no_cache, batch_size=batch_size)
    if mode == "suites":
        names = [*(benchmarks or []), *ctx.args]
        m, out = _load(model, allow_download), out_dir or Path("results")
        return _eval_suites(m, str(model or "default"), benchmarks_root, names, out, scoring)
    image_set, source = _eval_images(mode, data, real, [*(fake or []), *map(Path, ctx.args)], confine)
    name = str(model or "default")
    report = api.evaluate(
        _load(model, allow_download), image_set, perturbation=perturbation, model_name=name, data_name=source, **scoring
    )
    show.evaluation(report, image_set.skipped, out_dir)
    if len(report.errors) == len(image_set.samples):
        raise NothingScoredError("no image could be read")


def _sweep(items: list[str]) -> list:
    """--perturb values (repeated or comma-separated) -> distinct perturbations, in order."""
    from aigi.data.perturb import CHAIN_SWEEP

    texts = [t for item in items for t in item.split(",") if t.strip()]
    texts = [c for t in texts for c in (CHAIN_SWEEP if t.strip().lower() == "chains" else [t])]
    if not texts:
        raise ConfigError("--perturb: no perturbation given (e.g. -p none,jpeg:75,blur:2)")
    return list({p.name: p for p in map(_perturbation, texts)}.values())


def _models_by_name(folders: Optional[list[Path]], allow_download: bool) -> dict:
    """Load each --model; names are the folder names, numbered when two clash."""
    models: dict = {}
    for folder in folders or [None]:
        name = "default" if folder is None else (folder.resolve().name or str(folder))
        base, k = name, 2
        while name in models:
            name, k = f"{base} #{k}", k + 1
        models[name] = _load(folder, allow_download)
    return models


@app.command()
def robustness(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled images (any layout eval --data reads).")],
    model: Annotated[
        Optional[list[Path]],
        typer.Option("--model", "-m", help="Model folder; repeat to compare models. Default: the shipped model."),
    ] = None,
    perturb: Annotated[
        Optional[list[str]],
        typer.Option(
            "--perturb",
            "-p",
            metavar="KIND:LEVEL",
            help="Repeat or comma-separate: none, jpeg:Q, blur:SIGMA, noise:SIGMA, resize:FACTOR, chain:NAME[:SEED] "
            "(social, screenshot, messenger, editing, upscale), or 'chains' for every chain. "
            "Default: none, JPEG 100/90/75/50, blur 1/2/3/5, noise 0.05/0.1/0.25.",
        ),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for robustness.json/.csv/.png (an interrupted run resumes from it)."),
    ] = Path("robustness"),
    batch_size: BatchOpt = 8,
    allow_download: AllowDownloadOpt = False,
) -> None:
    """AUROC and accuracies under post-processing (JPEG, blur, noise, resizing, real-world chains), per model: a table,
    a CSV and a plot."""
    from aigi.data.folders import discover
    from aigi.data.perturb import DEFAULT_SWEEP
    from aigi.engine.robustness import run_sweep

    perturbations = _sweep(perturb or DEFAULT_SWEEP)
    _out_folder(out_dir)
    image_set = discover(data)
    show.skipped(image_set.skipped)
    notes: list[str] = []
    models = _models_by_name(model, allow_download)
    rows = run_sweep(models, image_set, perturbations, out_dir, batch_size, data=str(data.resolve()), notes=notes)
    for text in notes:
        show.note(text)
    show.robustness(rows, perturbations, data)
    show.say(f"wrote {out_dir}/robustness.json, robustness.csv, robustness.png")
    if all(r["errors"] == len(image_set.samples) for r in rows):
        raise NothingScoredError("no image could be read")


@app.command()
def inspect(inputs: InputsArg, as_json: JsonOpt = False) -> None:
    """What each file declares about its origin: C2PA Content Credentials, XMP/IPTC digital source type, camera
    EXIF, generator metadata (AUTOMATIC1111, ComfyUI, InvokeAI, NovelAI, Fooocus, Midjourney) and invisible watermarks.

    Strength says how hard a finding is to forge: strong (valid C2PA from a trusted signer), moderate (C2PA signed
    by an untrusted key, a decoded watermark), weak (plain metadata anyone can write). No findings proves nothing:
    most platforms strip metadata. Exit code 1 when no file could be read at all, as `aigi detect`."""
    from aigi.provenance import inspect_file

    image_set = _image_inputs(inputs)
    results = [inspect_file(s.path) for s in image_set.samples]
    if as_json:
        show.provenance_json(results, image_set.skipped)
    else:
        show.provenance(results)
        show.skipped(image_set.skipped)
    if all(r.unreadable for r in results):
        raise typer.Exit(1)


def _feature_detector(kind: str) -> tuple[str, Optional[str]]:
    """The detector whose cached features are of ``kind``, and its recipe's default feature level."""
    from aigi.detectors import DETECTORS, load_all
    from aigi.engine.trainer import RECIPES

    load_all()
    kinds = {DETECTORS.get(n).feature_kind: n for n in DETECTORS.names() if DETECTORS.get(n).cache_variant is not None}
    if kind not in kinds:
        raise ConfigError(f"--kind must be one of {', '.join(sorted(kinds))}, got {kind!r}")
    levels = [
        RECIPES.get(r).Config.model_fields["feature_level"].default
        for r in RECIPES.names()
        if RECIPES.get(r).detector == kinds[kind] and "feature_level" in RECIPES.get(r).Config.model_fields
    ]
    return kinds[kind], (levels[0] if levels else None)


def _cache_model(kind: str, family: str, source: Optional[str], level: Optional[str], format_align: bool):
    """A throwaway model of the detector that caches ``kind``: its cache namespace is the one training uses."""
    from aigi.backbones import backbone_spec
    from aigi.checkpoints import ModelConfig, build_model
    from aigi.data.transforms import EvalProtocol
    from aigi.detectors import get_detector

    detector, default_level = _feature_detector(kind)
    spec = backbone_spec(family, source, level or default_level)
    params = dict(get_detector(detector).cache_variant)
    config = ModelConfig(
        detector=detector, params=params, backbone=spec, protocol=EvalProtocol(format_align=format_align)
    )
    return build_model(config, allow_download=True)  # the user typed this backbone source


def _feature_images(data: Path) -> list[Path]:
    from aigi.data.folders import discover, unlabelled

    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    csv = data.is_file() and data.suffix.lower() == ".csv"
    image_set = discover(data) if csv else unlabelled([data])  # a folder: every image below it, labelled or not
    paths = list(dict.fromkeys(s.path for s in image_set.samples))
    show.skipped(image_set.skipped)
    if not paths:
        raise DataError(f"no image files found in {data}")
    return paths


@app.command()
def features(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="Images: a folder (every image below it, whatever its layout), an image file or a CSV manifest.",
        ),
    ],
    backbone: Annotated[str, typer.Option(help="Backbone family: efficientnet_lite0 or hf_vit.")],
    backbone_source: Annotated[
        Optional[str], typer.Option(help="hf_vit: Hugging Face model id or local folder.")
    ] = None,
    feature_level: Annotated[
        Optional[str],
        typer.Option(
            help="efficientnet_lite0: head, stage6, stage5, stage4, stage3. Default: the detector's training default (patches: stage6 as MDMF, tokens: stage6 as MIRROR, global: head)."
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(help="What to cache: patches (mdmf), global (univfd) or tokens (mirror with a frozen backbone)."),
    ] = "patches",
    format_align: Annotated[
        bool,
        typer.Option(
            help="Evaluation protocol: re-encode lossless inputs as JPEG q96. Must match the model that will read the cache."
        ),
    ] = True,
    batch_size: BatchOpt = 8,
) -> None:
    """Precompute backbone features into the on-disk feature cache, so that later `aigi train` / `aigi eval` runs read them.

    The cache is keyed as the detectors key it (backbone, preprocessing, protocol, feature kind, file contents).
    Unreadable files get a reason and the run carries on; the exit code is 1 only when no image could be read."""
    from aigi.engine.inference import extract_features, feature_cache_for
    from aigi.io import WriteError

    kind, paths = kind.lower(), _feature_images(data)
    m = _cache_model(kind, backbone, backbone_source, feature_level, format_align)
    ext = extract_features(m, paths, use_cache=True, batch_size=batch_size, description=f"{kind} features")
    show.unreadable({"path": str(paths[i]), "reason": r} for i, r in sorted(ext.errors.items()))
    level = m.config.backbone.options.get("feature_level")
    show.say(
        f"{kind} features ({backbone + (f', {level}' if level else '')}): {len(ext.ok) - ext.cache_hits} computed, "
        f"{ext.cache_hits} already cached, {len(ext.errors)} unreadable"
    )
    cache = feature_cache_for(m)
    show.say(f"cache: {cache.dir}")
    if cache.unwritable:
        raise WriteError(cache.root, "the feature cache could not be written (the warning above says why)")
    if not ext.ok:
        raise NothingScoredError("no image could be read")


def _with_views(protocol, **given):
    """``protocol`` with the view options that were given (the others kept), checked together."""
    from pydantic import ValidationError

    from aigi.errors import describe_validation

    changes = {k: getattr(v, "value", v) for k, v in given.items() if v is not None}  # a choice: its name
    if protocol is None:  # a stack: each member scores its own views
        if changes:
            raise ConfigError(
                "a stack has no views of its own: calibrate its members with view options, then stack them"
            )
        return None
    try:
        return protocol.replace(**changes)
    except ValidationError as e:
        raise ConfigError(f"invalid protocol options: {describe_validation(e)}") from None


@app.command()
def calibrate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled validation images.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder to update in place (see --out).")],
    target_real_acc: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=1.0,
            help="Lowest threshold keeping this real-photo accuracy; default: maximise balanced accuracy.",
        ),
    ] = None,
    probability: Annotated[
        ProbabilityChoice,
        typer.Option(
            help="platt: calibrate P(generated) on these images (Platt scaling); none: keep the detector's own."
        ),
    ] = ProbabilityChoice.platt,
    band_accuracy: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Uncertainty band: the accuracy images outside it must reach here; inside it the verdict is "
            "'uncertain'. 0: no band.",
        ),
    ] = 0.95,
    views: Annotated[
        Optional[ViewsChoice],
        typer.Option(help="What to score: center crop, center + 4 corners, or a grid of native-resolution tiles."),
    ] = None,
    max_tiles: Annotated[
        Optional[int], typer.Option(min=1, help="--views grid: at most this many tiles (larger images downscaled).")
    ] = None,
    flip: Annotated[
        Optional[bool], typer.Option("--flip/--no-flip", help="Also score each view's horizontal mirror.")
    ] = None,
    combine: Annotated[
        Optional[CombineChoice],
        typer.Option(help="An image's logit from its views': mean, max or topk (mean of top k)."),
    ] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="--combine topk: how many views.")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write the calibrated model to this folder instead.")
    ] = None,
    allow_download: AllowDownloadOpt = False,
) -> None:
    """Calibrate a model on validation data and store the result in its folder (or --out): P(generated) (Platt
    scaling), the decision threshold, and the uncertainty band inside which `aigi detect` says 'uncertain'. The view
    options change what the model scores (and so its scores): they are stored with the calibration."""
    from aigi.checkpoints import save_model
    from aigi.engine.calibrate import calibrate as run

    _out_folder(out)
    m = _load(model, allow_download)
    views = dict(views=views, max_tiles=max_tiles, flip=flip, combine=combine, top_k=top_k)
    m.config.protocol = _with_views(m.config.protocol, **views)
    rec = run(m, data, target_real_acc, True, probability.value, band_accuracy or None)
    save_model(m, out or model)
    show.calibration(rec, data)
    if out is not None:
        show.say(f"wrote {out}")


@app.command()
def info(model: ModelOpt = None) -> None:
    """Print where a model folder is and its config (detector, backbone, protocol, threshold, training record); for a
    stack, also each member (its folder, detector, backbone and threshold)."""
    from aigi.checkpoints import STACK, default_model_path, read_config, views_of

    folder = (model or default_model_path()).resolve()
    cfg = read_config(folder)
    shown_cfg = {"folder": str(folder), "views": views_of(cfg), **cfg.model_dump(mode="json")}
    if cfg.detector == STACK:
        from aigi.detectors.stack import member_overview

        shown_cfg["members"] = member_overview(folder, cfg)
    sys.stdout.write(json.dumps(shown_cfg, indent=2) + "\n")


SAMPLE_PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
]


@app.command()
def samples(out_dir: Annotated[Path, typer.Argument(help="Folder to copy the sample photos into.")]) -> None:
    """Copy real sample photos that ship with scikit-image (available offline) into a folder."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError("sample photos come from scikit-image: pip install scikit-image") from None
    src = Path(skimage.data.__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    found = [name for name in SAMPLE_PHOTOS if (src / name).is_file()]
    for name in found:
        shutil.copyfile(src / name, out_dir / name)
    show.say(f"copied {len(found)} scikit-image photos to {out_dir}")


@app.command()
def serve(
    model: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--model",
            "-m",
            help="A model folder to serve; repeat for several (the first is the default). None: the shipped default.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with its own copy of the models.")] = 1,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB (413 above).")] = 32.0,
    max_images: Annotated[int, typer.Option(min=1, help="Images per request (413 above).")] = 16,
    max_megapixels: Annotated[float, typer.Option(min=0.001, help="Pixels per image, in millions.")] = 50.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting for the model (503 above).")] = 32,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Seconds a request may take (504 above).")] = 60.0,
    batch_images: Annotated[int, typer.Option(min=1, help="Images the model scores in one call.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long to wait for more requests to batch.")] = 5.0,
    log_names: Annotated[bool, typer.Option("--log-names", help="Log uploaded file names (off: none logged).")] = False,
    trim_memory: Annotated[
        bool,
        typer.Option(help="Return freed memory to the system after each batch: flat memory, ~20% less throughput."),
    ] = True,
    reasoner: Annotated[
        Optional[str],
        typer.Option(
            help="A vision-language model (HF id or local folder) answering beside the evidence of think=slow."
        ),
    ] = None,
    allow_download: AllowDownloadOpt = False,
) -> None:
    """Serve the HTTP API (POST /v1/detect, /v1/inspect; GET /v1/models, /healthz, /readyz, /docs) and the web page
    at / . Each model is loaded once at start; images are checked in memory and never written to disk."""
    try:
        import uvicorn

        from aigi.serve.app import CONFIG_VAR, Limits, create_app, load_models, load_reasoner
    except ImportError as err:
        raise ConfigError(
            f"aigi serve needs the serve extra ({err.name} is missing): pip install 'aigi[serve]'"
        ) from None
    limits = Limits(
        max_upload_mb=max_upload_mb,
        max_images=max_images,
        max_megapixels=max_megapixels,
        max_queue=max_queue,
        timeout_s=timeout_s,
        batch_images=batch_images,
        batch_wait_ms=batch_wait_ms,
        log_names=log_names,
        trim_memory=trim_memory,
    )
    log_config = {"version": 1, "disable_existing_loggers": False, "root": {"level": "INFO", "handlers": ["out"]},
                  "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "line"}},
                  "formatters": {"line": {"format": "%(asctime)s %(name)s %(message)s"}},
                  "loggers": {"uvicorn.access": {"level": "WARNING"}}}  # fmt: skip
    _check_port(host, port)
    if workers > 1:
        import os

        show.say(f"serving {workers} worker processes on http://{host}:{port} (page at /, API docs at /docs)")
        settings = {"models": [str(m) for m in model or []], "limits": limits.model_dump(), "reasoner": reasoner,
                    "allow_download": allow_download}  # fmt: skip
        os.environ[CONFIG_VAR] = json.dumps(settings)
        uvicorn.run("aigi.serve.app:from_environment", factory=True, host=host, port=port, workers=workers,
                    log_config=log_config)  # fmt: skip
        return
    models, vlm = load_models(model), load_reasoner(reasoner, allow_download)
    show.say(f"serving {', '.join(models)} on http://{host}:{port} (page at /, API docs at /docs)")
    uvicorn.run(create_app(models, limits, vlm), host=host, port=port, log_config=log_config)


@app.command()
def scan(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Folders, glob patterns, files, a .txt of paths or URIs, or a .csv/.parquet with a path column."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet parts (rerun to resume).")],
    model: ModelOpt = None,
    part_size: Annotated[
        int, typer.Option(min=1, help="Inputs per Parquet part (a resumed run keeps whole parts).")
    ] = 512,
    path_column: Annotated[str, typer.Option(help="The path column of a .csv or .parquet input.")] = "path",
    batch_size: BatchOpt = 8,
    no_provenance: Annotated[
        bool, typer.Option("--no-provenance", help="Do not read what the files declare; the detector alone decides.")
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors",
            help="Resuming: score again the finished parts that hold unreadable inputs (a network failure, a file "
            "copied late); other finished parts are kept.",
        ),
    ] = False,
    runtime: RuntimeOpt = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Score on Ray (Ray Data tasks read, model actors score).")] = False,
    ray_address: Annotated[
        Optional[str], typer.Option(help="--ray: a running cluster's address (default: start Ray on this machine).")
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="--ray: model actors (each loads the model once).")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="--ray: GPUs per model actor (0: CPU actors).")] = 0.0,
    cpus_per_actor: Annotated[
        float,
        typer.Option(min=0.01, help="--ray: CPUs per model actor; leave some for the read tasks (0.5 CPU each)."),
    ] = 1.0,
    allow_download: AllowDownloadOpt = False,
) -> None:
    """Score many images into a Parquet dataset (one row per input: path, size, sha256, prob_generated, verdict,
    basis, model_id, error), part by part in bounded memory. A killed scan resumes where it stopped when run again
    with the same command: finished parts are kept, so every input is one row, once."""
    from aigi import scan as scanning
    from aigi.onnx_runtime import RUNTIMES
    from aigi.progress import progress_bar

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if not ray and (actors != 1 or gpus_per_actor != 0 or cpus_per_actor != 1 or ray_address is not None):
        raise ConfigError(
            "--actors, --cpus-per-actor, --gpus-per-actor and --ray-address apply to a Ray scan: add --ray"
        )
    m = None if ray else _load(model, allow_download, runtime)  # on Ray each actor loads its own
    finished = []
    with progress_bar(None, "scan") as bar:

        def advance(index, kept, inputs):
            finished.append(index)
            bar.update(description=f"scan · part {index + 1}" + (" (kept)" if kept else ""), completed=inputs)

        try:
            if ray:
                from aigi import scan_ray

                ray_options = dict(address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor,
                                   cpus_per_actor=cpus_per_actor,
                                   runtime=runtime, allow_download=allow_download, retry_errors=retry_errors)  # fmt: skip
                counts = scan_ray.run(model, sources, out_dir, part_size, path_column, not no_provenance,
                                      batch_size, advance, **ray_options)  # fmt: skip
            else:
                counts = scanning.run(m, sources, out_dir, part_size, path_column, not no_provenance, batch_size,
                                      advance, retry_errors)  # fmt: skip
        except KeyboardInterrupt:
            show.say(f"interrupted: {len(finished)} finished parts are kept under {out_dir}; the same command resumes")
            raise typer.Exit(130) from None
    _scan_summary(counts, out_dir, sources)


def _scan_summary(counts: dict, out_dir: Path, sources: list[str]) -> None:
    """What `aigi scan` says at the end; exit 1 when no input at all could be read (as `aigi detect`)."""
    if counts["inputs"] == 0:
        raise DataError(f"no inputs found in {', '.join(sources)}")
    parts = counts["written"] + counts["kept"]
    kept_errors = (
        f"; {counts['kept_errors']} unreadable in the kept parts (--retry-errors scores them again)"
        if counts["kept_errors"]
        else ""
    )
    show.say(
        f"{counts['inputs']} inputs in {parts} part{'s' * (parts != 1)} under {out_dir} "
        f"({counts['written']} written now, {counts['kept']} kept from an earlier run; "
        f"{counts['errors']} unreadable in the parts written now{kept_errors})"
    )
    if counts["errors"] + counts["kept_errors"] == counts["inputs"]:
        raise typer.Exit(1)


convert_app = typer.Typer(
    cls=AigiGroup, help="Convert published checkpoints of other projects into aigi folders.", no_args_is_help=True
)
app.add_typer(convert_app, name="convert")
app.add_typer(reason_app, name="reason")
export_app = typer.Typer(cls=AigiGroup, help="Export a model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    model: ModelOpt = None,
    opset: Annotated[int, typer.Option(min=13, help="ONNX opset.")] = 17,
) -> None:
    """The model's detector as ONNX (pixels [batch, 3, H, W] -> logit, and patch_map when it has one), dynamic batch,
    stamped with the id of the model's weights and settings; removed again if its logits differ from PyTorch's by
    more than 1e-4 on random pixels. Written as DIR/model.onnx, the model runs in onnxruntime from then on (--runtime
    auto), until it is retrained or recalibrated: then export it again."""
    import torch

    from aigi.onnx_runtime import OnnxDetector, export

    m = _load(model)
    path = export(m, out, opset)
    crop = m.config.protocol.crop or m.detector.backbone.preprocess.size
    pixels = torch.randn(3, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        gap = float((OnnxDetector(path, m.detector)(pixels).logit - m.detector(pixels).logit).abs().max())
    if not gap <= 1e-4:
        path.unlink()
        raise ModelLoadError(f"the exported graph's logits differ from PyTorch's by {gap:.2e} (> 1e-4): not kept")
    show.say(f"wrote {path}: largest logit difference to PyTorch on random pixels {gap:.2e}")


@convert_app.command("mirror")
def convert_mirror(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="MIRROR's Phase 1 memory (mirror_phase1*.pth) or Phase 2 detector (checkpoint-*.pth)."),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder to write: a memory folder (Phase 1) or a model folder (Phase 2)."),
    ],
    backbone_source: Annotated[
        str,
        typer.Option(
            help="The DINO backbone the checkpoint was trained with: Hugging Face id or local folder (MIRROR's release: facebook/dinov3-vith16plus-pretrain-lvd1689m)."
        ),
    ],
    heads: Annotated[
        Optional[int], typer.Option(min=1, help="Memory attention heads. Default: the file's memory_config, else 8.")
    ] = None,
    top_k: Annotated[
        Optional[int],
        typer.Option(
            "--top-k",
            min=1,
            help="Attention entries kept per head and token. Default: the file's memory_config, else 128.",
        ),
    ] = None,
    lora_alpha: Annotated[
        Optional[float], typer.Option(help="LoRA alpha of a Phase 2 file (not stored in it). Default: 16.")
    ] = None,
) -> None:
    """Convert a checkpoint published by MIRROR (handsome-rich/MIRROR). The phase is detected from the file's contents.

    The file is read as weights only and is never fully unpickled. For Phase 2, the frozen backbone stored in the file is not copied: it is loaded from --backbone-source."""
    from aigi.backbones import backbone_spec
    from aigi.detectors.mirror_convert import convert_mirror as run

    _out_folder(out_dir)
    res = run(
        checkpoint, out_dir, backbone_spec("hf_vit", backbone_source), heads=heads, top_k=top_k, lora_alpha=lora_alpha
    )
    for text in res.notes:
        show.note(text)
    show.say(res.summary())


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
