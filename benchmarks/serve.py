"""Issue #14's benchmark: `aigi serve` under load on loopback, and the page's screenshot for the README.

    python benchmarks/serve.py load [--requests 500] [--levels 1 8 32 64] [--soak 6] [--no-trim-memory]
    python benchmarks/serve.py screenshot

``load`` starts ``aigi serve`` (the shipped default model, default limits: a queue of 32 waiting requests) as its own
process, warms it up, then sends ``--requests`` POST /v1/detect requests of one image each (a 256-pixel JPEG of
aigi-mini ``val/``) at each concurrency level and reports p50/p95/p99 latency, requests/s, the statuses (200 below the
queue limit; above it, 503 with Retry-After, never anything else) and the server's RSS before and after each level
and its peak (flat: no leak). Writes ``results/serve/load.{json,md}`` and the README block.

``screenshot`` opens the page in headless Chromium, uploads a real photo and a generated image (aigi-mini ``test/``)
and saves ``results/serve/page.png`` with the first card's heatmap switched on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from default_model import REPO, update_readme

from aigi.io import write_json, write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "serve"
DATA = REPO.parent / "shared" / "data" / "aigi-mini"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """The process's resident memory now and its peak, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start_server(port: int, options: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aigi.cli", "serve", "--port", str(port), *options]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("aigi serve did not become ready")


async def one_level(url: str, payload: bytes, requests: int, concurrency: int) -> dict:
    latencies, statuses = [], {}
    retry_after_ok = True
    queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(None)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal retry_after_ok
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            res = await client.post("/v1/detect", files=[("files", ("photo.jpg", payload, "image/jpeg"))])
            latencies.append(time.perf_counter() - start)
            statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
            if res.status_code == 503:
                retry_after_ok &= res.headers.get("retry-after") == "1" and "error" in res.json()

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1),
        "ok_per_s": round(statuses.get(200, 0) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "busy_answers_well_formed": retry_after_ok,
    }


def load(args) -> None:
    photo = sorted((DATA / "val" / "0_real").glob("*.jpg"))[0]
    payload = photo.read_bytes()
    port = free_port()
    server = start_server(port, ["--no-trim-memory"] if args.no_trim_memory else [])
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(one_level(url, payload, 20, 2))  # warm-up
        rows = []
        for level in args.levels:
            before = rss_mb(server.pid)
            row = asyncio.run(one_level(url, payload, args.requests, level))
            after = rss_mb(server.pid)
            row.update(rss_before_mb=round(before[0]), rss_after_mb=round(after[0]), rss_peak_mb=round(after[1]))
            rows.append(row)
            print(row, flush=True)
        soak = [soak_round(url, payload, server.pid, args.requests) for _ in range(args.soak)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    server_name = "aigi serve --no-trim-memory" if args.no_trim_memory else "aigi serve (defaults)"
    meta = {"image": photo.name, "image_bytes": len(payload), "cpu": os.cpu_count(), "server": server_name}
    name = "load_no_trim" if args.no_trim_memory else "load"
    write_json(OUT / f"{name}.json", {"meta": meta, "levels": rows, "soak_rss_after_mb": soak})
    table = markdown(rows, soak)
    write_text(OUT / f"{name}.md", table + "\n")
    if not args.no_trim_memory:
        update_readme("serve_load", table)
    print(table)


def soak_round(url: str, payload: bytes, pid: int, requests: int) -> int:
    """One more round at 32 clients; the server's resident MiB after it (a leak grows round after round)."""
    asyncio.run(one_level(url, payload, requests, SOAK_CLIENTS))
    after = round(rss_mb(pid)[0])
    print(f"soak: RSS {after} MiB", flush=True)
    return after


SOAK_CLIENTS = 32


def markdown(rows: list[dict], soak: list[int]) -> str:
    head = "| clients | requests/s | 200 per s | p50 ms | p95 ms | p99 ms | statuses | RSS before / after / peak MiB |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']} | {r['ok_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['p99_ms']} | {statuses} | {r['rss_before_mb']} / {r['rss_after_mb']} / {r['rss_peak_mb']} |"
        )
    if soak:
        rounds = " -> ".join(str(mb) for mb in soak)
        lines += [
            "",
            f"Leak check: RSS after each further {rows[0]['requests']} requests at {SOAK_CLIENTS} clients: {rounds} MiB.",
        ]
    return "\n".join(lines)


def screenshot(args) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serving import live_server
    from test_serve_browser import GENERATED, REAL, _browser

    from aigi import api
    from aigi.serve.app import create_app

    browser = _browser()
    try:
        with live_server(create_app({"default": api.load()})) as url:
            browser.get(url)
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "files").send_keys(f"{REAL}\n{GENERATED}")
            WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "article.card")) == 2)
            browser.find_elements(By.CSS_SELECTOR, "input.heat-toggle")[0].click()  # one card shows its heatmap
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / "page.png").write_bytes(browser.get_screenshot_as_png())
    finally:
        browser.quit()
    print(f"wrote {OUT / 'page.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    lo = sub.add_parser("load", help="the load test")
    lo.add_argument("--requests", type=int, default=500)
    lo.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    lo.add_argument("--soak", type=int, default=6, help="further rounds at 32 clients, RSS after each (leak check)")
    lo.add_argument("--no-trim-memory", action="store_true", help="the server without trimming (load_no_trim.*)")
    sub.add_parser("screenshot", help="the page with two verdict cards")
    args = ap.parse_args()
    {"load": load, "screenshot": screenshot}[args.command](args)


if __name__ == "__main__":
    main()
