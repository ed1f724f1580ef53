"""``aigi scan --ray [ADDRESS]``: the same scan on a Ray cluster (issue #16; the ``ray`` extra).

The inputs of the parts still to do become one Ray Dataset (order preserved). Ray tasks (``READ_CPUS`` each) read
each file (size, sha256), decode it, put it through the model's protocol and read what it declares; model actors
run the detector on the pixels in ``map_batches`` (a stack's actors decode themselves: each member has its own
protocol). Each actor loads the model once; there are ``actors`` of them, with ``cpus_per_actor`` and
``gpus_per_actor``. The driver gathers the rows part by part and writes each part
exactly as a local scan does (:mod:`aigi.scan`: same schema, same functions, atomic parts, the same resume rule), so
a local scan and a Ray scan of the same inputs give the same rows.

``address`` is a running cluster's (``ray://host:10001`` or ``auto``); none starts Ray on this machine. On a cluster
every worker must see the inputs: URIs, or paths on storage that every machine mounts at the same place (relative
paths are read from the driver's working folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from aigi import scan
from aigi.checkpoints import STACK
from aigi.errors import ConfigError

READ_CPUS = 0.5  # per read task: unlike the actors' 1 CPU, so Ray keeps reading in its own tasks (no fusion)
KEYS = ["part", "position"]  # where a row belongs: its part and its place in the part (a path may repeat)


def read_batch(batch: pd.DataFrame, model_id: str, base: str, prepare: tuple | None) -> pd.DataFrame:
    """A batch of paths -> their rows (a Ray task: reading runs in parallel, no model weights needed). Relative paths
    are read from ``base``, the driver's working folder, whatever the worker's. With ``prepare`` (the model's
    protocol, its preprocessing, whether to read provenance) each image is also decoded and put through the protocol
    here, so the actors only run the detector; without (a stack), the rows carry their bytes."""
    rows = scan.read_rows(list(batch["path"]), model_id, base)
    if prepare is not None:
        rows = [scan.prepare_row(r, *prepare) for r in rows]
    return pd.DataFrame({**{k: list(batch[k]) for k in KEYS}, **{k: [r[k] for r in rows] for k in rows[0]}})


class ScoreActor:
    """Loads the model once; scores batches of read (or prepared) rows (Ray actor)."""

    def __init__(
        self, folder: str | None, runtime: str, provenance: bool, batch_size: int, allow_download: bool
    ) -> None:
        from aigi import api

        model = api.load(folder, allow_download=allow_download or None, runtime=runtime)
        self.model, self.provenance, self.batch_size = model, provenance, batch_size

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [_plain_row(r) for r in batch.drop(columns=KEYS).to_dict("records")]
        if "pixels" in batch.columns:
            scored = scan.score_prepared_rows(self.model, rows, self.batch_size)
        else:
            scored = scan.score_rows(self.model, rows, self.provenance, self.batch_size)
        return pd.DataFrame({**{k: list(batch[k]) for k in KEYS}, **{k: [r[k] for r in scored] for k in scan.COLUMNS}})


def _plain_row(record: dict) -> dict:
    """A row as a local scan has it: pandas' missing values back to None, the size an int again."""
    row = {k: None if v is None or (isinstance(v, float) and v != v) else v for k, v in record.items()}
    if row.get("size") is not None:
        row["size"] = int(row["size"])
    return row


def run(
    folder: str | os.PathLike | None,
    sources: list[str],
    out: str | os.PathLike,
    part_size: int = 512,
    path_column: str = "path",
    provenance: bool = True,
    batch_size: int = 8,
    on_part=None,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    runtime: str = "auto",
    allow_download: bool = False,
    retry_errors: bool = False,
) -> dict:
    """As :func:`aigi.scan.run`, the scoring on Ray. ``folder`` is the model folder (None: the shipped default):
    every actor loads it itself."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'aigi[ray]'") from None
    from aigi import api
    from aigi.engine.robustness import model_id as identify

    out = Path(out)
    model = api.load(folder, allow_download=allow_download or None, runtime="torch")
    mid = identify(model)
    prepare = None if model.config.detector == STACK else (model.config.protocol, model.detector.backbone.preprocess)
    counts = scan.new_counts()
    planned = scan.plan(out, sources, part_size, path_column, mid, retry_errors, provenance)
    blocks, sizes = _plan_into_object_store(planned, counts, on_part, address)
    if not sizes:
        return counts
    _check_room(actors, cpus_per_actor)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    dataset = (
        ray.data.from_arrow_refs(blocks)
        .map_batches(
            read_batch,
            fn_kwargs={"model_id": mid, "base": os.getcwd(), "prepare": prepare and (*prepare, provenance)},
            batch_size=batch_size,
            batch_format="pandas",
            num_cpus=READ_CPUS,
        )
        .map_batches(
            ScoreActor,
            fn_constructor_args=(
                None if folder is None else str(folder),
                runtime,
                provenance,
                batch_size,
                allow_download,
            ),
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            num_cpus=cpus_per_actor,
        )
    )
    gathered: dict[int, list[dict]] = {}
    for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
        for row in batch.to_dict("records"):
            index, position = int(row.pop("part")), int(row.pop("position"))
            gathered.setdefault(index, []).append((position, _plain_row(row)))
            if len(gathered[index]) == sizes[index]:
                rows = [r for _, r in sorted(gathered.pop(index), key=lambda pr: pr[0])]
                scan.save_part(out, index, rows, counts, on_part)
    return counts


def _plan_into_object_store(planned, counts: dict, on_part, address: str | None):
    """Follow the plan (:func:`aigi.scan.plan`): finished parts are kept; the inputs of each other part go into Ray's
    object store as one Arrow block (part, position, path) as planning streams on, so the driver's memory never holds
    the list of inputs (the store spills to disk) and the workers need no access to the driver's files. Returns the
    blocks, in order, and the number of inputs of each part to score."""
    import pyarrow as pa
    import ray

    blocks, sizes = [], {}
    for index, chunk, kept, errors in planned:
        counts["inputs"] += len(chunk)
        if kept:
            scan.keep_part(index, errors, counts, on_part)
            continue
        _start_ray(address)
        sizes[index] = len(chunk)
        blocks.append(
            ray.put(pa.table({"part": [index] * len(chunk), "position": list(range(len(chunk))), "path": chunk}))
        )
    return blocks, sizes


def _start_ray(address: str | None) -> None:
    """Ray on this machine (no ``address``) or a running cluster's; a cluster that cannot be reached is one line, not
    Ray's endless reconnecting. Ray's own logs and progress bars are quietened: aigi shows its own progress."""
    import logging

    import ray

    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0].split(". Please")[0]
        raise ConfigError(
            f"--ray-address {address}: {reason} (start a cluster with `ray start --head`, or leave --ray-address out "
            "to start Ray on this machine)"
        ) from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) address that does not answer within ``timeout_s`` is refused."""
    import socket

    if not address or address in ("auto", "local") or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise ConfigError(f"--ray-address {address}: cannot connect ({e})") from None


def _check_room(actors: int, cpus_per_actor: float) -> None:
    """The actors must leave the read tasks a CPU share, or Ray waits for one forever."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    if actors * cpus_per_actor + READ_CPUS > total:
        raise ConfigError(
            f"--actors {actors} x --cpus-per-actor {cpus_per_actor:g} leaves no CPU for the read tasks on this Ray "
            f"cluster ({total:g} CPUs): use fewer actors or a smaller --cpus-per-actor"
        )
