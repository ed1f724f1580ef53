"""What the CLI prints: rich tables and one-line notes, kept apart from the commands so each command stays a call
into the library plus one printer.

Every text that can hold a file name (or anything else a file's author chose) goes through :func:`aigi.names.shown`
before it reaches the terminal, so control characters, bidi controls and non-UTF-8 bytes are shown escaped, never
acted on; and through rich's ``escape`` so that ``[brackets]`` in it are not read as markup."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aigi.names import shown

# Wide enough for the metrics table when output is piped to a file or a log.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

VERDICT_STYLE = {"generated": "bold red", "real": "bold green", "uncertain": "bold magenta", "error": "yellow"}
PROVENANCE_CAPTION = (
    "declared evidence decides when present (C2PA, watermark, generator metadata); "
    "camera EXIF is weak; no metadata proves nothing — see `aigi inspect`"
)


def cell(text: str) -> str:
    """``text`` safe to print and to put in a rich table or title: escaped as a file name, brackets not markup."""
    return escape(shown(text))


def say(text: str) -> None:
    out.print("\n".join(map(cell, text.split("\n"))), highlight=False, soft_wrap=True)


def note(text: str, prefix: str = "note: ") -> None:
    err.print(cell(prefix + text), highlight=False, soft_wrap=True)


def error_line(text: str) -> None:
    err.print(f"[bold red]error:[/] {cell(text)}", highlight=False, soft_wrap=True)


def skipped(entries: Iterable[tuple[Path, str]]) -> None:
    for p, reason in entries:
        note(f"{p}: {reason}", prefix="skipped ")


def unreadable(errors: Iterable[dict]) -> None:
    for e in errors:
        note(f"{e['path']}: {e['reason']}", prefix="could not read ")


def detections(results, title: str, provenance: bool) -> None:
    """The verdict table of `aigi detect`."""
    table = Table(title=cell(title), caption=PROVENANCE_CAPTION if provenance else None)
    table.add_column("file", overflow="fold")
    table.add_column("verdict")
    table.add_column("P(generated)", justify="right")
    table.add_column("basis", overflow="fold")
    thought = any(d.thinking for d in results)
    if thought:
        table.add_column("decided by", overflow="fold")
    for d in results:
        prob = "" if d.prob_generated is None else f"{d.prob_generated:.3f}"
        basis = d.basis if d.verdict != "error" else d.error
        row = [cell(d.path), f"[{VERDICT_STYLE[d.verdict]}]{d.verdict}[/]", prob, cell(basis or "")]
        table.add_row(*row, *([thinking_cell(d.thinking)] if thought else []))
    out.print(table)
    for d in results:
        if d.thinking and "explanation" in d.thinking:
            explanation = d.thinking["explanation"]
            say(f"{d.path}: {explanation['text']} ({explanation['source']})")
            if "reasoner" in d.thinking:
                say(f"{d.path}: {reasoner_line(d.thinking['reasoner'])}")


def reasoner_line(answer: dict) -> str:
    """A vision-language reasoner's answer in one line (or why it could not be read)."""
    if answer["status"] != "ok":
        return f"{answer['model']} gave no readable answer after {answer['attempts']} tries ({answer['error']})"
    a = answer["answer"]
    return f"{answer['model']} says {a['verdict']} (confidence {a['confidence']:.2f}): {'; '.join(a['reasons'])}"


def thinking_cell(thinking: dict | None) -> str:
    """`--think`: the path that decided and why, e.g. "slow: fast P(generated) 0.41 is inside the band"."""
    return "" if not thinking else cell(f"{thinking['path']}: {thinking['reason']}")


def calibration(record: dict, data) -> None:
    """What `aigi calibrate` chose: threshold and accuracies, probability calibration, the band (or why none)."""

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    say(
        f"threshold {record['threshold']:.4f} ({record['rule']}): real acc {f(record['real_acc'])}, "
        f"generated acc {f(record['fake_acc'])} on {data}"
    )
    say(f"probability: {record['probability']}")
    band = record.get("band")
    if band is not None:
        say(f"uncertain between {band[0]:.4f} and {band[1]:.4f} (decided accuracy >= {record['band_accuracy']:g})")
    elif record.get("band_note"):
        note(record["band_note"])


def detect_title(config, threshold: float, band) -> str:
    """The title of `aigi detect`'s table: the model, the views it scores, its threshold and its uncertainty band if
    one is used."""
    decided = f", uncertain between {band[0]:.3f} and {band[1]:.3f}" if band is not None else ""
    if config.backbone is None:  # a stack: each member scores its own views
        model = f"{config.detector} of {len(config.params.get('members', []))} members"
    else:
        model = f"{config.detector} on {config.backbone.family} ({config.protocol.describe()})"
    return f"aigi detect — {model}, threshold {threshold:.3f}{decided}"


