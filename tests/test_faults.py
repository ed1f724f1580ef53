"""Faults while writing: a full disk, a read-only folder, a process killed mid-write, a failing rename, two processes
on one cache. Each ends in one clear error (or completes), and never in a mixed or corrupted set of files."""

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import FullDisk, fill_cache, mean_colour, read_only, toy_report
from PIL import Image
from typer.testing import CliRunner

import aigi.io as io
from aigi.backbones.base import Preprocess
from aigi.data.transforms import EvalProtocol
from aigi.engine.evaluate import write_report
from aigi.engine.features import FeatureCache, extract
from aigi.errors import AigiError, ConfigError
from aigi.io import STAGING_PREFIX, WriteError, atomic_write, read_json, text_writer, write_set, write_text

TESTS = Path(__file__).parent


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_set(tmp_path):
    """An --out folder holding an earlier report set and files that are not this report."""
    out = tmp_path / "out"
    report, image_set, prob = toy_report(tmp_path, threshold=0.5)
    write_report(report, out, image_set, prob)
    (out / "my_notes.txt").write_text("the user's own file")
    write_text(out / "Chameleon_20240101_000000.csv", "another report stem\n")
    return out, _snapshot(out)


def test_full_disk_part_way_through_a_set_keeps_the_earlier_set(earlier_set, tmp_path, monkeypatch):
    out, before = earlier_set
    report, image_set, prob = toy_report(tmp_path, threshold=0.9)
    FullDisk(monkeypatch, out, budget=3000)  # the tables fit, the plots do not
    with pytest.raises(WriteError) as caught:
        write_report(report, out, image_set, prob)
    monkeypatch.undo()
    err = caught.value
    assert isinstance(err, AigiError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(err).startswith(f"cannot write {out}/report_") and str(err).endswith("No space left on device")
    assert _snapshot(out) == before  # the earlier set whole, nothing new beside it, no temporaries
    paths = write_report(report, out, image_set, prob)  # space again: the new set replaces the old one
    assert json.loads(paths["json"].read_text())["threshold"] == 0.9
    assert (out / "my_notes.txt").read_text() == "the user's own file"
    assert sorted(_snapshot(out)) == sorted(before)


def test_read_only_out_folder_is_one_error_naming_it(earlier_set, tmp_path, monkeypatch):
    out, before = earlier_set
    report, image_set, prob = toy_report(tmp_path, threshold=0.9)
    read_only(monkeypatch, out)
    with pytest.raises(WriteError) as caught:
        write_report(report, out, image_set, prob)
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {out}: Read-only file system"
    assert _snapshot(out) == before


def test_an_exception_in_the_middle_of_a_set_leaves_the_earlier_set(earlier_set, tmp_path, monkeypatch):
    out, before = earlier_set
    report, image_set, prob = toy_report(tmp_path, threshold=0.9)
    import aigi.engine.evaluate as ev

    def crash(data):
        def write(tmp):
            Path(tmp).write_bytes(data[:10])
            raise KeyboardInterrupt  # e.g. Ctrl-C while the plots are written

        return write

    monkeypatch.setattr(ev, "bytes_writer", crash)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, out, image_set, prob)
    assert _snapshot(out) == before


def _refuse_exchange(monkeypatch) -> list[str]:
    """Make the folder swap fail as on a file system without RENAME_EXCHANGE; returns the swaps tried."""
    tried = []

    def refused(staging, folder):
        tried.append(str(folder))
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(io, "_exchange", refused)
    monkeypatch.setattr(io, "_NO_EXCHANGE", set())  # the refusal is remembered per device: not past this test
    return tried


def test_a_failed_rename_puts_the_earlier_files_back(earlier_set, tmp_path, monkeypatch):
    out, before = earlier_set
    report, image_set, prob = toy_report(tmp_path, threshold=0.9)
    _refuse_exchange(monkeypatch)  # file by file, where a rename can fail part way
    real_replace, calls = os.replace, []

    def third_fails(src, dst):
        if Path(dst).parent == out:
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", third_fails)
    with pytest.raises(WriteError, match="Input/output error"):
        write_report(report, out, image_set, prob)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert _beside(out) == []


