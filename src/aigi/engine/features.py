"""Batched per-image feature extraction with per-file errors and an on-disk cache.

``extract`` is the one loop every command uses: read each file, decode it, apply the evaluation protocol, run a
function over batches of pixels, and collect one array per image, or the reason the image could not be used.

The cache stores one ``.npy`` per image under a namespace that hashes the backbone spec, the preprocessing, the
protocol and the feature kind; inside it, the key is the SHA-256 of the file's bytes, so renamed or copied files
hit the cache and an edited file does not. Writes are atomic; ``np.load(allow_pickle=False)`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aigi.backbones.base import Preprocess
from aigi.data.decode import ImageDecodeError, as_input, decode_bytes, read_bytes
from aigi.data.transforms import EvalProtocol
from aigi.io import atomic_write
from aigi.progress import progress_iter


def default_cache_dir() -> Path:
    env = os.environ.get("AIGI_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aigi" / "features"


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None = None, namespace_parts: dict | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        blob = json.dumps(namespace_parts or {}, sort_keys=True, default=str)
        self.namespace = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.dir = self.root / self.namespace
        self._blob = blob

    def _path(self, sha: str) -> Path:
        return self.dir / sha[:2] / f"{sha}.npy"

    def get(self, sha: str) -> np.ndarray | None:
        p = self._path(sha)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            return None

    def put(self, sha: str, arr: np.ndarray) -> None:
        p = self._path(sha)
        if not (self.dir / "namespace.json").exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / "namespace.json", lambda t: Path(t).write_text(self._blob))

        def w(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        atomic_write(p, w)


@dataclass
class Extracted:
    """Per-sample results: ``features[i]`` is None exactly when ``errors[i]`` says why."""

    features: list[np.ndarray | None]
    errors: dict[int, str] = field(default_factory=dict)
    sha256: list[str | None] = field(default_factory=list)
    cache_hits: int = 0
    inputs: list = field(default_factory=list)  # what was read: a Path or an InMemoryImage per sample

    def stacked(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.features[i] for i in indices])

    @property
    def ok(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f is not None]


class _ImageFiles(Dataset):
    def __init__(
        self, paths: Sequence[Path], protocol: EvalProtocol, pre: Preprocess, cache: FeatureCache | None
    ) -> None:
        self.paths, self.protocol, self.pre, self.cache = list(paths), protocol, pre, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        try:
            data = read_bytes(path)
            sha = hashlib.sha256(data).hexdigest()
            if self.cache is not None:
                hit = self.cache.get(sha)
                if hit is not None:
                    return {"i": i, "sha": sha, "cached": hit}
            dec = decode_bytes(data, str(path), sha256=sha)
            return {"i": i, "sha": sha, "pixels": self.protocol.apply(dec.image, dec.format, self.pre)}
        except ImageDecodeError as e:
            return {"i": i, "error": e.reason}
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a batch job
            return {"i": i, "error": f"could not prepare image ({type(e).__name__}: {e})"}


def _collate(items: list[dict]) -> list[dict]:
    return items


def extract(
    paths: Sequence[str | os.PathLike],
    fn: Callable[[torch.Tensor], torch.Tensor],
    pre: Preprocess,
    protocol: EvalProtocol,
    cache: FeatureCache | None = None,
    batch_size: int = 8,
    num_workers: int | None = None,
    description: str = "scoring images",
    progress: bool = True,
) -> Extracted:
    """Run ``fn`` (pixels [B,3,S,S] -> [B, ...]) over every image; errors are collected per file."""
    paths = [as_input(p) for p in paths]
    out = Extracted(features=[None] * len(paths), sha256=[None] * len(paths), inputs=paths)
    if not paths:
        return out
    if num_workers is None:
        num_workers = 1 if (os.cpu_count() or 1) > 1 and len(paths) > batch_size else 0
    loader = DataLoader(
        _ImageFiles(paths, protocol, pre, cache),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    with torch.inference_mode():
        # the bar counts images, not batches: each batch advances it by its size
        for batch in progress_iter(loader, total=len(paths), description=description, enabled=progress, weight=len):
            todo = []
            for item in batch:
                i = item["i"]
                out.sha256[i] = item.get("sha")
                if "error" in item:
                    out.errors[i] = item["error"]
                elif "cached" in item:
                    out.features[i] = item["cached"]
                    out.cache_hits += 1
                else:
                    todo.append(item)
            if todo:
                feats = fn(torch.stack([t["pixels"] for t in todo])).float().cpu().numpy()
                for item, f in zip(todo, feats):
                    out.features[item["i"]] = f
                    if cache is not None:
                        cache.put(item["sha"], f)
    return out
