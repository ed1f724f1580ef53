"""``aigi scan``: score many images into a Parquet dataset, resumably and in bounded memory (issue #16).

    from aigi import api, scan
    scan.run(api.load(), ["photos/", "more/*.jpg", "list.txt", "index.parquet"], "out/")

Inputs, streamed in a fixed order: folders (walked in sorted order, image extensions only, hidden entries skipped),
glob patterns (expanded and sorted), a ``.txt`` file of paths or URIs (one per line), a ``.csv`` or ``.parquet`` file
with a path column (``path_column``), or single files. A URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``) is
read through ``pyarrow.fs``.

The output folder holds ``part-NNNNNN.parquet`` files, one per ``part_size`` consecutive inputs, each written
atomically (a temporary file renamed into place), and ``_scan.json`` (the model's id, the inputs, the part size).
A scan killed at any point is rerun with the same command: finished parts are kept and not rescored, the others
are scored, so every input is one row, once. One row per input: ``path``, ``size`` (bytes), ``sha256``,
``prob_generated``, ``verdict``, ``basis``, ``model_id``, ``error`` (null when the image was scored). An input that
cannot be read is a row with its error. Memory holds one part at a time whatever the number of inputs (globs
excepted: their matches are listed in memory; use a folder or a list file for very large sets).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from aigi import api
from aigi.checkpoints import Model
from aigi.data.decode import ImageDecodeError, as_input, is_image_path, read_bytes
from aigi.errors import ConfigError
from aigi.io import atomic_write, read_json, write_json

STATE = "_scan.json"
COLUMNS = ("path", "size", "sha256", "prob_generated", "verdict", "basis", "model_id", "error")
URI_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "file://", "abfs://")
GLOB_CHARS = set("*?[")


def iter_inputs(sources: Iterable[str], path_column: str = "path") -> Iterator[str]:
    """Every input path or URI, in a fixed order, one at a time."""
    for source in map(str, sources):
        p = Path(source)
        if source.startswith(URI_SCHEMES) or (p.is_file() and not _is_list(p)):
            yield source
        elif p.is_dir():
            yield from _walk_sorted(p)
        elif GLOB_CHARS & set(source):
            yield from sorted(glob.glob(source, recursive=True))
        elif p.suffix.lower() == ".txt" and p.is_file():
            yield from _lines(p)
        elif p.suffix.lower() in (".csv", ".parquet") and p.is_file():
            yield from _column(p, path_column)
        else:
            raise ConfigError(f"{source}: no such file, folder or pattern")


def _is_list(p: Path) -> bool:
    return p.suffix.lower() in (".txt", ".csv", ".parquet")


def _walk_sorted(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(name):
                yield os.path.join(dirpath, name)


def _lines(path: Path) -> Iterator[str]:
    """One path or URI per line, surrounding spaces trimmed; blank lines and ``#`` comment lines skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                yield line.strip()


