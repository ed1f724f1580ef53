"""Evaluation reports: one row per subset plus a MEAN row, as CSV and JSON with the same numbers, per-image
scores, an ROC-curve PNG, a score-histogram PNG and a reliability-diagram PNG, written together as one set
(:func:`aigi.io.write_set`). Every row has the expected calibration error (ECE); a report made with an uncertainty
band also has each subset's coverage and accuracy on the decided images."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigi.data.folders import ImageSet
from aigi.engine.metrics import (
    DISPLAY,
    binary_metrics,
    columns_for,
    decided_metrics,
    expected_calibration_error,
    mean_row,
    reliability_bins,
)
from aigi.io import Writer, bytes_writer, json_writer, text_writer, write_bytes, write_set
from aigi.names import shown


@dataclass
class Report:
    rows: list[dict]  # {"subset": name, **metrics}; the last row is MEAN
    threshold: float
    model: str = ""
    data: str = ""
    errors: list[dict] = field(default_factory=list)  # {"path", "reason"}: files that could not be read
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: files not taken as labelled images
    extra: dict = field(default_factory=dict)
    image_set: ImageSet | None = field(default=None, repr=False)  # what was scored, for write()
    prob: np.ndarray | None = field(default=None, repr=False)  # P(generated) per sample, NaN where unreadable
    band: tuple[float, float] | None = None  # the uncertainty band (low, high) the rows' coverage was measured with

    def write(self, out_dir: str | os.PathLike, stem: str = "report") -> dict[str, Path]:
        """The report's files (see :func:`write_report`)."""
        return write_report(self, out_dir, self.image_set, self.prob, stem)

    def row(self, subset: str) -> dict:
        return next(r for r in self.rows if r["subset"] == subset)

    @property
    def mean(self) -> dict:
        return self.rows[-1]

    @property
    def columns(self) -> list[str]:
        """The metric columns of its table and CSV: the band's only when it was made with one."""
        return columns_for(self.rows)


def build_report(
    image_set: ImageSet,
    prob: np.ndarray,
    threshold: float,
    errors: dict[int, str],
    model: str = "",
    data: str = "",
    band: tuple[float, float] | None = None,
) -> Report:
    """Metrics per subset (unreadable images left out) and their MEAN; with ``band`` (low, high) also each subset's
    coverage and accuracy on the decided images (:func:`aigi.engine.metrics.decided_metrics`)."""
    rows = []
    for name, idx in image_set.subsets.items():
        idx = [i for i in idx if not math.isnan(prob[i])]
        labels = [image_set.samples[i].label for i in idx]
        rows.append({"subset": shown(name), **subset_metrics(labels, prob[idx], threshold, band)})
    rows.append({"subset": "MEAN", **mean_row(rows)})
    errs = [{"path": shown(image_set.samples[i].path), "reason": r} for i, r in sorted(errors.items())]
    skipped = [{"path": shown(p), "reason": r} for p, r in image_set.skipped]
    return Report(
        rows=rows,
        threshold=threshold,
        model=model,
        data=shown(data),
        errors=errs,
        skipped=skipped,
        image_set=image_set,
        prob=prob,
        band=None if band is None else (float(band[0]), float(band[1])),
    )


def subset_metrics(labels: list[int], prob: np.ndarray, threshold: float, band: tuple[float, float] | None) -> dict:
    """One subset's row: :func:`binary_metrics`, and with a band its coverage, decided_acc and n_uncertain."""
    metrics = binary_metrics(labels, prob, threshold)
    if band is not None:
        metrics.update(decided_metrics(labels, prob, threshold, band))
    return metrics


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def report_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Dataset"] + [DISPLAY.get(c, c) for c in report.columns])
    w.writerows(format_table(report))
    return buf.getvalue()


def report_json(report: Report) -> dict:
    def rnd(v):
        return round(v, 4) if isinstance(v, float) else v

    return {
        "model": report.model,
        "data": report.data,
        "threshold": report.threshold,
        "band": None if report.band is None else list(report.band),
        "rows": [{k: rnd(v) for k, v in r.items()} for r in report.rows],
        "errors": report.errors,
        "skipped": report.skipped,
        **report.extra,
    }


def write_report(
    report: Report, out_dir: str | os.PathLike, image_set: ImageSet, prob: np.ndarray, stem: str = "report"
) -> dict[str, Path]:
    """Write ``{stem}.csv``, ``{stem}.json``, ``{stem}_scores.csv``, ``{stem}_roc.png``, ``{stem}_hist.png`` and
    ``{stem}_reliability.png`` as one set (:func:`aigi.io.write_set`): readers see the earlier set or this one, never a mix; a write failure raises
    :class:`aigi.io.WriteError` and leaves an earlier set whole; other files in ``out_dir`` are left alone."""
    files = report_files(report, image_set, prob, stem)
    written = write_set(out_dir, {name: write for name, write in files.values()})
    return {key: written[name] for key, (name, _) in files.items()}


