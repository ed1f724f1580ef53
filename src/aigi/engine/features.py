"""Batched per-image feature extraction with per-file errors and an on-disk cache.

``extract`` is the one loop every command uses: read each file, decode it, apply the evaluation protocol, run a
function over batches of pixels, and collect one array per image, or the reason the image could not be used. With a
multi-view protocol (several crops, tiles or mirrors per image) the function runs over every view and an image's
array is its views' rows stacked, ``[views, ...]`` (the number of views may differ between images).

The cache stores one entry per image under a namespace that hashes the backbone spec, the preprocessing, the
protocol and the feature kind; inside it, the key is the SHA-256 of the file's bytes, so renamed or copied files
hit the cache and an edited file does not. Each entry is sealed to its namespace and key (:class:`FeatureCache`),
so a planted or copied entry is recomputed, never trusted; a shared cache folder is a trust boundary (whoever can
write it can change verdicts). Writes are atomic, so processes may fill one cache folder at once; entries are read
with ``np.load(allow_pickle=False)``. A cache that cannot be written (full, read-only) is warned about once and the
run continues uncached.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aigi.backbones.base import Preprocess
from aigi.data.decode import ImageDecodeError, as_input, decode_bytes, read_bytes
from aigi.data.transforms import EvalProtocol
from aigi.io import WriteError, write_bytes, write_text
from aigi.progress import notice, progress_iter


def default_cache_dir() -> Path:
    env = os.environ.get("AIGI_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aigi" / "features"


ENTRY_MAGIC = b"AIGI-FEATURES-1\n"  # first bytes of a cache entry; then the 32-byte seal, then the array as .npy
_SEAL_BYTES = 32
MAX_ENTRY_BYTES = 1 << 30  # a larger file under an entry's name is not read
_UNWRITABLE: set[Path] = set()  # cache folders this process failed to write: warned about once, then left alone


class FeatureCache:
    """One namespace of the on-disk feature cache (see the module's docstring).

    Each entry is sealed to its place: ``ENTRY_MAGIC``, then an HMAC-SHA256 of the array's ``.npy`` bytes keyed by
    the full namespace hash and the image's SHA-256, then those bytes. An entry that was planted, damaged, copied
    from another image or another namespace, or written by an older version fails the check and is recomputed.

    Trust boundary: the seal holds no secret, so it stops accidents and copies, not a deliberate forger. Anyone who
    can write the cache folder can make a chosen image score as they wish; keep the cache private to its user (the
    default, under ``~/.cache``) and never point ``AIGI_CACHE_DIR`` at a folder others can write.

    The cache is only an optimisation: when an entry cannot be written (a full disk, a read-only folder) one warning
    names the folder and the reason, and this process stops writing there; the run carries on uncached."""

    def __init__(self, root: str | os.PathLike | None = None, namespace_parts: dict | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        blob = json.dumps(namespace_parts or {}, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode())
        self.namespace = digest.hexdigest()[:20]
        self.dir = self.root / self.namespace
        self._blob, self._key = blob, digest.digest()

    def _path(self, sha: str) -> Path:
        return self.dir / sha[:2] / f"{sha}.npy"

    @property
    def unwritable(self) -> bool:
        """Whether a write to this cache folder failed in this process (entries are then no longer written)."""
        return self.root in _UNWRITABLE

    def _seal(self, sha: str, payload: bytes) -> bytes:
        return hmac.new(self._key + sha.encode(), payload, hashlib.sha256).digest()

    def get(self, sha: str) -> np.ndarray | None:
        """The entry for the image with SHA-256 ``sha``, or None when there is none or it fails the check."""
        data = _read_regular_file(self._path(sha), MAX_ENTRY_BYTES)
        head = len(ENTRY_MAGIC) + _SEAL_BYTES
        if data is None or len(data) < head or not data.startswith(ENTRY_MAGIC):
            return None
        payload = data[head:]
        if not hmac.compare_digest(data[len(ENTRY_MAGIC) : head], self._seal(sha, payload)):
            return None
        try:
            return np.load(io.BytesIO(payload), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, sha: str, arr: np.ndarray) -> None:
        """Store ``arr`` for the image with SHA-256 ``sha``; a write failure warns once and turns writing off."""
        if self.root in _UNWRITABLE:
            return
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        payload = buf.getvalue()
        try:
            if not (self.dir / "namespace.json").exists():
                write_text(self.dir / "namespace.json", self._blob)
            write_bytes(self._path(sha), ENTRY_MAGIC + self._seal(sha, payload) + payload)
        except WriteError as e:
            _UNWRITABLE.add(self.root)
            notice(f"warning: feature cache {self.root} not written ({e}); carrying on without caching")


# not through a symbolic link, never waiting on a pipe, bytes as they are (Windows)
_NO_LINKS_NO_WAIT = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _read_regular_file(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link, a pipe or a device) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_LINKS_NO_WAIT)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass
class Extracted:
    """Per-sample results: ``features[i]`` is None exactly when ``errors[i]`` says why."""

    features: list[np.ndarray | None]
    errors: dict[int, str] = field(default_factory=dict)
    sha256: list[str | None] = field(default_factory=list)
    cache_hits: int = 0
    inputs: list = field(default_factory=list)  # what was read: a Path or an InMemoryImage per sample
    multi_view: bool = False  # each array is [views, ...]: one row per view of a multi-view protocol

    def stacked(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.features[i] for i in indices])

    def view_rows(self, indices: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """Every view's row of the images at ``indices``, image after image, and how many rows each image has (one
        per image for a single-view protocol): what a head scores at once before the views are combined."""
        parts = [self.features[i] if self.multi_view else self.features[i][None] for i in indices]
        return np.concatenate(parts), [len(p) for p in parts]

    def first_view(self, i: int) -> np.ndarray:
        return self.features[i][0] if self.multi_view else self.features[i]

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
        return {"i": i, **prepare_image(self.paths[i], self.protocol, self.pre, self.cache)}


def prepare_image(path, protocol: EvalProtocol, pre: Preprocess, cache: FeatureCache | None = None) -> dict:
    """One image read, hashed, decoded and put through ``protocol``: ``{"sha", "pixels"}`` (``{"sha", "cached"}`` on a
    cache hit), or ``{"error"}`` saying why it cannot be scored. No model needed: Ray's read tasks call it too."""
    try:
        data = read_bytes(path)
        sha = hashlib.sha256(data).hexdigest()
        if cache is not None:
            hit = cache.get(sha)
            if hit is not None:
                return {"sha": sha, "cached": hit}
        dec = decode_bytes(data, str(path), sha256=sha)
        return {"sha": sha, "pixels": protocol.apply(dec.image, dec.format, pre)}
    except ImageDecodeError as e:
        return {"error": e.reason}
    except Exception as e:  # noqa: BLE001 - one bad file must not stop a batch job
        return {"error": f"could not prepare image ({type(e).__name__}: {e})"}


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
    """Run ``fn`` (pixels [B,3,S,S] -> [B, ...]) over every image, at most ``batch_size`` views at once; errors are
    collected per file. A multi-view ``protocol`` gives each image its views' rows, ``[views, ...]``."""
    paths = [as_input(p) for p in paths]
    multi = bool(getattr(protocol, "multi_view", False))
    out = Extracted(features=[None] * len(paths), sha256=[None] * len(paths), inputs=paths, multi_view=multi)
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
            gather(batch, fn, multi, batch_size, out, cache)
    return out


def gather(
    items: list[dict], fn, multi: bool, batch_size: int, out: Extracted, cache: FeatureCache | None = None
) -> None:
    """Prepared images (:func:`prepare_image`'s dicts, each with its index ``i``) into ``out``: errors and cache hits
    as they are, ``fn`` over the views of the others."""
    todo = []
    for item in items:
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
        _run_views(fn, todo, multi, batch_size, out, cache)


def _run_views(fn, todo: list[dict], multi: bool, batch_size: int, out: Extracted, cache: FeatureCache | None) -> None:
    """``fn`` over the views of the images in ``todo`` (``batch_size`` at a time); each image's rows to ``out``."""
    views = torch.cat([t["pixels"] if multi else t["pixels"][None] for t in todo])
    feats = torch.cat([fn(views[i : i + batch_size]).float().cpu() for i in range(0, len(views), batch_size)]).numpy()
    counts = np.cumsum([len(t["pixels"]) if multi else 1 for t in todo])[:-1]
    for item, f in zip(todo, np.split(feats, counts)):
        f = f if multi else f[0]
        out.features[item["i"]] = f
        if cache is not None:
            cache.put(item["sha"], f)
