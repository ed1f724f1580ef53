"""Atomic file writes: a reader never sees half a file, and a crash never leaves one behind.

* :func:`atomic_write` writes one file through a temporary file in the same folder and renames it into place.
* :func:`write_set` writes several files that belong together (a report, a model folder) so that readers see the
  earlier set or the new one, never a mix: on Linux the folder is rebuilt beside itself and swapped in one
  ``renameat2(RENAME_EXCHANGE)``; where that is not possible, file by file. See its docstring for the rule.
* Every write failure (a full disk, a read-only folder, a missing permission) is raised as :class:`WriteError`: one
  line naming the file and the reason, an :class:`~aigi.errors.AigiError` (the CLI prints it as ``error: ...``) and
  an ``OSError`` (so code that catches ``OSError`` still does), with no temporary file left behind.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


STAGING_PREFIX = ".aigi-set-"  # hidden staging folders: inside the folder (file by file), or `.<name>` + this beside it
LOCK_SUFFIX = ".aigi-lock"  # `.<name>` + this beside the folder: the lock aigi's writers of one folder share
MAX_SWAP_ENTRIES = 10_000  # a folder holding more (e.g. --out naming a home folder) is written file by file
RENAME_EXCHANGE = 2  # renameat2's flag (linux/fs.h): swap two paths in one step
_AT_FDCWD = -100
_NO_EXCHANGE: set[int] = set()  # devices (st_dev) whose file system refused RENAME_EXCHANGE in this process


class _NoSwap(Exception):
    """The folder cannot be swapped whole here (nothing was changed): write it file by file instead."""


def write_set(folder: str | os.PathLike, files: dict[str, Writer]) -> dict[str, Path]:
    """Write ``files`` (a path relative to ``folder``, which may name a subfolder, -> its writer) as one set; return
    each name's final path.

    The rule: exactly the named files are replaced, together; every other file in ``folder`` is left alone (a
    user's files, reports under other stems, a trainer's log and state). A write failure (a full disk, a read-only
    folder) changes nothing in ``folder``: it raises :class:`WriteError` naming the file and the reason, and leaves
    no staging behind.

    How (on Linux): the new folder is built complete as a hidden sibling ``.<name>.aigi-set-<pid>-*`` (same parent,
    so the same file system): every entry of ``folder`` hard-linked (no data copied; subfolders re-created with
    their mode, group and times), then the new files written over the links. One ``renameat2(RENAME_EXCHANGE)``
    swaps it with ``folder``, so a process killed at any point leaves the earlier set or the new one, never a mix
    (a reader that opens the folder once reads one set; one opening file after file by path may straddle the swap);
    the sibling, now the earlier folder, is then removed. ``folder`` given as a symlink: the folder it
    points at is swapped, the link kept. aigi's writers of one folder take turns (an ``flock`` on
    ``.<name>.aigi-lock`` beside it, removed after), so two processes writing different stems keep both; a program
    other than aigi that creates a file in ``folder`` during those milliseconds loses it (it lands in the earlier
    folder). A process or shell whose working folder is inside a swapped folder would be left in the removed one:
    aigi's own working folder is therefore never swapped, another process's is not known.

    Elsewhere the files are written file by file (atomic each, not as a set): each written complete into a staging
    folder inside ``folder``, then renamed into place, the earlier versions kept until every rename is done so a
    failed rename puts them back; a process killed between two renames leaves new files beside old ones. That is
    used where the swap is not possible or not faithful: not Linux or no ``renameat2`` (glibc < 2.28), a file system
    that refuses the exchange, ``folder`` a mount point or aigi's working folder, a parent folder that is not
    writable, hard links refused, a subfolder not owned and writable by this user or on another file system, a name
    going through a symlinked subfolder, or over ``MAX_SWAP_ENTRIES`` entries. Staging left by a killed process
    (inside or beside ``folder``) is removed by the next ``write_set`` into the same folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        real = folder.resolve(strict=True)
        _remove_abandoned(folder, STAGING_PREFIX)
    except OSError as e:
        raise write_failure(folder, e) from e
    with _writers_lock(real) as locked:
        try:
            if not locked:
                raise _NoSwap("no lock beside the folder")
            _remove_abandoned(real.parent, f".{real.name}{STAGING_PREFIX}")
            _write_by_swap(folder, real, files)
        except _NoSwap:
            _write_file_by_file(folder, files)
    return {name: folder / name for name in files}


# -- the swap: the whole folder at once ------------------------------------------------------------------------------
def _write_by_swap(folder: Path, real: Path, files: dict[str, Writer]) -> None:
    """Build the new folder beside ``real`` and exchange the two; raises :class:`_NoSwap`, having changed nothing,
    where that is not possible. ``folder`` (the path as given) names the files in errors."""
    top = _swappable(real, list(files))
    try:
        staging = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as e:  # the parent is not writable: stage inside the folder
        raise _NoSwap(e) from e
    try:
        try:
            _copy_as_links(real, staging, top, MAX_SWAP_ENTRIES)
        except OSError as e:  # hard links refused (EPERM, EXDEV, EMLINK), a group that cannot be kept
            raise _NoSwap(e) from e
        for name, write in files.items():
            _write_staged(staging / name, write, folder / name)
        _exchange_or_refuse(staging, real, top.st_dev)
    finally:
        _remove_quietly(staging)  # the new folder's links (not swapped), or the earlier folder (swapped)