def _beside(folder: Path) -> list[str]:
    """What write_set left beside ``folder``: its staging siblings and lock file."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from faults import toy_report
import aigi.engine.evaluate as ev

out, marker = Path(sys.argv[2]), Path(sys.argv[3])
plain = ev.bytes_writer

def stalling(data):  # the first PNG is written, then the process hangs until it is killed
    def write(tmp):
        plain(data)(tmp)
        marker.write_text("in the middle of the set")
        time.sleep(300)
    return write

ev.bytes_writer = stalling
report, image_set, prob = toy_report(out.parent, threshold=0.9)
ev.write_report(report, out, image_set, prob)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL")
def test_killed_mid_write_leaves_the_earlier_set_and_a_rerun_completes(earlier_set, tmp_path):
    out, before = earlier_set
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(TESTS), str(out), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the writer never reached the middle of the set"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _snapshot(out) == before  # the new set is built beside the folder: nothing changed in it
    assert any(name.startswith(f".out{STAGING_PREFIX}") for name in _beside(out))  # killed while staging
    report, image_set, prob = toy_report(tmp_path, threshold=0.9)
    paths = write_report(report, out, image_set, prob)
    assert json.loads(paths["json"].read_text())["threshold"] == 0.9
    assert sorted(_snapshot(out)) == sorted(before)
    assert _beside(out) == []  # the abandoned staging folder and the lock file are gone


def test_safetensors_write_failure_is_a_write_error(tmp_path):
    from safetensors.torch import save_file

    target = tmp_path / "model" / "model.safetensors"
    with pytest.raises(WriteError) as caught:  # safetensors' own error (no such folder), not an OSError
        atomic_write(target, lambda tmp: save_file({"w": torch.zeros(2)}, f"{tmp}.d/x"))
    assert str(caught.value) == f"cannot write {target}: No such file or directory"
    assert list(target.parent.iterdir()) == []


def _one_error_line(res) -> str:
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [text for text in res.output.splitlines() if text.startswith("error:")]
    return line


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_calibrate_on_a_full_or_read_only_model_folder_keeps_the_model(labelled_images, tmp_path, monkeypatch, fault):
    from aigi.cli import app

    folder = tmp_path / "model"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(folder)])
    assert res.exit_code == 0, res.output
    (folder / "train_log.jsonl").write_text('{"epoch": 1}\n')  # a file the model set does not own
    before = _snapshot(folder)
    # room for as many bytes as the earlier set: calibration makes config.json and the card longer, so the disk fills
    # during the card, after the new config.json (written file by file, the card kept the old threshold beside it)
    room = sum((folder / name).stat().st_size for name in ("model.safetensors", "config.json", "README.md"))
    FullDisk(monkeypatch, folder, budget=room) if fault == "full" else read_only(monkeypatch, folder)
    res = runner.invoke(app, ["calibrate", "--model", str(folder), "--data", str(labelled_images)])
    monkeypatch.undo()
    line = _one_error_line(res)
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert f"cannot write {folder}" in line and reason in line
    assert _snapshot(folder) == before


def test_train_on_a_full_disk_is_one_error_and_leaves_no_model(labelled_images, tmp_path, monkeypatch):
    from aigi.cli import app

    out = tmp_path / "model"
    FullDisk(monkeypatch, tmp_path, budget=1000)
    res = CliRunner().invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(out)])
    monkeypatch.undo()
    line = _one_error_line(res)
    assert f"cannot write {out}/" in line and "No space left on device" in line
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_eval_out_on_a_full_disk_is_one_error_line(labelled_images, tmp_path, monkeypatch):
    from aigi.cli import app

    out = tmp_path / "rep"
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "--data", str(labelled_images), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = _snapshot(out)
    FullDisk(monkeypatch, out, budget=0)
    res = runner.invoke(app, ["eval", "--data", str(labelled_images), "--out", str(out), "--threshold", "0.9"])
    monkeypatch.undo()
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"cannot write {out}/report" in lines[0] and "No space left on device" in lines[0]
    assert _snapshot(out) == before


def test_robustness_outputs_on_a_full_disk_keep_measured_rows(labelled_images, tmp_path, monkeypatch):
    import aigi.engine.robustness as rob
    from aigi.data.folders import discover
    from aigi.data.perturb import Perturbation

    monkeypatch.setattr(rob, "model_id", lambda model: f"id-{model}")
    monkeypatch.setattr(
        rob,
        "sweep_row",
        lambda m, name, s, p, *a: {
            "model": name,
            "perturbation": p.name,
            "kind": p.kind,
            "level": p.level,
            "mean_auroc": 0.8,
            "errors": 0,
            "subsets": {},
        },
    )
    out, image_set = tmp_path / "rob", discover(labelled_images)
    rob.run_sweep({"a": "m1"}, image_set, [Perturbation(kind="none", level=0)], out)
    before = _snapshot(out)
    disk = FullDisk(monkeypatch, out, budget=10_000)  # room for the state after each row, not for the final set
    with pytest.raises(WriteError, match="robustness"):
        rob.run_sweep({"a": "m1"}, image_set, [Perturbation(kind="jpeg", level=50)], out)
    monkeypatch.undo()
    assert disk.budget == 0
    state = json.loads((out / "robustness.json").read_text())
    assert [r["perturbation"] for r in state["rows"]] == ["none", "jpeg:50"]  # nothing measured is lost
    for name in ("robustness.csv", "robustness.png"):
        assert (out / name).read_bytes() == before[name]  # the earlier CSV and plot, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_two_processes_fill_one_cache(tmp_path):
    images = []
    for i in range(12):
        rgb = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    root = tmp_path / "shared-cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=fill_cache, args=(images, str(root), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    truth = extract(images, mean_colour, Preprocess(size=32), EvalProtocol(crop=32), progress=False).features
    for features in got:
        np.testing.assert_allclose(np.array(features), np.stack(truth), rtol=0, atol=0)
    cache = FeatureCache(root, {"model": "mean-colour"})
    entries = [p for p in cache.dir.rglob("*") if p.is_file() and p.name != "namespace.json"]
    assert len(entries) == len(images)  # one valid entry per image, no temporaries
    import hashlib

    for path, expected in zip(images, truth):
        np.testing.assert_array_equal(cache.get(hashlib.sha256(Path(path).read_bytes()).hexdigest()), expected)


# -- write_set swaps the whole folder: old set or new set, at any point a process is killed ---------------------------
SET = ["report.csv", "report.json", "report_scores.csv", "report/roc.png"]


def _set_writers(tag: str) -> dict:
    return {name: text_writer(f"{tag} {name}\n") for name in SET}


@pytest.fixture
def old_set(tmp_path):
    """A folder holding an earlier set, a user's file, a subfolder of its own and a symlink: (folder, its files)."""
    out = tmp_path / "out"
    write_set(out, _set_writers("old"))
    (out / "notes.txt").write_text("the user's own file")
    (out / "keep").mkdir(mode=0o750)
    (out / "keep" / "data.txt").write_text("kept")
    (out / "link").symlink_to("notes.txt")
    return out, _snapshot(out)