def detections_json(
    detector: str, threshold: float, band, results, skipped_files, views: str | None = None, runtime: str | None = None
) -> None:
    """`aigi detect --json`: each verdict as :meth:`aigi.api.Detection.to_dict` gives it, the views scored, the runtime
    (onnx or torch), the threshold and the uncertainty band used (null when none), and the skipped files."""
    payload = {
        "model": detector,
        "views": views,
        "runtime": runtime,
        "threshold": threshold,
        "band": None if band is None else list(band),
        "results": [d.to_dict() for d in results],
        "skipped": skipped_json(skipped_files),
    }
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def skipped_json(skipped_files) -> list[dict]:
    return [{"path": shown(p), "reason": shown(r)} for p, r in skipped_files]


def batch_notes(results, skipped_files, n_maps: int, explain_dir) -> None:
    """What a table run of `aigi detect` says under its table: skipped files, heatmaps written, unreadable count."""
    skipped(skipped_files)
    if n_maps:
        say(f"wrote {n_maps} heatmaps to {explain_dir}")
    if n_bad := sum(d.verdict == "error" for d in results):
        note(f"{n_bad} of {len(results)} files could not be read (reasons above)", prefix="")


def metrics(title: str, rows: list[list[str]], columns: list[str] | None = None) -> None:
    """A report's metrics: one row per subset and MEAN (``columns``: the report's, e.g. with a band's coverage)."""
    from aigi.engine.metrics import COLUMNS, DISPLAY

    table = Table(title=cell(title))
    for c in ["Dataset"] + [DISPLAY.get(c, c) for c in columns or COLUMNS]:
        table.add_column(c, justify="left" if c == "Dataset" else "right")
    for row in rows:
        table.add_row(*map(cell, row))
    out.print(table)


def report(report, title: str) -> None:
    """A report's table, its unreadable files and the count of skipped ones."""
    from aigi.engine.evaluate import format_table

    rows = format_table(report)
    metrics(title, rows if len(rows) > 2 else rows[:-1], report.columns)  # one subset: its MEAN row repeats it
    unreadable(report.errors)


def evaluation(report, skipped_files, out_dir) -> None:
    """`aigi eval --data` / `--real --fake`: the table, unreadable and skipped files, and the files written."""
    from aigi.engine.evaluate import format_table

    band = "" if report.band is None else f", uncertain between {report.band[0]:.3f} and {report.band[1]:.3f}"
    metrics(f"aigi eval — {report.data} (threshold {report.threshold:.3f}{band})", format_table(report), report.columns)
    unreadable(report.errors)
    skipped(skipped_files)
    if out_dir:
        say("wrote " + ", ".join(str(p) for p in report.write(out_dir).values()))


def suites(results) -> None:
    """`aigi eval --benchmarks-root`: a table per suite and where its files went."""
    for r in (r for r in results if r.report is not None):
        rep = r.report
        report(rep, f"aigi eval — {r.name} ({r.suite.name}: {rep.data}, threshold {rep.threshold:.3f})")
        if rep.skipped:
            note(
                f"{r.name}: {len(rep.skipped)} file(s) skipped (outside label folders or not images), listed in "
                f"{r.files['json']}",
                prefix="",
            )
        say(f"wrote {r.csv} and {r.files['json'].parent}/")


def _f(v) -> str:
    return "" if v is None else f"{v:.3f}"


def robustness(rows: list[dict], perturbations, data) -> None:
    table = Table(
        title=cell(f"aigi robustness — {data} (mean AUROC over subsets; accuracies at each model's threshold)")
    )
    for c in ["perturbation", "model", "AUROC", "AP", "Real_Acc", "Fake_Acc", "unreadable"]:
        table.add_column(c, justify="left" if c in ("perturbation", "model") else "right")
    for p in perturbations:
        for r in (r for r in rows if r["perturbation"] == p.name):
            table.add_row(
                p.name,
                cell(r["model"]),
                _f(r["mean_auroc"]),
                _f(r["mean_ap"]),
                _f(r["real_acc"]),
                _f(r["fake_acc"]),
                str(r["errors"]),
            )
    out.print(table)


def provenance_json(results, skipped_files) -> None:
    payload = {
        "results": [r.to_dict() for r in results],
        "skipped": skipped_json(skipped_files),
    }
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def provenance(results) -> None:
    """The table of `aigi inspect`: one row per finding or problem."""
    table = Table(
        title="aigi inspect — what the files declare (weak = anyone can write it; no findings proves nothing)"
    )
    for col in ("file", "source", "claim", "strength", "finding"):
        table.add_column(col, overflow="fold")
    for r in results:
        rows = [(f.source, f.claim, f.strength, cell(f.summary)) for f in r.findings]
        rows = rows or ([] if r.problems else [("", "", "", "nothing declared")])
        rows += [("", "", "", f"[yellow]{cell(p)}[/]") for p in r.problems]
        for j, (src, claim, strength, text) in enumerate(rows):
            table.add_row(cell(r.path) if j == 0 else "", src, claim, strength, text)
    out.print(table)