def _swappable(real: Path, names: list[str]) -> os.stat_result:
    """``real``'s stat where swapping it is possible and faithful, else :class:`_NoSwap`."""
    try:
        top = os.stat(real)
        mount = os.path.ismount(real)
    except OSError as e:
        raise _NoSwap(e) from e
    if _renameat2() is None or top.st_dev in _NO_EXCHANGE or mount or real.parent == real:
        raise _NoSwap("no exchange here")
    if not _ours_to_recreate(top, top.st_dev) or _holds_working_folder(real):
        raise _NoSwap("not a folder to swap")
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise _NoSwap(name)
        if any(real.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
            raise _NoSwap(name)  # it would be written through the link, outside the swapped folder
    return top


def _ours_to_recreate(st: os.stat_result, dev: int) -> bool:
    """A folder this user owns and may write, on the swapped folder's file system (not a mount point in it)."""
    return st.st_dev == dev and st.st_uid == os.geteuid() and st.st_mode & 0o700 == 0o700


def _holds_working_folder(real: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == real or real in cwd.parents


def _copy_as_links(src: Path, dst: Path, src_stat: os.stat_result, budget: int) -> int:
    """Fill the empty folder ``dst`` with ``src``'s entries: subfolders re-created, every other entry (files,
    symlinks, FIFOs) hard-linked, so no data is copied; then ``src``'s mode, group, times and extended attributes
    are given to ``dst``. Returns the entries left of ``budget``; :class:`_NoSwap` where the copy would not be
    faithful (a subfolder not ours, a mount point, too many entries)."""
    with os.scandir(src) as entries:
        for entry in entries:
            if entry.name.startswith(STAGING_PREFIX):  # another writer's staging is never part of a set
                continue
            budget -= 1
            if budget < 0:
                raise _NoSwap("too many entries")
            target = dst / entry.name
            if entry.is_dir(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if not _ours_to_recreate(st, src_stat.st_dev):
                    raise _NoSwap(entry.path)
                os.mkdir(target, 0o700)
                budget = _copy_as_links(Path(entry.path), target, st, budget)
            else:
                os.link(entry.path, target, follow_symlinks=False)
    if os.stat(dst).st_gid != src_stat.st_gid:
        os.chown(dst, -1, src_stat.st_gid)  # before the mode: a chown clears the setgid bit
    shutil.copystat(src, dst, follow_symlinks=False)
    return budget


def _exchange_or_refuse(staging: Path, real: Path, dev: int) -> None:
    try:
        _exchange(staging, real)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            _NO_EXCHANGE.add(dev)  # this file system cannot: do not build the copy again
        raise _NoSwap(e) from e


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> None:
    """Swap the paths ``a`` and ``b`` in one step (``renameat2(RENAME_EXCHANGE)``); ``OSError`` where refused."""
    import ctypes

    function = _renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(b))
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


@contextmanager
def _writers_lock(real: Path) -> Iterator[bool]:
    """Hold the lock aigi's writers of ``real`` share (``.<name>.aigi-lock`` beside it, removed when released);
    yields False, holding nothing, where none can be taken (no ``fcntl``, the parent folder not writable)."""
    path = real.parent / f".{real.name}{LOCK_SUFFIX}"
    fd = _take_lock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _remove_quietly(path)  # while still held: a waiter then finds its file gone and takes a new one
            os.close(fd)


def _take_lock(path: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    while True:
        try:
            flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o666)  # a symlink planted in a shared parent is refused, not followed
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):  # not removed by the writer that held it while this one waited
                return fd
        except OSError:  # a file system without locks
            _remove_quietly(path)
            os.close(fd)
            return None
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


# -- file by file: each file atomic, the set not ---------------------------------------------------------------------
def _write_file_by_file(folder: Path, files: dict[str, Writer]) -> None:
    try:
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


def _write_staged(tmp: Path, write: Writer, final: Path) -> None:
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a hard link to the earlier file (the swap's copy): never written through
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


def _remove_abandoned(where: Path, prefix: str) -> None:
    """Remove the staging folders ``prefix<pid>-*`` in ``where`` whose writer is no longer running (it was killed
    mid-write): partial sets, or an earlier folder swapped out but not yet removed."""
    if os.name != "posix":
        return
    abandoned = re.compile(re.escape(prefix) + r"(\d+)-.+")
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        found = abandoned.fullmatch(name)
        if found and not _running(int(found.group(1))):
            _remove_quietly(where / name)


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
    except ValueError as e:  # e.g. an integer of thousands of digits: "Exceeds the limit (4300 digits) ..."
        reason = " ".join(str(e).split())
        raise ConfigError(f"{path}: not a settings file ({reason})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a settings file (JSON nested too deeply)") from None
