"""Issue #11's torture corpus (tests/hostile_corpus.py) through `aigi detect`, `aigi inspect` and `aigi eval`.

    python benchmarks/hostile.py [--work FOLDER] [--no-per-file]

Builds the corpus (a few MB, in a temporary folder unless --work names one, with an empty feature cache there), runs
each command on all of it at once (as tests/test_hostile_corpus.py does, under the same audit-hook guard: no program
run, no network, no file outside the corpus read), then each command on each input alone (--no-cache: the time of the real work) for the
longest time per file. Writes ``results/hostile.json`` and ``results/hostile.md``: per command the inputs tried,
how many were handled cleanly (a verdict or the expected per-file reason, exit code 0, no traceback, names
escaped), the peak RSS of the process and its growth over the command, the longest time per file; then every
input not handled cleanly, with why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostile_corpus import (  # noqa: E402
    REAL,
    build_corpus,
    guard_for,
    invoke,
    problems,
    run_corpus,
    warm_up,
)

from aigi.io import write_json, write_text  # noqa: E402
from aigi.names import shown  # noqa: E402

OUT = HERE / "results"
PER_FILE = {"detect --json": ["detect", "--json", "--no-cache"], "inspect --json": ["inspect", "--json"]}


def eval_layout(folder: Path, item, control: Path, n: int) -> Path:
    """A labelled folder holding ``item`` (linked) and one clean image of the other label, for `aigi eval`."""
    root = folder.parent / "per_file" / str(n)
    mine, other = ("0_real", "1_fake") if item.text.startswith(REAL) else ("1_fake", "0_real")
    for sub in (mine, other):
        (root / sub).mkdir(parents=True)
    (root / mine / item.path(folder).name).symlink_to(item.path(folder))
    shutil.copy(control, root / other / "control.png")
    return root


def per_file_seconds(folder: Path, items) -> dict[str, dict[str, float]]:
    """Seconds each command took on each input alone (folders, like a link cycle, are only met by a walk)."""
    seconds: dict[str, dict[str, float]] = {c: {} for c in [*PER_FILE, "eval"]}
    control = folder / REAL / "plain.png"
    with guard_for(folder, items):
        for n, item in enumerate(items):
            path = item.path(folder)
            if path.is_dir():
                continue
            for command, args in PER_FILE.items():
                seconds[command][shown(item.text)] = invoke(command, [*args, str(path)], folder).seconds
            if not item.named:
                data = eval_layout(folder, item, control, n)
                args = ["eval", "--no-cache", "--data", str(data), "--out", str(data.parent / f"report{n}")]
                seconds["eval"][shown(item.text)] = invoke("eval (one file)", args, folder).seconds
    return seconds


def summary(folder: Path, items, runs, found: dict, seconds: dict) -> list[dict]:
    rows = []
    for run in runs:
        tried = [i for i in items if not (run.command == "eval" and i.named)]
        failed_run = run.exit_code != 0 or (run.exception is not None and not isinstance(run.exception, SystemExit))
        bad = {
            shown(i.text) for i in tried if any(p.startswith(run.command + ":") for p in found.get(shown(i.text), []))
        }
        times = seconds.get(run.command, {})
        longest = max(times, key=times.get) if times else None
        rows.append(
            {
                "command": run.command,
                "inputs_tried": len(tried),
                "handled_cleanly": 0 if failed_run else len(tried) - len(bad),
                "run_problems": [p for p in found.get("*", []) if p.startswith(run.command + ":")],
                "peak_rss_mib": round(run.peak_kib / 1024),
                "peak_growth_mib": round(run.peak_growth_kib / 1024),
                "seconds_all": round(run.seconds, 2),
                "longest_per_file_s": round(times[longest], 2) if longest else None,
                "longest_file": longest,
            }
        )
    return rows


def table(rows: list[dict], found: dict) -> str:
    """The results table, then the inputs not handled cleanly (or that there were none)."""
    lines = [
        "| command | inputs tried | handled cleanly | peak RSS (MiB) | growth (MiB) | all at once (s) | longest per file (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        longest = "" if r["longest_per_file_s"] is None else f"{r['longest_per_file_s']:.2f} ({r['longest_file']})"
        lines.append(
            f"| {r['command']} | {r['inputs_tried']} | {r['handled_cleanly']} | {r['peak_rss_mib']} |"
            f" {r['peak_growth_mib']} | {r['seconds_all']:.1f} | {longest} |"
        )
    missed = [f"- `{name}`: {shown(p)}" for name, ps in found.items() for p in ps]
    return "\n".join(lines + [""] + (["Not handled cleanly:", ""] + missed if missed else ["100% handled cleanly."]))


def markdown(rows: list[dict], found: dict, n_items: int) -> str:
    n_eval = next(r["inputs_tried"] for r in rows if r["command"] == "eval")
    lines = [
        "# Torture corpus (issue #11): `python benchmarks/hostile.py`",
        "",
        f"{n_items} inputs built by `tests/hostile_corpus.py`; eval takes the {n_eval} met by a walk"
        " (not those named on the command line). Handled cleanly: a verdict or the expected per-file reason, with"
        " the name escaped; a command that crashed or exited non-zero handled none. Peak RSS: this process's"
        " high-water mark during the command (growth: over its size at the start). Longest time per file: each input"
        " alone, without the feature cache.",
        "",
        table(rows, found),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="Folder to build the corpus in (default: a temporary folder).")
    ap.add_argument("--no-per-file", action="store_true", help="Skip the per-file timing runs.")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="aigi-hostile-"))
    folder = work / "corpus"
    os.environ["AIGI_CACHE_DIR"] = str(work / "cache")  # an empty cache: every input decoded, as the first run sees it
    items = build_corpus(folder)
    warm_up()
    start = time.perf_counter()
    runs, guard = run_corpus(folder, items)
    found = problems(folder, items, runs, guard)
    seconds = {} if args.no_per_file else per_file_seconds(folder, items)
    rows = summary(folder, items, runs, found, seconds)
    payload = {"inputs": len(items), "seconds": round(time.perf_counter() - start, 1), "commands": rows}
    write_json(OUT / "hostile.json", {**payload, "not_handled_cleanly": found})
    write_text(OUT / "hostile.md", markdown(rows, found, len(items)))
    print(markdown(rows, found, len(items)))
    from default_model import update_readme

    update_readme("hostile", table(rows, found))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