def _new_set(before: dict[str, bytes]) -> dict[str, bytes]:
    return {**before, **{name: f"new {name}\n".encode() for name in SET}}


def test_the_set_is_swapped_in_whole_and_other_entries_kept(old_set):
    out, before = old_set
    notes, mode, folder = (out / "notes.txt").stat().st_ino, (out / "keep").stat().st_mode, out.stat().st_ino
    paths = write_set(out, _set_writers("new"))
    assert paths == {name: out / name for name in SET}
    assert _snapshot(out) == _new_set(before)
    assert out.stat().st_ino != folder  # a new folder, swapped in one step
    assert (out / "notes.txt").stat().st_ino == notes  # the user's file linked, not copied
    assert (out / "keep").stat().st_mode == mode and os.readlink(out / "link") == "notes.txt"
    assert _beside(out) == []


KILLED_AT = """
import os, signal, sys
from pathlib import Path
import aigi.io as io

out, point, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_exchange, real_replace, replaced = getattr(io, "_exchange", None), os.replace, []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def exchange(a, b):
    if point == "before-exchange":
        die()
    real_exchange(a, b)
    if point == "after-exchange":
        die()

def replace(src, dst):
    replaced.append(dst)
    if point == f"rename-{len(replaced)}":
        die()
    real_replace(src, dst)

io._exchange, os.replace = exchange, replace
io.write_set(out, {name: io.text_writer(f"new {name}\\n") for name in names})
"""


