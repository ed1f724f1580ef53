"""A small async micro-batcher: concurrent requests become one call to the model instead of one forward each.

Requests wait in a bounded queue (full: :class:`Busy`, which the server answers with 503 and ``Retry-After``, never
an unbounded pile-up). One worker task takes the first waiting request, gathers others for at most ``max_wait_s`` or
until ``max_images`` images are collected, and runs :func:`aigi.api.detect` once per group of requests that asked
for the same options, in a single worker thread (the event loop never runs inference). Each request gets exactly its
own detections back, in its order.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aigi import api, think
from aigi.checkpoints import Model


class Busy(Exception):
    """The queue is full: the caller should retry later."""


@dataclass(frozen=True)
class Options:
    """What a request may choose; requests batch together only when these are equal."""

    threshold: float | None = None
    provenance: bool = True
    explain: bool = False
    think: str | None = None  # fast | slow | auto (aigi.think); None: the model alone, no 'thinking'


@dataclass
class _Job:
    items: list
    options: Options
    future: asyncio.Future = field(repr=False)


class Batcher:
    """One per model; ``start()`` inside the running event loop, ``stop()`` at shutdown."""

    def __init__(
        self,
        model: Model,
        max_images: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 32,
        trim_memory: bool = True,
        reasoner=None,
    ) -> None:
        self.model, self.reasoner = model, reasoner
        self.slow: Model | None = None  # the slow path of think=, built on first use and kept
        self.trim_memory = trim_memory
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigi-model")
        self.task: asyncio.Task | None = None
        self.batches = 0  # calls to the model so far (tests read it)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def detect(self, items: list, options: Options) -> list[api.Detection]:
        """The detections of ``items``; raises :class:`Busy` at once when the queue is full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(items, options, future))
        except asyncio.QueueFull:
            raise Busy from None
        return await future

    async def _run(self) -> None:
        while True:
            jobs = await self._gather(await self.queue.get())
            for options, group in _by_options(jobs).items():
                await self._score(options, group)

    async def _gather(self, first: _Job) -> list[_Job]:
        jobs, images = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait_s
        while images < self.max_images:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), left)
            except asyncio.TimeoutError:
                break
            jobs.append(job)
            images += len(job.items)
        return jobs

    async def _score(self, options: Options, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            detections = await loop.run_in_executor(self.executor, self._detect, items, options)
        except Exception as err:  # a model failure fails these requests, not the server
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        self.batches += 1
        start = 0
        for job in jobs:
            if not job.future.done():  # a request that timed out has gone
                job.future.set_result(detections[start : start + len(job.items)])
            start += len(job.items)

    def _detect(self, items: list, options: Options) -> list[api.Detection]:
        try:
            if options.think is not None:
                if options.think != "fast" and self.slow is None:
                    self.slow = think.load_slow_default(self.model)
                return think.detect(
                    self.model,
                    items,
                    options.think,
                    slow=self.slow,
                    explain=options.explain,
                    batch_size=self.max_images,
                    reasoner=self.reasoner,
                )
            return api.detect(
                self.model,
                items,
                threshold=options.threshold,
                provenance=options.provenance,
                explain=options.explain,
                use_cache=False,
                batch_size=self.max_images,
            )
        finally:
            if self.trim_memory:
                release_freed_memory()


def _by_options(jobs: list[_Job]) -> dict[Options, list[_Job]]:
    groups: dict[Options, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.options, []).append(job)
    return groups


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_freed_memory() -> None:
    """Give memory the process has freed back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Batches of different sizes leave glibc's heaps fragmented, so under load a server's resident memory climbs by
    steps to about twice what it needs although nothing is kept (``benchmarks/serve.py load``: a plateau of about
    1,080 MiB without this, about 525 MiB with it, for about a fifth of the throughput; trimming once a second
    instead was not flat). Called after every batch, in the model thread, unless ``aigi serve --no-trim-memory``."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
