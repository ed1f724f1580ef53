"""Robustness to post-processing: score labelled data under each perturbation of a sweep, for one or more models.

Each (model, perturbation) gives a full report (per-subset AUROC, AP, accuracies at the model's threshold); the
sweep keeps the rows users compare: the mean AUROC over subsets, the real and generated accuracy, per-subset AUROC.
Results are written as ``robustness.json``, ``robustness.csv`` and a plot ``robustness.png`` (AUROC against each
perturbation's level, one panel per kind, one line per model); a finished (model, perturbation) is kept in the
JSON as it completes, so an interrupted sweep resumes where it stopped. At the end the three files are written as
one set (:func:`aigi.io.write_set`): a failure to write them (a full disk) is one error naming the file, leaves the
CSV and plot of the earlier run whole, and keeps every measured row in the JSON for the next run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from aigi.checkpoints import Model
from aigi.data.folders import ImageSet
from aigi.data.perturb import Perturbation
from aigi.engine.evaluate import build_report, figure_png
from aigi.engine.inference import score_paths
from aigi.io import bytes_writer, json_writer, read_json, text_writer, write_json, write_set
from aigi.progress import progress_bar

FIELDS = [
    "model",
    "perturbation",
    "kind",
    "level",
    "mean_auroc",
    "mean_ap",
    "real_acc",
    "fake_acc",
    "bal_acc",
    "errors",
]


def model_id(model: Model) -> str:
    """Identifies a model's results across runs: its config (detector, params, backbone, protocol, threshold, training
    record) and a digest of its trained weights. A retrained or re-calibrated model gets new rows, not stale ones."""
    h = hashlib.sha256(model.config.model_dump_json().encode())
    for name, t in sorted(model.detector.trainable_state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sweep_row(
    model: Model, name: str, image_set: ImageSet, perturbation: Perturbation, batch_size: int = 8, progress: bool = True
) -> dict:
    scores = score_paths(
        model, [s.path for s in image_set.samples], batch_size=batch_size, progress=progress, perturbation=perturbation
    )
    report = build_report(image_set, scores.prob, model.threshold, scores.errors, model=name)
    mean = report.rows[-1]
    return {
        "model": name,
        "perturbation": perturbation.name,
        "kind": perturbation.kind,
        "level": perturbation.level,
        "mean_auroc": mean.get("auroc"),
        "mean_ap": mean.get("ap"),
        "real_acc": mean.get("real_acc"),
        "fake_acc": mean.get("fake_acc"),
        "bal_acc": mean.get("bal_acc"),
        "errors": len(scores.errors),
        "subsets": {r["subset"]: r.get("auroc") for r in report.rows[:-1]},
    }


def data_id(image_set: ImageSet) -> str:
    """Identifies the labelled images: each file's path, label, size and modification time."""
    h = hashlib.sha256()
    for sample in image_set.samples:
        try:
            st = os.stat(sample.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(os.fsencode(f"{sample.path}\0{sample.label}\0{stamp}\n"))
    for name, idx in image_set.subsets.items():
        h.update(os.fsencode(f"{name}:{len(idx)}\n"))
    return h.hexdigest()[:16]


def _read_state(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    try:
        state = read_json(path)
        rows = state["rows"]
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"model", "perturbation", "model_id", "data_id"} <= r.keys() for r in rows
        ):
            raise ValueError("unexpected rows")
        return rows
    except (OSError, ValueError, KeyError, TypeError) as e:
        notes.append(
            f"{path}: not a sweep state this version can read ({type(e).__name__}: {e}); it is measured afresh and rewritten"
        )
        return []