def _run_killed(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    subprocess.run(command, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120, stderr=subprocess.DEVNULL)


def _old_or_new_then_rerun(out: Path, before: dict[str, bytes]) -> None:
    after = _snapshot(out)
    assert after in (before, _new_set(before)), sorted(k for k in after if after[k] != before.get(k))
    assert os.readlink(out / "link") == "notes.txt"
    write_set(out, _set_writers("new"))  # removes what the killed process left beside the folder
    assert _snapshot(out) == _new_set(before) and _beside(out) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL")
@pytest.mark.parametrize("point", ["before-exchange", "after-exchange", "rename-1", "rename-2", "rename-3"])
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_set(old_set, point):
    out, before = old_set
    _run_killed([sys.executable, "-c", KILLED_AT, str(out), point, *SET])
    _old_or_new_then_rerun(out, before)


def test_a_file_system_refusing_the_exchange_is_written_file_by_file(old_set, monkeypatch):
    out, before = old_set
    tried = _refuse_exchange(monkeypatch)
    folder = out.stat().st_ino
    write_set(out, _set_writers("new"))
    assert _snapshot(out) == _new_set(before) and out.stat().st_ino == folder
    write_set(out, _set_writers("new"))
    assert tried == [str(out)]  # the refusal is remembered: the copy is not built again
    assert _beside(out) == []


def test_a_symlinked_folder_stays_a_symlink(old_set, tmp_path):
    out, before = old_set
    link = tmp_path / "latest"
    link.symlink_to("out")
    paths = write_set(link, _set_writers("new"))
    assert link.is_symlink() and os.readlink(link) == "out"
    assert paths["report.csv"] == link / "report.csv"
    assert _snapshot(out) == _new_set(before) and _beside(out) == [] and _beside(link) == []


def _refuse_in_parent(monkeypatch, parent: Path, what: str) -> None:
    """Refuse (EACCES) creating aigi's lock file or staging folder in ``parent``, as a parent that is not writable."""
    real_open, real_mkdtemp = os.open, tempfile.mkdtemp

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def lock_open(path, flags, *args, **kwargs):
        if what == "lock" and Path(path).parent == parent and flags & os.O_CREAT:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def staging_mkdtemp(*args, dir=None, **kwargs):
        if what == "staging" and Path(dir) == parent:
            refuse(dir)
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "open", lock_open)
    monkeypatch.setattr(tempfile, "mkdtemp", staging_mkdtemp)


@pytest.mark.parametrize("refused", ["lock", "staging"])  # injected: file modes do not bind root
def test_a_read_only_parent_falls_back_to_staging_inside(old_set, monkeypatch, refused):
    out, before = old_set
    folder = out.stat().st_ino
    _refuse_in_parent(monkeypatch, out.parent, refused)
    write_set(out, _set_writers("new"))
    assert _snapshot(out) == _new_set(before) and out.stat().st_ino == folder
    assert _beside(out) == []


def test_the_working_folder_and_huge_folders_are_not_swapped(old_set, monkeypatch):
    out, before = old_set
    folder = out.stat().st_ino
    monkeypatch.chdir(out / "keep")  # swapping would leave this process in a removed folder
    write_set(out, _set_writers("new"))
    monkeypatch.chdir(out.parent)
    monkeypatch.setattr(io, "MAX_SWAP_ENTRIES", 3)  # e.g. --out naming a home folder: not linked entry by entry
    write_set(out, _set_writers("newer"))
    assert out.stat().st_ino == folder and (out / "report.csv").read_text() == "newer report.csv\n"
    assert _beside(out) == []


def _write_stems(folder: str, tag: str, count: int, barrier) -> None:
    """One of two processes writing their own stems into one folder at once (started with spawn)."""
    barrier.wait(timeout=120)
    for i in range(count):
        write_set(folder, {f"{tag}_{i}.csv": text_writer(f"{tag} {i}\n"), f"{tag}_{i}/a.txt": text_writer("a")})


def test_two_processes_writing_different_stems_keep_both(tmp_path):
    out, count = tmp_path / "out", 25
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_stems, args=(str(out), tag, count, barrier)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    expected = {f"{tag}_{i}{end}" for tag in "ab" for i in range(count) for end in (".csv", "/a.txt")}
    assert set(_snapshot(out)) == expected and _beside(out) == []


def test_an_integer_too_long_to_convert_is_one_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"epochs": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError) as caught:
        read_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "4300 digits" in message and "\n" not in message
