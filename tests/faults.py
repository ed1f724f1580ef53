"""Injected file-system faults for the tests: a disk that fills up part way, a read-only folder. They patch Python's
own file calls for paths under one folder only, so they work without root and on any OS (a real full tmpfs needs
root to mount; see test_faults.py)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

from aigi.io import STAGING_PREFIX

_WRITE_MODES = set("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _under(path, root: Path) -> bool:
    try:
        return Path(os.fspath(path)).resolve().is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


def _on_disk_of(path, root: Path) -> bool:
    """Under ``root``, or under the staging folder ``write_set`` builds beside it (``.<name>.aigi-set-*``: the same
    disk by design)."""
    if _under(path, root):
        return True
    if not _under(path, root.parent):
        return False
    inside = Path(os.fspath(path)).resolve().relative_to(root.parent).parts
    return bool(inside) and inside[0].startswith(f".{root.name}{STAGING_PREFIX}")


class _FillingFile:
    """A file whose writes succeed until the shared budget of bytes runs out, then raise ENOSPC."""

    def __init__(self, fh, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data):
        room = self._disk.budget
        if len(data) > room:
            self._fh.write(data[:room])
            self._disk.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.budget -= len(data)
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


class FullDisk:
    """Files opened for writing under ``root`` (or in aigi's staging beside it) share ``budget`` bytes; the write that passes it fails with ENOSPC."""

    def __init__(self, monkeypatch, root: Path, budget: int = 0) -> None:
        self.root, self.budget, self.failures = Path(root).resolve(), budget, 0
        real_open = builtins.open

        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if _WRITE_MODES & set(mode) and _on_disk_of(file, self.root):
                return _FillingFile(fh, self)
            return fh

        monkeypatch.setattr(builtins, "open", fake_open)


def read_only(monkeypatch, root: Path) -> None:
    """Creating, opening for writing, renaming or removing anything under ``root`` fails with EROFS."""
    root = Path(root).resolve()

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guard(real, write_check=lambda *a, **k: True):
        def call(path, *args, **kwargs):
            if _under(path, root) and write_check(*args, **kwargs):
                refuse(path)
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a, **k: bool(flags & _WRITE_FLAGS)))
    monkeypatch.setattr(
        builtins, "open", guard(builtins.open, lambda mode="r", *a, **k: bool(_WRITE_MODES & set(mode)))
    )
    for name in ("mkdir", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("replace", "rename", "link"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))


# -- shared by the fault tests and the processes they start ----------------------------------------------------------
def toy_report(root: Path, threshold: float = 0.5):
    """A small scored ImageSet (no model needed) and its report: (report, image_set, prob)."""
    import numpy as np

    from aigi.data.folders import ImageSet, Sample
    from aigi.engine.evaluate import build_report

    samples = [
        Sample(Path(root) / f"{kind}_{i}.png", label) for label, kind in enumerate(("real", "fake")) for i in range(6)
    ]
    prob = np.linspace(0.05, 0.95, len(samples))
    image_set = ImageSet(samples=samples, subsets={"toy": list(range(len(samples)))}, root=Path(root))
    return build_report(image_set, prob, threshold, {}, model=f"toy@{threshold}"), image_set, prob


def mean_colour(pixels):
    """A tiny deterministic 'model': each image's mean per channel."""
    return pixels.mean((2, 3))


def fill_cache(paths, cache_root, barrier, results) -> None:
    """One of several processes filling one cache folder at once (started with multiprocessing's spawn)."""
    from aigi.backbones.base import Preprocess
    from aigi.data.transforms import EvalProtocol
    from aigi.engine.features import FeatureCache, extract

    cache = FeatureCache(cache_root, {"model": "mean-colour"})
    barrier.wait(timeout=120)
    ext = extract(paths, mean_colour, Preprocess(size=32), EvalProtocol(crop=32), cache, 2, 0, progress=False)
    results.put([None if f is None else f.tolist() for f in ext.features])
