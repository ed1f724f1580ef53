"""Speed of MIRROR's memory read on this CPU: aigi's fast path against the reference formulation.

At the paper's size (K=4096 slots, D=1024, N=256 tokens per image, batch 32, 8 heads, top-k 128), fp32:

- fast: ``MemoryBank.forward`` under ``torch.inference_mode`` with the K/V cache warm (the memory is frozen at
  inference), then ``Recall.perplexity()``;
- reference: ``MemoryBank.plain_forward`` (projections per call, dense ``-inf``-masked softmax, dense
  attention @ values) then ``dense_perplexity`` on its dense attention, which is what the reference's head computes.

Each is warmed up once, then timed ``--repeats`` times; the median is reported. The largest absolute differences
of the reconstruction and of the perplexity evidence are recorded and must be <= 1e-5. A breakdown of the fast
path (q projection + logits, top-k selection, softmax + read-out + output projection) is timed separately.

    python benchmarks/mirror_speed.py            # paper size; writes benchmarks/results/mirror_speed.{json,md}
                                                 # and the README block
    python benchmarks/mirror_speed.py --small    # a quick check of the script at a small size (README untouched)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from aigi.detectors.memory_bank import MemoryBank, dense_perplexity, topk_select
from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
PAPER = dict(slots=4096, dim=1024, tokens=256, batch=32, heads=8, top_k=128)
SMALL = dict(slots=512, dim=128, tokens=64, batch=4, heads=8, top_k=16)
TOLERANCE = 1e-5


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """Warm up once, then the median of ``repeats`` wall times (seconds), all times and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def fast(bank: MemoryBank, tokens: torch.Tensor):
    with torch.inference_mode():
        recall = bank(tokens)
        return recall.recon, recall.perplexity()


def reference(bank: MemoryBank, tokens: torch.Tensor):
    with torch.inference_mode():
        recon, attn = bank.plain_forward(tokens)
        return recon, dense_perplexity(attn)