def report_files(report: Report, image_set: ImageSet, prob: np.ndarray, stem: str) -> dict[str, tuple[str, Writer]]:
    """What :func:`write_report` writes, each made in memory first: key -> (file name, writer)."""
    roc, hist = plot_pngs(report, image_set, prob)
    return {
        "csv": (f"{stem}.csv", text_writer(report_csv(report))),
        "json": (f"{stem}.json", json_writer(report_json(report))),
        "scores": (f"{stem}_scores.csv", text_writer(scores_csv(report, image_set, prob))),
        "roc": (f"{stem}_roc.png", bytes_writer(roc)),
        "hist": (f"{stem}_hist.png", bytes_writer(hist)),
        "reliability": (f"{stem}_reliability.png", bytes_writer(reliability_png(report, image_set, prob))),
    }


def scores_csv(report: Report, image_set: ImageSet, prob: np.ndarray) -> str:
    """One row per sample: path (as :func:`aigi.names.shown` writes it), label, P(generated) (empty where unreadable) and the reason it was unreadable."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "prob_generated", "error"])
    reasons = {e["path"]: e["reason"] for e in report.errors}
    for i, s in enumerate(image_set.samples):
        err = reasons.get(shown(s.path), "") if math.isnan(prob[i]) else ""
        w.writerow(
            [shown(s.path), "" if s.label is None else s.label, "" if math.isnan(prob[i]) else f"{prob[i]:.6f}", err]
        )
    return buf.getvalue()


def plot_pngs(report: Report, image_set: ImageSet, prob: np.ndarray) -> tuple[bytes, bytes]:
    """The ROC-curve and score-histogram PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    for name, idx in image_set.subsets.items():
        idx = [i for i in idx if not math.isnan(prob[i])]
        y = np.array([image_set.samples[i].label for i in idx])
        if len(set(y.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, prob[idx])
        auc = report.row(shown(name))["auroc"]
        ax.plot(fpr, tpr, lw=1.4, label=f"{shown(name)} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="false positive rate (real called generated)",
        ylabel="true positive rate",
        title=f"ROC: {report.model}",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    if len(ax.get_lines()) > 1:  # curves besides the diagonal
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    roc = figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    labels = np.array([s.label if s.label is not None else -1 for s in image_set.samples])
    ok = ~np.isnan(prob)
    bins = np.linspace(0, 1, 41)
    ax.hist(prob[ok & (labels == 0)], bins=bins, alpha=0.6, label="real", color="tab:blue")
    ax.hist(prob[ok & (labels == 1)], bins=bins, alpha=0.6, label="generated", color="tab:red")
    ax.axvline(report.threshold, color="k", ls="--", lw=1, label=f"threshold {report.threshold:.3f}")
    ax.set(xlabel="P(generated)", ylabel="images", title=f"Scores: {report.model}")
    ax.legend()
    fig.tight_layout()
    return roc, figure_png(fig)


def labelled_scores(image_set: ImageSet, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(generated) of every labelled image that was scored (unreadable and unlabelled ones left out)."""
    idx = [i for i, s in enumerate(image_set.samples) if s.label is not None and not math.isnan(prob[i])]
    return np.array([image_set.samples[i].label for i in idx], dtype=int), np.asarray(prob, dtype=float)[idx]


def reliability_png(report: Report, image_set: ImageSet, prob: np.ndarray) -> bytes:
    """The reliability diagram over all scored labelled images: observed fraction generated against mean predicted
    P(generated) per bin, with the diagonal of perfect calibration, image counts per bin underneath, ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = labelled_scores(image_set, prob)
    bins = [b for b in reliability_bins(y, p) if b.count]
    ece = expected_calibration_error(y, p)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), dpi=110, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfectly calibrated")
    top.plot([b.mean_prob for b in bins], [b.frac_generated for b in bins], "o-", color="tab:red", label="observed")
    ece_text = "n/a" if ece is None else f"{ece:.4f}"
    top.set(
        ylabel="fraction generated", xlim=(0, 1), ylim=(0, 1.01), title=f"Reliability: {report.model} (ECE {ece_text})"
    )
    top.legend(loc="upper left", fontsize=8)
    lower = [b.lower for b in bins]
    bottom.bar(
        lower,
        [b.count for b in bins],
        width=[b.upper - b.lower for b in bins],
        align="edge",
        color="tab:gray",
        edgecolor="white",
    )
    bottom.set(xlabel="predicted P(generated)", ylabel="images")
    fig.tight_layout()
    return figure_png(fig)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: Path) -> Path:
    return write_bytes(path, figure_png(fig))


def format_table(report: Report) -> list[list[str]]:
    """Rows of strings for a terminal table and the CSV: Dataset, then the metrics of :attr:`Report.columns`."""
    return [[r["subset"]] + [_fmt(r.get(c)) for c in report.columns] for r in report.rows]