def _column(path: Path, column: str) -> Iterator[str]:
    """The path column of a CSV or Parquet file, read in record batches (never whole)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        reader = pq.ParquetFile(path)
        if column not in reader.schema_arrow.names:
            raise ConfigError(f"{path}: no column {column!r} (columns: {', '.join(reader.schema_arrow.names)})")
        batches = reader.iter_batches(columns=[column], batch_size=4096)
    else:
        batches = pacsv.open_csv(path)
        if column not in batches.schema.names:
            raise ConfigError(f"{path}: no column {column!r} (columns: {', '.join(batches.schema.names)})")
    for batch in batches:
        for value in batch.column(batch.schema.get_field_index(column)).to_pylist():
            if value:
                yield str(value)


def read_input(source: str, base: str | None = None) -> bytes:
    """The bytes of a path or URI (a relative path taken from ``base`` when given: the driver's folder, for Ray
    workers elsewhere); :class:`ImageDecodeError` saying why when they cannot be read."""
    if not source.startswith(URI_SCHEMES):
        return read_bytes(Path(base or "") / source)
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(source)
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except (OSError, ValueError) as e:  # pyarrow's errors for missing files, unknown schemes, no credentials
        raise ImageDecodeError(source, f"cannot read ({e})") from None


def read_rows(sources: list[str], model_id: str, base: str | None = None) -> list[dict]:
    """One row per source with its bytes under ``data`` (None when unreadable: the row then has its error)."""
    rows = []
    for source in sources:
        row = dict.fromkeys(COLUMNS)
        row.update(path=source, model_id=model_id, data=None)
        try:
            data = read_input(source, base)
        except ImageDecodeError as e:
            row.update(verdict="error", basis=f"could not be read: {e.reason}", error=e.reason)
        else:
            row.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)
        rows.append(row)
    return rows


def score_rows(model: Model, rows: list[dict], provenance: bool, batch_size: int) -> list[dict]:
    """The rows of :func:`read_rows` scored in memory (their bytes dropped): the output rows."""
    readable = [i for i, r in enumerate(rows) if r["data"] is not None]
    items = [(rows[i]["path"], rows[i]["data"]) for i in readable]
    found = api.detect(model, items, provenance=provenance, use_cache=False, batch_size=batch_size)
    return _with_detections(rows, readable, found)


def prepare_row(row: dict, protocol, pre, provenance: bool) -> dict:
    """A row of :func:`read_rows` made ready for :func:`score_prepared_rows` without the model's weights (a Ray read
    task): its bytes replaced by its image through the model's protocol (``pixels``, or ``prepare_error``) and what
    the file declares (``provenance``, None when not read)."""
    from aigi.engine.features import prepare_image

    row = dict(row)
    data = row.pop("data")
    row.update(pixels=None, prepare_error=None, provenance=None)
    if data is not None:
        item = as_input((row["path"], data))
        prepared = prepare_image(item, protocol, pre)
        row["pixels"] = prepared["pixels"].numpy() if "pixels" in prepared else None
        row["prepare_error"] = prepared.get("error")
        row["provenance"] = api.provenance_of(item) if provenance else None
    return row


def score_prepared_rows(model: Model, rows: list[dict], batch_size: int) -> list[dict]:
    """The rows of :func:`prepare_row` scored (the model only runs the detector): the rows :func:`score_rows` gives."""
    readable = [i for i, r in enumerate(rows) if r["size"] is not None]
    prepared = [
        {"error": rows[i]["prepare_error"]} if rows[i]["pixels"] is None else {"pixels": rows[i]["pixels"]}
        for i in readable
    ]
    names = [rows[i]["path"] for i in readable]
    found = api.detect_prepared(model, names, prepared, [rows[i]["provenance"] for i in readable], batch_size)
    return _with_detections(rows, readable, found)


def _with_detections(rows: list[dict], readable: list[int], found) -> list[dict]:
    for i, d in zip(readable, found):
        rows[i].update(prob_generated=d.prob_generated, verdict=d.verdict, basis=d.basis, error=d.error)
    return [{k: r[k] for k in COLUMNS} for r in rows]


def score_part(model: Model, sources: list[str], model_id: str, provenance: bool, batch_size: int) -> list[dict]:
    """One row per source: read once (size, sha256), scored in memory; unreadable ones keep their error."""
    return score_rows(model, read_rows(sources, model_id), provenance, batch_size)


def part_path(out: Path, index: int) -> Path:
    return out / f"part-{index:06d}.parquet"


def write_part(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema())
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("sha256", pa.string()),
            ("prob_generated", pa.float64()),
            ("verdict", pa.string()),
            ("basis", pa.string()),
            ("model_id", pa.string()),
            ("error", pa.string()),
        ]
    )


CHECKED = (  # what a resumed scan must share with the run that began it
    ("model_id", "another model"),
    ("sources", "other inputs"),
    ("part_size", "another --part-size"),
    ("provenance", "another provenance setting (--no-provenance)"),
    ("path_column", "another --path-column"),
)


def check_state(out: Path, state: dict) -> dict:
    """Refuse to mix runs: a folder with parts scanned with another model, other inputs, part size, provenance
    setting or path column (said with both values). A folder without parts (an attempt that failed before its first
    part) starts afresh. Returns the state in force."""
    saved_path = out / STATE
    has_parts = any(out.glob("part-*.parquet"))
    if not saved_path.is_file() or not has_parts:
        if has_parts:
            raise ConfigError(f"--out {out}: holds parts but no {STATE}; not a scan folder aigi can resume")
        write_json(saved_path, state)
        return state
    saved = read_json(saved_path)
    for key, what in CHECKED:
        if key in saved and saved[key] != state[key]:
            raise ConfigError(
                f"--out {out} was scanned with {what}: {key} was {saved[key]!r}, now {state[key]!r}; "
                "resume with the same command, or give a new --out"
            )
    return saved


def _scan_state(sources: list[str], part_size: int, path_column: str, model_id: str, provenance: bool) -> dict:
    """What ``_scan.json`` records: local sources as absolute paths (the same list given from another folder is the
    same list), and the working folder that relative paths inside lists are read from."""
    absolute = [s if str(s).startswith(URI_SCHEMES) else os.path.abspath(s) for s in map(str, sources)]
    return {
        "model_id": model_id,
        "sources": absolute,
        "part_size": part_size,
        "provenance": provenance,
        "path_column": path_column,
        "cwd": os.getcwd(),
    }


def _check_folder(state: dict, chunk: list[str], path: Path) -> None:
    """Relative paths listed in a kept part were read from the folder the scan began in: from elsewhere they may
    name other files."""
    began = state.get("cwd")
    if began and began != os.getcwd() and any(not p.startswith(URI_SCHEMES) and not os.path.isabs(p) for p in chunk):
        raise ConfigError(
            f"{path}: lists relative paths, read from {began} when the scan began; run the command from there"
        )


def _errors_in_part(path: Path, chunk: list[str]) -> int:
    """A part kept from an earlier run must hold exactly this chunk's inputs (they could have changed since); the
    number of its rows that could not be read."""
    import pyarrow.parquet as pq

    try:
        kept = pq.read_table(path, columns=["path", "error"])
    except Exception as e:  # noqa: BLE001 - a damaged part: say which and why
        raise ConfigError(f"{path}: unreadable part ({e}); delete it and run again to rescore it") from None
    listed = kept.column("path").to_pylist()
    if listed != chunk:
        was, now = next(((a, b) for a, b in zip(listed, chunk) if a != b), (len(listed), len(chunk)))
        raise ConfigError(
            f"{path}: holds other inputs than this run lists there (first difference: {was!r}, now {now!r}; files "
            "added or removed, or the inputs spelled differently?): give a new --out"
        )
    return len(kept) - kept.column("error").null_count


def chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def plan(
    out: Path,
    sources: list[str],
    part_size: int,
    path_column: str,
    model_id: str,
    retry_errors: bool = False,
    provenance: bool = True,
) -> Iterator[tuple]:
    """``(index, inputs, kept, errors)`` per part, in order: ``kept`` when an earlier run finished it (checked to
    hold exactly these inputs), unless ``retry_errors`` and some of its inputs could not be read then; ``errors``:
    the unreadable inputs in a kept part. Refuses a folder of another run first."""
    for source in map(str, sources):
        _check_source(source)
    state = check_state(out, _scan_state(sources, part_size, path_column, model_id, provenance))
    for index, chunk in enumerate(chunks(iter_inputs(sources, path_column), part_size)):
        path = part_path(out, index)
        errors = _errors_in_part(path, chunk) if path.is_file() else 0
        kept = path.is_file() and not (errors and retry_errors)
        if kept:
            _check_folder(state, chunk, path)
        yield index, chunk, kept, errors if kept else 0


def _check_source(source: str) -> None:
    """Every source exists (or is a URI or a pattern) before anything is written."""
    if not (source.startswith(URI_SCHEMES) or Path(source).exists() or GLOB_CHARS & set(source)):
        raise ConfigError(f"{source}: no such file, folder or pattern")


def run(
    model: Model,
    sources: list[str],
    out: str | os.PathLike,
    part_size: int = 512,
    path_column: str = "path",
    provenance: bool = True,
    batch_size: int = 8,
    on_part=None,
    retry_errors: bool = False,
) -> dict:
    """Scan ``sources`` into ``out`` on this machine; returns counts (inputs, parts written now, parts kept from an
    earlier run, errors in the parts written now). ``on_part(index, kept, inputs_so_far)`` is told about each part.
    ``retry_errors``: a kept part with unreadable inputs is scored again (a network failure, a file copied late)."""
    from aigi.engine.robustness import model_id as identify

    out, mid = Path(out), identify(model)
    counts = new_counts()
    for index, chunk, kept, errors in plan(out, sources, part_size, path_column, mid, retry_errors, provenance):
        counts["inputs"] += len(chunk)
        if kept:
            keep_part(index, errors, counts, on_part)
        else:
            save_part(out, index, score_part(model, chunk, mid, provenance, batch_size), counts, on_part)
    return counts


def new_counts() -> dict:
    """A scan's counts: inputs, parts written now, parts kept, unreadable inputs in the parts written now and kept."""
    return {"inputs": 0, "written": 0, "kept": 0, "errors": 0, "kept_errors": 0}


def keep_part(index: int, errors: int, counts: dict, on_part) -> None:
    counts["kept"] += 1
    counts["kept_errors"] += errors
    if on_part:
        on_part(index, True, counts["inputs"])


def save_part(out: Path, index: int, rows: list[dict], counts: dict, on_part) -> None:
    """Write a finished part and count it (and its errors)."""
    write_part(part_path(out, index), rows)
    counts["written"] += 1
    counts["errors"] += sum(r["error"] is not None for r in rows)
    if on_part:
        on_part(index, False, counts["inputs"])
