"""File names chosen by someone else reach the terminal and every output escaped (aigi.names.shown), and every path
named or met in a walk gets a row or a `skipped` entry with its true reason."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigi.api import SCORED_VERDICTS
from aigi.cli import app
from aigi.names import shown

runner = CliRunner()

ESC_NAME = b"clear\x1b[2J\x1b]0;owned\x07.png"  # clears the screen and retitles the window when printed raw
BIDI_NAME = "photo\u202egnp.exe.png".encode()  # shows as photo<exe.png reversed>
RAW_NAME = b"caf\xe9.png"  # Latin-1, not UTF-8
HOSTILE = (ESC_NAME, BIDI_NAME, RAW_NAME)
RAW = ("\x1b", "\x07", "\u202e", "\udce9")  # none may reach the output


def _save(folder: Path, name: bytes, seed: int, smooth: bool = True) -> Path:
    a = np.random.default_rng(seed).integers(0, 256, (64, 72, 3), dtype=np.uint8)
    if smooth:
        a = (np.cumsum(a.astype(np.int64), axis=1) % 256).astype(np.uint8)
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    Image.fromarray(a).save(path, format="PNG")
    return path


@pytest.fixture()
def hostile(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(HOSTILE):
        _save(d, name, i)
    os.mkfifo(os.path.join(os.fsencode(d), b"pipe\x1b[31m.png"))
    return d


def _assert_clean(text: str) -> None:
    assert not any(ch in text for ch in RAW), repr(text)


def _expected(folder: Path) -> set[str]:
    return {shown(os.path.join(os.fsencode(folder), n)) for n in HOSTILE}


def test_detect_table_escapes_names_and_reports_the_fifo(hostile, monkeypatch):
    from aigi import cli_tables

    monkeypatch.setattr(cli_tables.out, "width", 400)  # every row on one line, so each name can be found whole
    res = runner.invoke(app, ["detect", str(hostile)])
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
    flat = res.output.replace("│", "").replace(" ", "").replace("\n", "")  # long names fold in the table
    for name in _expected(hostile):
        assert name.replace(" ", "") in flat
    assert "\\x1b[2J\\x1b]0;owned\\x07.png" in flat and "photo\\u202egnp.exe.png" in flat and "caf\\xe9.png" in flat
    assert f"skipped {hostile}/pipe\\x1b[31m.png: not a regular file (FIFO)" in res.output


def test_detect_json_escapes_names(hostile):
    res = runner.invoke(app, ["detect", "--json", str(hostile)])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert {r["path"] for r in payload["results"]} == _expected(hostile)
    assert all(r["verdict"] in SCORED_VERDICTS for r in payload["results"])
    assert payload["skipped"] == [{"path": f"{hostile}/pipe\\x1b[31m.png", "reason": "not a regular file (FIFO)"}]
    _assert_clean(json.dumps(payload, ensure_ascii=False))


def test_inspect_table_and_json_escape_names(hostile):
    res = runner.invoke(app, ["inspect", str(hostile)])
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
    assert "not a regular file (FIFO)" in res.output
    res = runner.invoke(app, ["inspect", "--json", str(hostile)])
    payload = json.loads(res.stdout)
    assert {r["path"] for r in payload["results"]} == _expected(hostile)
    _assert_clean(json.dumps(payload, ensure_ascii=False))


def test_eval_table_escapes_subset_and_file_names(tmp_path):
    root = tmp_path / "bench"
    gen = os.path.join(os.fsencode(root), b"gen\x1b[8m\xff")  # subset named after a hostile folder (ESC[8m hides text)
    for label, seed, smooth in ((b"0_real", 0, True), (b"1_fake", 10, False)):
        folder = os.path.join(gen, label)
        os.makedirs(folder)
        for i, name in enumerate(HOSTILE):
            _save(Path(os.fsdecode(folder)), name, seed + i, smooth)
    stray = os.path.join(os.fsencode(root), b"notes\x1b[2J.txt")
    Path(os.fsdecode(stray)).write_text("not an image")
    res = runner.invoke(app, ["eval", "--data", str(root)])
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
    assert "gen\\x1b[8m\\xff" in res.output
    assert f"skipped {shown(stray)}: not an image file extension" in res.output


def _hostile_bench(root: Path) -> bytes:
    gen = os.path.join(os.fsencode(root), b"gen\x1b[8m\xff")
    for label, seed, smooth in ((b"0_real", 0, True), (b"1_fake", 10, False)):
        folder = os.path.join(gen, label)
        os.makedirs(folder)
        for i, name in enumerate(HOSTILE):
            _save(Path(os.fsdecode(folder)), name, seed + i, smooth)
    Path(os.fsdecode(os.path.join(gen, b"0_real", b"broken\xff.png"))).write_bytes(b"not a png")
    return gen


def test_eval_out_writes_every_file_with_names_escaped(tmp_path):
    gen = _hostile_bench(tmp_path / "bench")
    out = tmp_path / "report"
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "bench"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "report.csv",
        "report.json",
        "report_hist.png",
        "report_reliability.png",
        "report_roc.png",
        "report_scores.csv",
    ]
    scores = (out / "report_scores.csv").read_text(encoding="utf-8")
    _assert_clean(scores)
    assert shown(os.path.join(gen, b"0_real", RAW_NAME)) in scores
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["rows"][0]["subset"] == "gen\\x1b[8m\\xff"
    assert report["errors"][0]["path"] == shown(os.path.join(gen, b"0_real", b"broken\xff.png"))
    _assert_clean(json.dumps(report, ensure_ascii=False) + (out / "report.csv").read_text(encoding="utf-8"))


def test_robustness_keeps_non_utf8_names(tmp_path):
    _hostile_bench(tmp_path / "bench")
    out = tmp_path / "rob"
    res = runner.invoke(
        app, ["robustness", "--data", str(tmp_path / "bench"), "--perturb", "jpeg:90", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    _assert_clean(res.output + (out / "robustness.csv").read_text(encoding="utf-8"))


def test_error_line_escapes_the_name(tmp_path):
    empty = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"empty\x1b[2J\xff")))
    empty.mkdir()
    res = runner.invoke(app, ["detect", str(empty)])
    assert res.exit_code == 2
    _assert_clean(res.output)
    assert f"error: no image files found in {shown(empty)}" in res.output


def test_named_unreadable_missing_and_special_files_each_get_a_reason(tmp_path, monkeypatch):
    ok = _save(tmp_path, b"ok.png", 0)
    locked = _save(tmp_path, b"locked.png", 1)
    real_read_bytes = Path.read_bytes

    def read_bytes(self):  # root reads anything: refuse the way a chmod 000 file would
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    os.mkfifo(tmp_path / "pipe.png")
    monkeypatch.chdir(tmp_path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
        names = [str(ok), str(locked), str(tmp_path / "missing.png"), "pipe.png", "sock.png", "/dev/null"]
        res = runner.invoke(app, ["detect", "--json", *names])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    rows = {Path(r["path"]).name: r for r in payload["results"]}
    assert rows["ok.png"]["verdict"] in SCORED_VERDICTS
    assert rows["locked.png"]["error"] == "cannot read file (Permission denied)"
    assert rows["missing.png"]["error"] == "file not found"
    assert payload["skipped"] == [
        {"path": "pipe.png", "reason": "not a regular file (FIFO)"},
        {"path": "sock.png", "reason": "not a regular file (socket)"},
        {"path": "/dev/null", "reason": "not a regular file (character device)"},
    ]


def test_eval_confine_skips_rows_outside_the_manifest_folder(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    for i in range(3):
        _save(folder, f"r{i}.png".encode(), i)
        _save(folder, f"f{i}.png".encode(), 10 + i, smooth=False)
    _save(tmp_path, b"secret.png", 99)
    rows = [f"r{i}.png,real\nf{i}.png,fake" for i in range(3)] + ["../secret.png,fake"]
    (folder / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    res = runner.invoke(app, ["eval", "--data", str(folder / "m.csv"), "--confine"])
    assert res.exit_code == 0, res.output
    assert f"skipped {folder}/../secret.png: outside the manifest's folder (line 8; --confine)" in res.output
    res = runner.invoke(app, ["eval", "--real", str(folder), "--fake", str(folder), "--confine"])
    assert res.exit_code == 2 and "--confine is for a CSV manifest given with --data" in res.output


def test_train_record_keeps_non_utf8_names_escaped(tmp_path, labelled_images):
    bad = os.path.join(os.fsencode(labelled_images / "1_fake"), b"broken\xff.jpg")
    Path(os.fsdecode(bad)).write_bytes(b"not a jpeg")
    res = runner.invoke(app, ["train", "univfd", "--data", str(labelled_images), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "m" / "config.json").read_text(encoding="utf-8")
    (entry,) = json.loads(text)["training"]["skipped_files"]
    assert entry.startswith(shown(bad) + ": ")  # \xff, not a lone surrogate no other JSON reader accepts


def test_an_unreadable_named_file_is_a_row_not_a_usage_error(tmp_path, monkeypatch):
    ok, locked = _save(tmp_path, b"ok.png", 0), _save(tmp_path, b"locked.png", 1)
    real_access, real_read_bytes = os.access, Path.read_bytes

    def access(path, mode, *args, **kwargs):  # what a non-root user sees for a chmod 000 file
        return False if os.fspath(path).endswith("locked.png") else real_access(path, mode, *args, **kwargs)

    def read_bytes(self):
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    for command in (["detect", "--json"], ["inspect", "--json"]):
        res = runner.invoke(app, [*command, str(ok), str(locked)])
        assert res.exit_code == 0, res.output
        rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
        assert set(rows) == {"ok.png", "locked.png"}