def run_sweep(
    models: dict[str, Model],
    image_set: ImageSet,
    perturbations: Sequence[Perturbation],
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
    data: str = "",
    on_row: Callable[[dict], None] | None = None,
    notes: list[str] | None = None,
) -> list[dict]:
    """Every model under every perturbation. Resumes from ``out_dir/robustness.json``: a row is reused when it is of the
    same model (:func:`model_id`) on the same images (:func:`data_id`); rows of other runs are kept in the JSON.
    Returns (and writes to the CSV and the plot) this call's rows; problems with the saved state go to ``notes``."""
    out = Path(out_dir)
    state_path = out / "robustness.json"
    notes = [] if notes is None else notes
    saved = _read_state(state_path, notes)
    ids, did = {name: model_id(model) for name, model in models.items()}, data_id(image_set)
    index = {(r["model_id"], r["data_id"], r["perturbation"]): r for r in saved}
    cells = [(name, model, p) for name, model in models.items() for p in perturbations]
    todo = len({(ids[name], did, p.name) for name, _, p in cells} - index.keys())
    rows, measured = [], 0
    # One overall bar over the cells (model x perturbation), naming the one being scored; each cell's per-image bar
    # is drawn as a row under it and moves it, so its ETA advances image by image. Reused cells count as done.
    with progress_bar(
        total=len(cells), completed=len(cells) - todo, description="robustness", enabled=progress and todo > 0
    ) as bar:
        bar.share = 1.0
        for name, model, p in cells:
            key = (ids[name], did, p.name)
            if key in index:
                rows.append({**index[key], "model": name})
                continue
            bar.update(description=f"robustness · {name} · {p.name}")
            row = {
                **sweep_row(model, name, image_set, p, batch_size, progress),
                "model_id": ids[name],
                "data_id": did,
                "data": data,
            }
            measured += 1
            bar.update(completed=len(cells) - todo + measured)
            index[key] = row
            rows.append(row)
            write_json(state_path, {"rows": list(index.values())})
            if on_row is not None:
                on_row(row)
        bar.update(description="robustness")
    files = {"robustness.csv": text_writer(rows_csv(rows)), "robustness.png": bytes_writer(plot_png(rows))}
    write_set(out, {"robustness.json": json_writer({"rows": list(index.values())}), **files})
    return rows


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FIELDS)
    for r in rows:
        w.writerow(
            [
                "" if r.get(f) is None else (f"{r[f]:.4f}" if isinstance(r[f], float) and f != "level" else r[f])
                for f in FIELDS
            ]
        )
    return buf.getvalue()


def plot_png(rows: list[dict], metric: str = "mean_auroc") -> bytes:
    """AUROC (or ``metric``) against each perturbation's level: one panel per kind, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("jpeg", "blur", "noise", "resize", "chain") if any(r["kind"] == k for r in rows)] or ["none"]
    titles = {
        "jpeg": "JPEG quality",
        "blur": "Gaussian blur sigma (px)",
        "noise": "Gaussian noise sigma",
        "resize": "rescale factor",
        "chain": "real-world chain",
        "none": "clean",
    }
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), dpi=110, sharey=True, squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, kind in zip(axes[0], kinds):
        if kind == "chain":
            _chain_panel(ax, rows, models, metric)
        else:
            _level_panel(ax, rows, models, metric, kind)
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.set(xlabel=titles[kind], title=titles[kind])
    axes[0][0].set_ylabel({"mean_auroc": "mean AUROC over subsets"}.get(metric, metric.replace("_", " ")))
    axes[0][-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return figure_png(fig)


def _clean_value(rows: list[dict], model: str, metric: str) -> float | None:
    clean = [r for r in rows if r["model"] == model and r["kind"] == "none"]
    return clean[0].get(metric) if clean else None


def _level_panel(ax, rows: list[dict], models: list[str], metric: str, kind: str) -> None:
    """One line per model against the level; the clean image drawn at level 0 (resize 1, JPEG 105 shown 'clean')."""
    for m in models:
        pts = [r for r in rows if r["model"] == m and r["kind"] == kind and r.get(metric) is not None]
        xs, ys = [r["level"] for r in pts], [r[metric] for r in pts]
        clean = _clean_value(rows, m, metric)
        if clean is not None and kind != "none":
            xs, ys = [{"jpeg": 105.0, "resize": 1.0}.get(kind, 0.0), *xs], [clean, *ys]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", lw=1.4, label=m)
    if kind == "jpeg":
        ticks = sorted({r["level"] for r in rows if r["kind"] == "jpeg"} | {105.0}, reverse=True)
        ax.set_xticks(ticks, ["clean" if t == 105 else f"{t:g}" for t in ticks], fontsize=8)
        ax.invert_xaxis()


def _chain_panel(ax, rows: list[dict], models: list[str], metric: str) -> None:
    """One marker per model at each chain (and at the clean image), the chains side by side."""
    chains = list(dict.fromkeys(r["perturbation"] for r in rows if r["kind"] == "chain"))
    labels = ["clean", *(c.split(":")[1] for c in chains)]
    for m in models:
        by_name = {r["perturbation"]: r.get(metric) for r in rows if r["model"] == m}
        ys = [_clean_value(rows, m, metric), *(by_name.get(c) for c in chains)]
        ax.plot(range(len(ys)), [float("nan") if y is None else y for y in ys], marker="o", ls="none", label=m)
    ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30)
