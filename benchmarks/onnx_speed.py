"""Issue #16's ONNX benchmark: the shipped model in PyTorch and in onnxruntime on this CPU, one and two threads.

    python benchmarks/onnx_speed.py [--images 200]

Scores ``--images`` aigi-mini ``val/`` images end to end as ``aigi detect --no-provenance`` does (decode, protocol,
forward; no feature cache), for each runtime and thread count, after a warm-up batch; reports images/s, the speed-up
of onnxruntime, and the largest difference in P(generated) between the runtimes over those images (the parity that
decides whether onnxruntime may be the default). Writes ``results/onnx/onnx.{json,md}`` and the README block.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from default_model import REPO, update_readme

from aigi import api
from aigi.data.folders import discover
from aigi.engine.inference import score_paths
from aigi.io import write_json, write_text
from aigi.onnx_runtime import with_onnx_runtime

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "onnx"
VAL = REPO.parent / "shared" / "data" / "aigi-mini" / "val"


def timed(model, paths) -> tuple[float, np.ndarray]:
    score_paths(model, paths[:8], use_cache=False, progress=False)  # warm-up
    start = time.perf_counter()
    scores = score_paths(model, paths, use_cache=False, progress=False)
    return len(paths) / (time.perf_counter() - start), scores.prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    samples = discover(VAL).samples
    paths = [s.path for s in samples[:: max(1, len(samples) // args.images)]][: args.images]
    shipped = api.load(runtime="torch")
    rows, probs = [], {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for runtime, model in (("PyTorch", shipped), ("onnxruntime", with_onnx_runtime(shipped, threads=threads))):
            speed, probs[runtime] = timed(model, paths)
            rows.append({"runtime": runtime, "threads": threads, "images_per_s": speed})
            print(rows[-1], flush=True)
    gap = float(np.nanmax(np.abs(probs["PyTorch"] - probs["onnxruntime"])))
    result = {"images": len(paths), "rows": rows, "max_prob_difference": gap}
    write_json(OUT / "onnx.json", result)
    table = markdown(result)
    write_text(OUT / "onnx.md", table + "\n")
    update_readme("onnx", table)
    print(table)


def markdown(result: dict) -> str:
    speed = {(r["runtime"], r["threads"]): r["images_per_s"] for r in result["rows"]}
    lines = ["| threads | PyTorch images/s | onnxruntime images/s | onnxruntime / PyTorch |", "|---|---|---|---|"]
    for t in (1, 2):
        a, b = speed[("PyTorch", t)], speed[("onnxruntime", t)]
        lines.append(f"| {t} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines.append("")
    lines.append(
        f"{result['images']} aigi-mini `val/` images end to end (decode, protocol, forward); the largest difference in "
        f"P(generated) between the runtimes: {result['max_prob_difference']:.1e}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
