"""Atomic file writes: a reader never sees half a file, and a crash never leaves one behind.

* :func:`atomic_write` writes one file through a temporary file in the same folder and renames it into place.
* :func:`write_set` writes several files that belong together (a report, a model folder) so that readers see the
  earlier set or the new one, never a mix; see its docstring for the rule.
* Every write failure (a full disk, a read-only folder, a missing permission) is raised as :class:`WriteError`: one
  line naming the file and the reason, an :class:`~aigi.errors.AigiError` (the CLI prints it as ``error: ...``) and
  an ``OSError`` (so code that catches ``OSError`` still does), with no temporary file left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aigi.errors import AigiError, ConfigError

Writer = Callable[[str], None]  # writes one file's content to the temporary path it is given


class WriteError(AigiError, OSError):
    """A file could not be written: ``cannot write PATH: REASON``. ``errno`` is the system's code where known."""

    def __init__(self, path: str | os.PathLike, reason: str, code: int | None = None) -> None:
        super().__init__(code, reason, str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def write_failure(path: str | os.PathLike, error: BaseException) -> WriteError:
    """``error`` (an ``OSError``, or a library's error wrapping one, e.g. safetensors') as a :class:`WriteError`."""
    if isinstance(error, WriteError):
        return error
    if isinstance(error, OSError):
        return WriteError(path, error.strerror or str(error), error.errno)
    found = _OS_ERROR_IN_TEXT.search(str(error))
    if found:  # safetensors: "Error while serializing: I/O error: No space left on device (os error 28) at ..."
        code = int(found.group(1))
        return WriteError(path, os.strerror(code), code)
    return WriteError(path, f"{type(error).__name__}: {error}")


def _write_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failed write raises: ``OSError`` and safetensors' own error type."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return (OSError,)
    return (OSError, SafetensorError)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Writer) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; a failure raises :class:`WriteError`
    naming ``path`` and leaves ``path`` as it was (absent, or its earlier content)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(Path(tmp))
        if isinstance(e, _write_errors()):
            raise write_failure(path, e) from e
        raise
    return path


def _remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def text_writer(text: str) -> Writer:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return write


def json_writer(obj: Any) -> Writer:
    return text_writer(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def bytes_writer(data: bytes) -> Writer:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return write


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text_writer(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json_writer(obj))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, bytes_writer(data))


STAGING_PREFIX = ".aigi-set-"  # hidden staging folders write_set makes inside the folder it writes


def write_set(folder: str | os.PathLike, files: dict[str, Writer]) -> dict[str, Path]:
    """Write ``files`` (a path relative to ``folder``, which may name a subfolder, -> its writer) as one set; return
    each name's final path.

    The rule: exactly the named files are replaced, together; every other file in ``folder`` is left alone (a
    user's files, reports under other stems, a trainer's log and state). Each file is first written complete into a
    hidden staging folder inside ``folder`` (``.aigi-set-<pid>-*``, so on the same file system); only when all are
    written are they renamed into place, the earlier version of each kept (hard-linked) until every rename is done.
    So a write failure (a full disk, a read-only folder) changes nothing in ``folder``: it raises
    :class:`WriteError` naming the file and the reason, and the staging folder is removed; a rename that fails puts
    the earlier files back. The one window that cannot be closed is the few renames at the end: a process killed
    between two of them leaves new files beside old ones. A staging folder left by a killed process is removed by
    the next ``write_set`` into the same folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(folder)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as e:
        raise write_failure(folder, e) from e
    try:
        for name, write in files.items():
            _write_staged(staging / "new" / name, write, folder / name)
        _back_up(staging / "old", folder, list(files))
        _move_into_place(staging, folder, list(files))
    finally:
        _remove_quietly(staging)
    return {name: folder / name for name in files}


def _write_staged(tmp: Path, write: Writer, final: Path) -> None:
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write(str(tmp))
    except _write_errors() as e:
        raise write_failure(final, e) from e


def _back_up(backup: Path, folder: Path, names: list[str]) -> None:
    """Hard-link (or, where links are not supported, copy) each existing target into ``backup``."""
    for name in names:
        target = folder / name
        if not target.is_file():
            continue
        kept = backup / name
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(target, kept)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                    raise
                shutil.copy2(target, kept)
        except OSError as e:
            raise write_failure(target, e) from e


def _move_into_place(staging: Path, folder: Path, names: list[str]) -> None:
    moved: list[str] = []
    try:
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "new" / name, folder / name)
            moved.append(name)
    except OSError as e:
        for name in reversed(moved):
            kept = staging / "old" / name
            try:
                if kept.is_file():
                    os.replace(kept, folder / name)
                else:
                    (folder / name).unlink()
            except OSError:
                pass
        failed = names[len(moved)]
        raise write_failure(folder / failed, e) from e


def _remove_abandoned_staging(folder: Path) -> None:
    """Remove staging folders whose writer is no longer running (it was killed mid-write)."""
    if os.name != "posix":
        return
    for leftover in folder.glob(f"{STAGING_PREFIX}*"):
        pid = leftover.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            _remove_quietly(leftover)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def read_json(path: str | os.PathLike, max_bytes: int = 64 << 20) -> Any:
    """Parse a JSON settings file. Every problem is a :class:`ConfigError` naming the file (not UTF-8, not JSON, over
    ``max_bytes``, nested too deep, unreadable), except a missing file: ``FileNotFoundError``, for callers to explain."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise ConfigError(f"{path}: too large for a JSON settings file (over {max_bytes:,} bytes)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON text file (not UTF-8)") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a settings file (JSON nested too deeply)") from None