def fast_breakdown(bank: MemoryBank, tokens: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """The fast path's stages, timed one by one (summed over row chunks), and the reconstruction they give.

    Mirrors ``MemoryBank.forward`` step by step; the caller checks its output against ``forward``'s, so a
    breakdown that drifted from the implementation is reported as such instead of being trusted."""
    stages = {"q_projection_and_logits": 0.0, "topk_selection": 0.0, "softmax_readout_out_proj": 0.0}
    with torch.inference_mode():
        b, n, d = tokens.shape
        h, dh, kk = bank.heads, bank.head_dim, bank.top_k
        keys, values = bank.keys_values()  # warm: a cache hit
        t0 = time.perf_counter()
        q = bank.q_proj(tokens).reshape(b * n, h, dh).transpose(0, 1)
        stages["q_projection_and_logits"] += time.perf_counter() - t0
        outs = []
        for s in range(0, b * n, max(1, bank.chunk_rows)):
            t0 = time.perf_counter()
            logits = torch.bmm(q[:, s : s + bank.chunk_rows], keys).mul_(bank.scale)
            t1 = time.perf_counter()
            idx = topk_select(logits, kk)
            t2 = time.perf_counter()
            w = torch.softmax(logits.gather(-1, idx).float(), -1).to(values.dtype)
            outs.append(bank._read(values, idx, w).transpose(0, 1).reshape(-1, d))
            t3 = time.perf_counter()
            stages["q_projection_and_logits"] += t1 - t0
            stages["topk_selection"] += t2 - t1
            stages["softmax_readout_out_proj"] += t3 - t2
        t0 = time.perf_counter()
        recon = bank.out_proj(torch.cat(outs, 0).view(b, n, d))
        stages["softmax_readout_out_proj"] += time.perf_counter() - t0
    return stages, recon


def measure(size: dict, repeats: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    bank = MemoryBank(size["dim"], size["slots"], size["heads"], size["top_k"]).eval().requires_grad_(False)
    tokens = torch.randn(size["batch"], size["tokens"], size["dim"])

    fast_s, fast_times, (recon_f, ppl_f) = timed(lambda: fast(bank, tokens), repeats)
    ref_s, ref_times, (recon_r, ppl_r) = timed(lambda: reference(bank, tokens), repeats)
    recon_diff = float((recon_f - recon_r).abs().max())
    ppl_diff = float((ppl_f - ppl_r).abs().max())
    assert recon_diff <= TOLERANCE and ppl_diff <= TOLERANCE, (
        f"fast path differs from the reference: recon {recon_diff:.3g}, perplexity {ppl_diff:.3g}"
    )

    breakdown = None
    if hasattr(bank, "_read"):
        runs = [fast_breakdown(bank, tokens) for _ in range(repeats + 1)][1:]  # the first is a warm-up
        if float((runs[-1][1] - recon_f).abs().max()) <= TOLERANCE:
            breakdown = {k: round(statistics.median(r[0][k] for r in runs), 4) for k in runs[0][0]}
    rows = size["batch"] * size["tokens"]
    return {
        "size": size,
        "dtype": "float32",
        "repeats": repeats,
        "fast_seconds_median": round(fast_s, 4),
        "fast_seconds_all": [round(t, 4) for t in fast_times],
        "reference_seconds_median": round(ref_s, 4),
        "reference_seconds_all": [round(t, 4) for t in ref_times],
        "speedup": round(ref_s / fast_s, 2),
        "fast_tokens_per_s": round(rows / fast_s),
        "reference_tokens_per_s": round(rows / ref_s),
        "max_abs_diff_recon": recon_diff,
        "max_abs_diff_perplexity": ppl_diff,
        "tolerance": TOLERANCE,
        "fast_breakdown_seconds_median": breakdown,
        "chunk_rows": bank.chunk_rows,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def report(r: dict) -> str:
    s = r["size"]
    lines = [
        f"Memory read at K={s['slots']} slots, D={s['dim']}, N={s['tokens']} tokens, batch {s['batch']}, {s['heads']} heads,"
        f" top-k {s['top_k']}, fp32, on this CPU ({r['cpu_threads']} threads, torch {r['torch']}); median of {r['repeats']}"
        f" runs after a warm-up:",
        "",
        "| path | seconds per batch | tokens/s |",
        "|---|---|---|",
        f"| fast (`MemoryBank.forward`, K/V cache warm, + `Recall.perplexity`) | {r['fast_seconds_median']:.3f} | {r['fast_tokens_per_s']} |",
        f"| reference (`plain_forward` + `dense_perplexity`) | {r['reference_seconds_median']:.3f} | {r['reference_tokens_per_s']} |",
        "",
        f"Speed-up {r['speedup']}x. Largest absolute difference, fast vs reference: reconstruction {r['max_abs_diff_recon']:.2g},"
        f" perplexity evidence {r['max_abs_diff_perplexity']:.2g} (both must be <= {r['tolerance']:g}).",
    ]
    if r["fast_breakdown_seconds_median"]:
        b = r["fast_breakdown_seconds_median"]
        lines.append(
            f"Fast path by stage (timed separately): q projection + logits {b['q_projection_and_logits']:.3f} s, top-k selection"
            f" {b['topk_selection']:.3f} s, softmax + read-out + output projection {b['softmax_readout_out_proj']:.3f} s."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--small", action="store_true", help=f"a small size {SMALL} to check the script; the README is left alone"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for mirror_speed.json and mirror_speed.md"
    )
    args = ap.parse_args()
    result = measure(SMALL if args.small else PAPER, args.repeats)
    body = report(result)
    write_json(args.out / "mirror_speed.json", result)
    write_text(
        args.out / "mirror_speed.md",
        "\n".join(["# Speed of MIRROR's memory read (reproduce: `python benchmarks/mirror_speed.py`)", "", body, ""]),
    )
    if not args.small:
        from default_model import update_readme

        update_readme("mirror_speed", body)
    print(body)


if __name__ == "__main__":
    main()
