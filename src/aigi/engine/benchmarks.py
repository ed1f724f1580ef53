"""MIRROR's benchmark suites: named folders under one benchmarks root, each a list of subset folders (or the whole
folder, reported as ``ALL``). Every image is scored once; each suite gets a MIRROR-style CSV
(``{name}_{YYYYmmdd_HHMMSS}.csv``) and the usual report files in ``{name}_{timestamp}/``.

Names are matched ignoring case, over canonical names and aliases. A name not in the table that is a folder under
the root is evaluated as one whole-folder ``ALL`` suite, as MIRROR does. Folder names are matched exactly first,
then ignoring case. Labels inside a subset come from :func:`aigi.data.folders.discover`. Missing subsets and
suites are skipped with a note, never an error.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aigi.checkpoints import Model
from aigi.data.folders import DataError, ImageSet, discover
from aigi.engine.evaluate import Report, build_report, report_files
from aigi.engine.inference import score_paths
from aigi.io import text_writer, write_set
from aigi.registry import UnknownNameError


@dataclass(frozen=True)
class Suite:
    name: str
    folder: str  # relative to the benchmarks root
    subsets: tuple[str, ...] | None  # None: the whole folder, reported as "ALL"
    aliases: tuple[str, ...] = ()


_AIGC = (
    "sd_xl progan stylegan biggan cyclegan stargan gaugan stylegan2 whichfaceisreal ADM Glide Midjourney "
    "stable_diffusion_v_1_4 stable_diffusion_v_1_5 VQDM wukong DALLE2"
)
_DRCT = (
    "real SDXL-DR LDM SDv1.4 SDv1.5 SDv2 SDXL SDXL-Refiner SD-Turbo SDXL-Turbo LCM-SDv1.5 LCM-SDXL "
    "SDv1-Ctrl SDv2-Ctrl SDXL-Ctrl SDv1-DR SDv2-DR"
)
_REALCHAIN = "flux hunyuan3.0 nanobanana qwenimage sd3.5 seedream_i2i seedream4"
_HUMAN = "SD-3-Medium SD-3.5-Large FLUX.1-dev PixArt-Sigma Midjourney-v6 DALL-E-3"


def _s(name: str, folder: str, subsets: str | None, *aliases: str) -> Suite:
    return Suite(name, folder, tuple(subsets.split()) if subsets else None, aliases)


SUITES: list[Suite] = [
    _s("AIGCDetectBenchmark", "AIGC_bm", _AIGC, "AIGCDetect"),
    _s(
        "GenImage", "Genimage", "Midjourney stable_diffusion_v_1_4 stable_diffusion_v_1_5 ADM Glide wukong VQDM biggan2"
    ),
    _s(
        "UnivFakeDetect",
        "UniversalFakeDetect",
        "deepfake seeingdark san ldm_200_cfg ldm_200 ldm_100 imle guided "
        "glide_50_27 glide_100_27 glide_100_10 dalle crn",
        "UnivFD",
    ),
    _s(
        "ojha",
        "ojha",
        "deepfake san crn imle guided ldm_100 ldm_200 ldm_200_cfg glide_50_27 glide_100_10 glide_100_27 dalle",
    ),
    _s(
        "Synthbuster",
        "synthbuster",
        "dalle2 dalle3 firefly glide midjourney-v5 stable-diffusion-1-3 "
        "stable-diffusion-1-4 stable-diffusion-2 stable-diffusion-xl",
    ),
    _s("EvalGEN", "GenEval-JPEG", "OmniGen NOVA Infinity GoT Flux"),
    _s("DRCT-2M", "drct", _DRCT, "DRCT"),
    _s("Chameleon", "Chameleon/test", None),
    _s("SynthWildx", "synthwildx", "dalle3 firefly midjourney_v5"),
    _s("WildRF", "WildRF/test", "facebook reddit twitter"),
    _s("AIGIBench", "AIGIBench", "SocialRF CommunityAI"),
    _s("CO-SPY", "CO-SPY-In-the-Wild", "midjourney lexica flux dalle3 civitai"),
    _s("RR-Dataset", "RRDataset", None, "RRDataset"),
    _s("BFree-Online", "B-Free", None, "B-Free"),
    _s("AIGI-Now", "AIGI-Now", None),
    _s("realchain_all", "realchain_all", _REALCHAIN),
    _s("realchain_CD_all", "realchain_CD_all", _REALCHAIN),
    _s("AIGI-Human-orig", "human_aigi_orig", _HUMAN),
    _s("AIGI-Human-hard", "aigi_human", _HUMAN),
]
_BY_KEY = {n.lower(): s for s in SUITES for n in (s.name, *s.aliases)}

# MIRROR's CSV columns -> metric keys in aigi.engine.metrics
CSV_COLUMNS = {
    "Acc": "acc",
    "Real_Acc": "real_acc",
    "Fake_Acc": "fake_acc",
    "Bal_Acc": "bal_acc",
    "AUC": "auroc",
    "AP": "ap",
}


def locate(base: Path, rel: str) -> Path | None:
    """``base/rel`` if it is a folder, else the one folder matching it ignoring case, else None."""
    p = base
    for part in Path(rel).parts:
        q = p / part
        if not q.is_dir():
            try:
                found = [c for c in p.iterdir() if c.is_dir() and c.name.lower() == part.lower()]
            except OSError:
                return None
            if len(found) != 1:
                return None
            q = found[0]
        p = q
    return p


def find_suite(name: str, root: str | os.PathLike) -> Suite:
    """The suite called ``name`` (or an alias), ignoring case; a folder ``root/name`` otherwise (whole-folder suite)."""
    suite = _BY_KEY.get(name.lower())
    if suite:
        return suite
    if name.strip() and locate(Path(root), name) is not None:
        return Suite(name, name, None)
    close = difflib.get_close_matches(name.lower(), _BY_KEY, n=1)
    hint = f"; did you mean {_BY_KEY[close[0]].name!r}?" if close else ""
    known = ", ".join(s.name + (f" ({', '.join(s.aliases)})" if s.aliases else "") for s in SUITES)
    raise UnknownNameError(f"unknown benchmark suite {name!r}{hint} (known: {known}; nor is it a folder under {root})")


@dataclass
class SuiteResult:
    name: str  # as typed: names the output files
    suite: Suite
    image_set: ImageSet | None  # None: nothing found, suite skipped
    notes: list[str] = field(default_factory=list)
    report: Report | None = None
    csv: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.image_set is None


def load_suite(root: Path, name: str, suite: Suite) -> SuiteResult:
    """Discover a suite's subsets; missing or empty ones become notes."""
    base = locate(root, suite.folder)
    if base is None:
        return SuiteResult(name, suite, None, [f"{name}: no folder {root / suite.folder}; suite skipped"])
    parts = [("ALL", base)] if suite.subsets is None else [(s, locate(base, s)) for s in suite.subsets]
    samples, subsets, skipped, notes = [], {}, [], []
    for sub, folder in parts:
        if folder is None:
            notes.append(f"{name}: subset {sub} not found ({base / sub}); skipped")
            continue
        try:
            found = discover(folder)
        except (DataError, OSError) as e:
            notes.append(f"{name}: subset {sub} skipped: {e}")
            continue
        subsets[sub] = list(range(len(samples), len(samples) + len(found.samples)))
        samples += found.samples
        skipped += found.skipped
    if not subsets:
        notes.append(f"{name}: no subset with labelled images under {base}; suite skipped")
        return SuiteResult(name, suite, None, notes)
    return SuiteResult(name, suite, ImageSet(samples=samples, subsets=subsets, root=base, skipped=skipped), notes)


