"""``aigi scan``: every input kind, one row per input with the same verdicts as ``aigi detect``, bad files as rows
with their error, and a scan killed part-way that resumes exactly once."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aigi import api, scan
from aigi.cli import app

runner = CliRunner()


def _rows(out):
    return sorted(pads.dataset(str(out)).to_table().to_pylist(), key=lambda r: r["path"])


@pytest.fixture()
def images(labelled_images):
    (labelled_images / "1_fake" / "broken.png").write_bytes(b"not a picture")
    return labelled_images


def test_a_folder_scan_matches_aigi_detect_and_keeps_bad_files_as_rows(images, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["scan", str(images), "--out", str(out), "--part-size", "5"])
    assert res.exit_code == 0, res.output
    assert "13 inputs in 3 parts" in res.output
    rows = _rows(out)
    assert len(rows) == 13 and len({r["path"] for r in rows}) == 13
    detect = runner.invoke(app, ["detect", str(images), "--json"])
    by_path = {d["path"]: d for d in json.loads(detect.output)["results"]}
    for r in rows:
        d = by_path[r["path"]]
        assert r["verdict"] == d["verdict"] and r["basis"] == d["basis"]
        if d["prob_generated"] is not None:
            assert r["prob_generated"] == pytest.approx(d["prob_generated"], abs=1e-4)
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert broken["verdict"] == "error" and "not an image" in broken["error"] and broken["size"] == 13
    good = next(r for r in rows if r["error"] is None)
    assert len(good["sha256"]) == 64 and good["size"] > 0 and good["model_id"]
    assert pq.read_schema(sorted(out.glob("part-*.parquet"))[0]).names == list(scan.COLUMNS)


def test_lists_tables_and_globs_give_the_same_rows(images, tmp_path):
    files = [str(p) for p in sorted(images.rglob("*.jpg"))][:4] + [str(tmp_path / "missing.jpg")]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    pacsv.write_csv(pa.table({"file": files}), tmp_path / "index.csv")
    pq.write_table(pa.table({"file": files}), tmp_path / "index.parquet")
    results = {}
    for name, source, extra in [
        ("txt", tmp_path / "list.txt", []),
        ("csv", tmp_path / "index.csv", ["--path-column", "file"]),
        ("parquet", tmp_path / "index.parquet", ["--path-column", "file"]),
    ]:
        res = runner.invoke(app, ["scan", str(source), "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        results[name] = [(r["path"], r["verdict"], r["prob_generated"]) for r in _rows(tmp_path / name)]
    assert results["txt"] == results["csv"] == results["parquet"] and len(results["txt"]) == 5
    missing = [r for r in _rows(tmp_path / "txt") if r["path"].endswith("missing.jpg")][0]
    assert missing["verdict"] == "error" and missing["error"]
    pattern = str(images / "0_real" / "*.jpg")
    res = runner.invoke(app, ["scan", pattern, "--out", str(tmp_path / "glob")])
    assert res.exit_code == 0 and len(_rows(tmp_path / "glob")) == 6
    bad = runner.invoke(app, ["scan", str(tmp_path / "index.csv"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no column 'path'" in bad.output and "Traceback" not in bad.output


def test_a_killed_scan_resumes_without_rescoring_or_duplicates(images, tmp_path, monkeypatch):
    out, model = tmp_path / "out", api.load()
    scored, original = [], scan.score_part

    def dies_after_two(*args, **kwargs):
        if len(scored) == 2:
            raise KeyboardInterrupt  # killed while scoring the third part
        scored.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(scan, "score_part", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        scan.run(model, [str(images)], out, part_size=4)
    assert len(list(out.glob("part-*.parquet"))) == 2 and not list(out.glob(".*tmp"))
    monkeypatch.setattr(scan, "score_part", lambda *a, **k: scored.append(a[1]) or original(*a, **k))
    counts = scan.run(model, [str(images)], out, part_size=4)
    assert counts == {"inputs": 13, "written": 2, "kept": 2, "errors": 1, "kept_errors": 0}
    assert len(scored) == 4 and sum(map(len, scored)) == 13  # the first two parts were not scored again
    rows = _rows(out)
    assert len(rows) == 13 and len({r["path"] for r in rows}) == 13


def test_a_folder_of_another_run_is_refused(images, tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, ["scan", str(images), "--out", str(out)]).exit_code == 0
    other = runner.invoke(app, ["scan", str(images), "--out", str(out), "--part-size", "3"])
    assert other.exit_code == 2 and "another --part-size: part_size was 512, now 3" in other.output
    plain = runner.invoke(app, ["scan", str(images), "--out", str(out), "--no-provenance"])
    assert plain.exit_code == 2 and "another provenance setting" in plain.output
    (images / "0_real" / "new.jpg").write_bytes((images / "0_real" / "0_real_0.jpg").read_bytes())
    changed = runner.invoke(app, ["scan", str(images), "--out", str(out)])
    assert changed.exit_code == 2 and "holds other inputs" in changed.output


def test_retry_errors_scores_again_only_the_parts_with_unreadable_inputs(images, tmp_path):
    files = [str(p) for p in sorted(images.rglob("*.jpg"))][:3]
    late = tmp_path / "late.jpg"  # listed before it exists: a file copied late, a network failure
    (tmp_path / "list.txt").write_text("\n".join([*files, str(late)]) + "\n")
    scan_args = ["scan", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out"), "--part-size", "2"]
    first = runner.invoke(app, scan_args)
    assert first.exit_code == 0 and "1 unreadable" in first.output, first.output
    late.write_bytes(Path(files[0]).read_bytes())
    resumed = runner.invoke(app, scan_args)
    assert "0 written now, 2 kept" in resumed.output  # a plain rerun keeps every finished part
    retried = runner.invoke(app, [*scan_args, "--retry-errors"])
    assert retried.exit_code == 0 and "1 written now, 1 kept" in retried.output, retried.output
    rows = {r["path"]: r for r in _rows(tmp_path / "out")}
    assert len(rows) == 4 and rows[str(late)]["error"] is None and rows[str(late)]["verdict"] != "error"
    assert rows[str(late)]["sha256"] == rows[files[0]]["sha256"]


def test_ray_without_the_extra_says_how_to_install_it(images, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: importing it fails
    res = runner.invoke(app, ["scan", str(images), "--out", str(tmp_path / "out"), "--ray"])
    assert res.exit_code == 2 and "pip install 'aigi[ray]'" in res.output and "Traceback" not in res.output


def test_uris_are_read_through_pyarrow_and_an_unreachable_one_is_a_row(images, tmp_path):
    files = [p.resolve() for p in sorted(images.rglob("*.jpg"))][:2]
    listed = [p.as_uri() for p in files] + [(tmp_path / "gone.jpg").as_uri()]
    (tmp_path / "uris.txt").write_text("\n".join(listed) + "\n")
    (tmp_path / "paths.txt").write_text("\n".join(map(str, files)) + "\n")
    for name in ("uris", "paths"):
        res = runner.invoke(app, ["scan", str(tmp_path / f"{name}.txt"), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    by_uri, by_path = _rows(tmp_path / "uris"), _rows(tmp_path / "paths")
    scored = [r for r in by_uri if r["path"].startswith("file://") and r["error"] is None]
    assert [(r["sha256"], r["prob_generated"], r["verdict"]) for r in scored] == [
        (r["sha256"], r["prob_generated"], r["verdict"]) for r in by_path
    ]
    failed = {r["path"]: r for r in by_uri if r["error"] is not None}
    assert set(failed) == set(listed[2:]) and all(r["verdict"] == "error" for r in failed.values())


def test_a_failed_start_blocks_nothing_and_the_same_list_from_elsewhere_resumes(images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    typo = runner.invoke(app, ["scan", str(tmp_path / "nowhere"), "--out", str(out)])
    assert typo.exit_code == 2 and "no such file, folder or pattern" in typo.output and not out.exists()
    out.mkdir()
    (out / "_scan.json").write_text('{"sources": ["elsewhere"]}')  # an attempt that failed before its first part
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in sorted(images.rglob("*.jpg"))) + "\n")
    monkeypatch.chdir(tmp_path)
    first = runner.invoke(app, ["scan", "list.txt", "--out", str(out), "--part-size", "5"])
    assert first.exit_code == 0 and "12 inputs in 3 parts" in first.output, first.output
    (out / "part-000002.parquet").unlink()
    monkeypatch.chdir(images)  # the same list named by its absolute path, from another folder
    again = runner.invoke(app, ["scan", str(tmp_path / "list.txt"), "--out", str(out), "--part-size", "5"])
    assert again.exit_code == 0 and "1 written now, 2 kept" in again.output, again.output
    spelled = runner.invoke(app, ["scan", str(images), "--out", str(tmp_path / "walk"), "--part-size", "5"])
    assert spelled.exit_code == 0
    walked_as = runner.invoke(app, ["scan", ".", "--out", str(tmp_path / "walk"), "--part-size", "5"])  # cwd: images
    assert walked_as.exit_code == 2 and "first difference" in walked_as.output, walked_as.output


def test_relative_paths_in_a_list_resumed_from_another_folder_are_refused(images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)
    listed = sorted(str(p.relative_to(images)) for p in images.rglob("*.jpg"))[:4]
    (tmp_path / "list.txt").write_text("# relative to the folder the scan runs in\n" + "\n".join(listed) + "\n")
    args = ["scan", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out"), "--part-size", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "4 inputs in 2 parts" in first.output, first.output  # the comment is no input
    (tmp_path / "out" / "part-000001.parquet").unlink()
    monkeypatch.chdir(tmp_path)
    moved = runner.invoke(app, args)
    assert moved.exit_code == 2 and f"read from {images} when the scan began" in moved.output, moved.output


def test_the_summary_names_kept_errors_and_nothing_readable_exits_1(tmp_path):
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.jpg'}\n{tmp_path / 'b.jpg'}\n")
    args = ["scan", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out")]
    first = runner.invoke(app, args)
    assert first.exit_code == 1 and "2 inputs in 1 part under" in first.output, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "2 unreadable in the kept parts (--retry-errors" in again.output, again.output
    stray = runner.invoke(app, [*args, "--actors", "4"])
    assert stray.exit_code == 2 and "add --ray" in stray.output


def test_ctrl_c_says_what_is_kept_and_how_to_resume(images, tmp_path, monkeypatch):
    original, calls = scan.score_part, []

    def interrupted_on_the_second_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(scan, "score_part", interrupted_on_the_second_part)
    res = runner.invoke(app, ["scan", str(images), "--out", str(tmp_path / "out"), "--part-size", "5"])
    assert res.exit_code == 130 and "interrupted: 1 finished parts are kept" in res.output, res.output
    assert "the same command resumes" in res.output and "Traceback" not in res.output
