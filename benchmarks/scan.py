"""Issue #16's scan benchmark: ``aigi scan`` on 10,000 images, its memory, its resume, and Ray on this machine.

    python benchmarks/scan.py [--images 10000] [--ray-images 2000]

The images: aigi-mini's ``val/``, ``test/`` then ``train/`` images (only speed is measured here), each cut into its
four corner tiles and its centre tile (each half the image's short side), each tile re-encoded as JPEG at quality 90,
until ``--images`` are made (written under ``results/scan/work/images``, not committed). Measured, each scan a fresh ``aigi scan`` process on a list file:

- local scans of the first 1,000, 5,000 and 10,000 images: images/s and the process's peak RSS (flat is the target);
- the resume: a 10,000-image scan killed (SIGKILL) once half its parts exist, then rerun: rows = inputs, no path
  twice, and the time of the rerun against a full scan;
- Ray on this machine with 1 and 2 model actors on ``--ray-images`` images, against a local scan of the same; each
  also on 256 images, which splits its time into a fixed cost and a rate once running.

Writes ``results/scan/scan.{json,md}`` and the README block.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
from default_model import REPO, update_readme
from PIL import Image

from aigi.data.folders import discover
from aigi.io import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "scan"
WORK = OUT / "work"
DATA = REPO.parent / "shared" / "data" / "aigi-mini"
PART = 256
SMALL = 256  # the small run of the Ray comparison: one part


def tiles(im: Image.Image) -> list[Image.Image]:
    side = min(im.size) // 2
    w, h = im.size
    corners = [(0, 0), (w - side, 0), (0, h - side), (w - side, h - side), ((w - side) // 2, (h - side) // 2)]
    return [im.crop((x, y, x + side, y + side)) for x, y in corners]


def build_images(n: int) -> list[str]:
    folder = WORK / "images"
    listed = WORK / f"images_{n}.txt"
    if listed.is_file():
        return listed.read_text().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    sources = [s.path for split in ("val", "test", "train") for s in discover(DATA / split).samples]
    for k, source in enumerate(sources):
        with Image.open(source) as im:
            for t, tile in enumerate(tiles(im.convert("RGB"))):
                path = folder / f"{k:05d}_{t}.jpg"
                buf = io.BytesIO()
                tile.save(buf, "JPEG", quality=90)
                path.write_bytes(buf.getvalue())
                paths.append(str(path))
                if len(paths) == n:
                    write_text(listed, "\n".join(paths) + "\n")
                    return paths
    raise SystemExit(f"only {len(paths)} tiles could be made from {DATA}")


def scan_process(listing: Path, out: Path, extra: list[str], kill_at_parts: int | None = None) -> dict:
    """Run ``aigi scan`` as its own process; its wall time and peak RSS (VmHWM, polled), or kill it once
    ``kill_at_parts`` parts exist."""
    cmd = [sys.executable, "-m", "aigi.cli", "scan", str(listing), "--out", str(out), "--part-size", str(PART), *extra]
    env = {**os.environ, "AIGI_NO_PROGRESS": "1"}
    start, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) / 1024)
        except (OSError, IndexError):
            pass
        if kill_at_parts is not None and len(list(out.glob("part-*.parquet"))) >= kill_at_parts:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return {"seconds": time.perf_counter() - start, "killed": True}
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"aigi scan failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak}


def fresh(name: str) -> Path:
    import shutil

    path = WORK / "runs" / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def rows_of(out: Path) -> tuple[int, int]:
    paths = pads.dataset(str(out)).to_table(columns=["path"]).column("path").to_pylist()
    return len(paths), len(set(paths))


def measure(n: int, ray_n: int) -> dict:
    from aigi import api
    from aigi.onnx_runtime import runtime_of

    paths = build_images(n)
    result: dict = {"images": n, "part_size": PART, "runtime": runtime_of(api.load()), "local": [], "ray": []}
    for size in (1000, 5000, n):
        listing = WORK / f"images_{size}.txt"
        write_text(listing, "\n".join(paths[:size]) + "\n")
        run = scan_process(listing, fresh(f"local_{size}"), [])
        result["local"].append({"images": size, "images_per_s": size / run["seconds"], **run})
        print(result["local"][-1], flush=True)
    full = WORK / f"images_{n}.txt"
    out = fresh("resume")
    killed = scan_process(full, out, [], kill_at_parts=(n // PART) // 2)
    rerun = scan_process(full, out, [])
    rows, unique = rows_of(out)
    result["resume"] = {
        "killed_after_s": killed["seconds"],
        "rerun_s": rerun["seconds"],
        "rows": rows,
        "unique": unique,
    }
    print(result["resume"], flush=True)
    result.update(measure_ray(paths, ray_n))
    return result


def measure_ray(paths: list[str], ray_n: int) -> dict:
    """Ray with 1 and 2 actors against a local scan, each on ``SMALL`` and on ``ray_n`` images: two points give each
    way's fixed cost (start-up: processes, imports, model loads) and its rate once running."""
    found: dict = {"ray": []}
    for n in (SMALL, ray_n):
        write_text(WORK / f"images_{n}.txt", "\n".join(paths[:n]) + "\n")
    ways = [
        ("local", []),
        ("ray_1", ["--ray", "--actors", "1"]),  # 1 CPU for the actor, 1 for the read tasks
        ("ray_2", ["--ray", "--actors", "2", "--cpus-per-actor", "0.75"]),  # 1.5 for the actors, 0.5 for reading
    ]
    for name, extra in ways:
        runs = {n: scan_process(WORK / f"images_{n}.txt", fresh(f"{name}_{n}"), extra) for n in (SMALL, ray_n)}
        row = {"images": ray_n, "images_per_s": ray_n / runs[ray_n]["seconds"], **runs[ray_n], **split(runs, ray_n)}
        if name == "local":
            found["ray_local"] = row
        else:
            found["ray"].append({"actors": int(name[-1]), **row})
        print(name, row, flush=True)
    return found