def split_names(values: Sequence[str]) -> list[str]:
    """``["A,B", "C D"]`` -> ``["A", "B", "C", "D"]``, first occurrence kept."""
    names = [n for v in values for n in v.replace(",", " ").split()]
    return list(dict.fromkeys(names))


def plan_suites(root: str | os.PathLike, names: Sequence[str]) -> list[SuiteResult]:
    """Resolve every name (unknown names raise before anything is scored), then discover each suite."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: benchmarks root is not a folder")
    names = split_names(names)
    if not names:
        raise DataError("no benchmark suite named")
    resolved = [(n, find_suite(n, root)) for n in names]
    return [load_suite(root, n, s) for n, s in resolved]


def suite_csv(report: Report) -> str:
    """MIRROR's CSV: one row per subset, then MEAN when there is more than one subset; raw fractions."""
    rows = report.rows[:-1]
    if len(rows) > 1:
        rows.append(report.mean)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Dataset", *CSV_COLUMNS])
    for r in rows:
        w.writerow([r["subset"], *(r[k] for k in CSV_COLUMNS.values())])  # None (one class) -> empty cell
    return buf.getvalue()


def run_suites(
    model: Model,
    results: list[SuiteResult],
    out_dir: str | os.PathLike,
    threshold: float | None = None,
    batch_size: int = 8,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str = "",
    timestamp: str | None = None,
) -> str:
    """Score every distinct image once, then write each suite's CSV and report folder. Returns the timestamp."""
    stamp = timestamp or datetime.now().strftime("%Y%m%d_%H%M%S")
    t, band = (model.threshold, model.config.band) if threshold is None else (threshold, None)
    live = [r for r in results if r.image_set is not None]
    paths = list(dict.fromkeys(str(s.path) for r in live for s in r.image_set.samples))
    if not paths:
        return stamp
    scores = score_paths(
        model, paths, use_cache=use_cache, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    pos = {p: i for i, p in enumerate(paths)}
    out = Path(out_dir)
    for r in live:
        idx = [pos[str(s.path)] for s in r.image_set.samples]
        prob = scores.prob[idx]
        errors = {j: scores.errors[i] for j, i in enumerate(idx) if i in scores.errors}
        r.report = build_report(r.image_set, prob, t, errors, model=model_name, data=str(r.image_set.root), band=band)
        r.report.extra = {"suite": r.suite.name, "name": r.name, "timestamp": stamp, "notes": r.notes}
        write_suite(r, out, f"{r.name.replace('/', '_')}_{stamp}")  # the name as typed (may hold a slash)
    return stamp


def write_suite(result: SuiteResult, out: Path, stem: str) -> None:
    """``{stem}.csv`` and the report files in ``{stem}/``, as one set (:func:`aigi.io.write_set`): a failure leaves
    neither, and other files in ``out`` (other suites, earlier runs) are left alone."""
    report = result.report
    files = report_files(report, result.image_set, report.prob, "report")
    written = write_set(
        out, {f"{stem}.csv": text_writer(suite_csv(report)), **{f"{stem}/{n}": w for n, w in files.values()}}
    )
    result.csv = written[f"{stem}.csv"]
    result.files = {key: written[f"{stem}/{name}"] for key, (name, _) in files.items()}


def evaluate_suites(
    model: Model,
    root: str | os.PathLike,
    names: Sequence[str],
    out_dir: str | os.PathLike = "results",
    threshold: float | None = None,
    batch_size: int = 8,
    use_cache: bool = True,
    **kw,
) -> list[SuiteResult]:
    """:func:`plan_suites` then :func:`run_suites`."""
    results = plan_suites(root, names)
    run_suites(model, results, out_dir, threshold, batch_size, use_cache, **kw)
    return results
