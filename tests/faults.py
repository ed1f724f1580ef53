"""Injected file-system faults for the tests: a disk that fills up part way, a read-only folder. They patch Python's
own file calls for paths under one folder only, so they work without root and on any OS (a real full tmpfs needs
root to mount; see test_faults.py)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

_WRITE_MODES = set("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _under(path, root: Path) -> bool:
    try:
        return Path(os.fspath(path)).resolve().is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


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
    """Files opened for writing under ``root`` share ``budget`` bytes; the write that passes it fails with ENOSPC."""

    def __init__(self, monkeypatch, root: Path, budget: int = 0) -> None:
        self.root, self.budget, self.failures = Path(root).resolve(), budget, 0
        real_open = builtins.open

        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if _WRITE_MODES & set(mode) and _under(file, self.root):
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