def split(runs: dict, big: int) -> dict:
    """Fixed cost and steady rate from a small and a big run: seconds = fixed + images / rate."""
    rate = (big - SMALL) / (runs[big]["seconds"] - runs[SMALL]["seconds"])
    return {"steady_images_per_s": rate, "fixed_s": runs[SMALL]["seconds"] - SMALL / rate}


def markdown(r: dict) -> str:
    lines = [f"The shipped model, runtime {r['runtime']} (the default), parts of {r['part_size']} inputs.", ""]
    lines += ["| local scan | images/s | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {x['images']:,} images | {x['images_per_s']:.1f} | {x['peak_rss_mb']:.0f} |" for x in r["local"]]
    full = next(x for x in r["local"] if x["images"] == r["images"])
    res = r["resume"]
    lines += [
        "",
        f"Resume: killed after {res['killed_after_s']:.0f} s (half the parts written), rerun {res['rerun_s']:.0f} s "
        f"against {full['seconds']:.0f} s for a full scan; {res['rows']:,} rows for {r['images']:,} inputs, "
        f"{res['unique']:,} distinct paths.",
        "",
        f"| {r['ray_local']['images']:,} images | images/s | fixed cost s | images/s once running | "
        "peak RSS MiB (driver) |",
        "|---|---|---|---|---|",
    ]
    runs = [("local", r["ray_local"])] + [(f"Ray, {x['actors']} actor{'s' * (x['actors'] > 1)}", x) for x in r["ray"]]
    lines += [
        f"| {name} | {x['images_per_s']:.1f} | {x['fixed_s']:.1f} | {x['steady_images_per_s']:.1f} | "
        f"{x['peak_rss_mb']:.0f} |"
        for name, x in runs
    ]
    lines += [
        "",
        f"Fixed cost and rate once running from a {SMALL}-image run beside each: seconds = fixed + images / rate.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--ray-images", type=int, default=2000)
    ap.add_argument("--ray-only", action="store_true", help="keep scan.json's local and resume numbers; rerun Ray's")
    args = ap.parse_args()
    if args.ray_only:
        result = {**read_json(OUT / "scan.json"), **measure_ray(build_images(args.images), args.ray_images)}
    else:
        result = measure(args.images, args.ray_images)
    write_json(OUT / "scan.json", result)
    table = markdown(result)
    write_text(OUT / "scan.md", table + "\n")
    update_readme("scan", table)
    print(table)


if __name__ == "__main__":
    main()
