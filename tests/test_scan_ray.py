"""``aigi scan --ray`` on a local Ray instance (2 CPUs): the same rows as a local scan, a failing file as a row with
its error, and a scan interrupted then restarted on Ray that completes exactly once."""

import pyarrow.dataset as pads
import pytest
from typer.testing import CliRunner

from aigi import api, scan, scan_ray
from aigi.cli import app

ray = pytest.importorskip("ray", reason="Ray is in the dev extra; without it the Ray scan cannot be tested")
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _rows(out):
    return [
        {k: v for k, v in r.items()}
        for r in sorted(pads.dataset(str(out)).to_table().to_pylist(), key=lambda r: r["path"])
    ]


def test_ray_and_local_scans_give_identical_rows_and_errors_are_rows(labelled_images, tmp_path):
    (labelled_images / "1_fake" / "broken.png").write_bytes(b"not a picture")
    _declared_png(labelled_images / "1_fake" / "declared.png")  # decided by what it declares, read in a Ray task
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert runner.invoke(app, ["scan", str(labelled_images), "--out", str(local), "--part-size", "5"]).exit_code == 0
    res = runner.invoke(app, ["scan", str(labelled_images), "--out", str(remote), "--part-size", "5", "--ray"])
    assert res.exit_code == 0, res.output
    assert "14 inputs in 3 parts" in res.output
    a, b = _rows(local), _rows(remote)
    assert len(a) == len(b) == 14
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "prob_generated"} == {
            k: v for k, v in y.items() if k != "prob_generated"
        }
        assert (x["prob_generated"] is None) == (y["prob_generated"] is None)
        assert x["prob_generated"] is None or abs(x["prob_generated"] - y["prob_generated"]) < 1e-6
    broken = next(r for r in b if r["path"].endswith("broken.png"))
    assert broken["verdict"] == "error" and broken["error"]
    declared = next(r for r in b if r["path"].endswith("declared.png"))
    assert declared["verdict"] == "generated" and "declared: AUTOMATIC1111" in declared["basis"], declared["basis"]


def _declared_png(path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    Image.new("RGB", (64, 64), (90, 120, 30)).save(path, pnginfo=info)


def test_read_tasks_decode_and_the_actor_only_scores_giving_a_local_scans_rows(labelled_images):
    import pandas as pd

    from aigi.engine.robustness import model_id

    (labelled_images / "1_fake" / "broken.png").write_bytes(b"not a picture")
    paths = sorted(str(p) for p in labelled_images.rglob("*.*"))
    model = api.load()
    prepare = (model.config.protocol, model.detector.backbone.preprocess, True)
    batch = pd.DataFrame({"part": [0] * len(paths), "position": range(len(paths)), "path": paths})
    read = scan_ray.read_batch(batch, model_id(model), ".", prepare)
    assert "data" not in read.columns  # the bytes stay in the task: pixels travel to the actor
    assert {tuple(p.shape) for p in read["pixels"] if p is not None} == {(3, 224, 224)}
    assert read["prepare_error"].notna().sum() == 1
    scored = scan_ray.ScoreActor(None, "auto", True, 8, False)(read)
    local = scan.score_part(model, paths, model_id(model), True, 8)
    assert [scan_ray._plain_row(r) for r in scored.drop(columns=["part", "position"]).to_dict("records")] == local


def test_an_interrupted_scan_restarted_on_ray_completes_exactly_once(labelled_images, tmp_path, monkeypatch):
    out, original = tmp_path / "out", scan.score_part

    def dies_on_the_second_part(model, chunk, *args):
        if chunk[0] != next(iter(sorted(str(p) for p in labelled_images.rglob("*.jpg")))):
            raise KeyboardInterrupt
        return original(model, chunk, *args)

    monkeypatch.setattr(scan, "score_part", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        scan.run(api.load(), [str(labelled_images)], out, part_size=5)
    monkeypatch.undo()
    assert len(list(out.glob("part-*.parquet"))) == 1
    counts = scan_ray.run(None, [str(labelled_images)], out, part_size=5)
    assert counts == {"inputs": 12, "written": 2, "kept": 1, "errors": 0, "kept_errors": 0}
    rows = _rows(out)
    assert len(rows) == 12 and len({r["path"] for r in rows}) == 12


def test_a_path_listed_twice_keeps_its_place_in_the_part(labelled_images, tmp_path):
    files = [str(p) for p in sorted(labelled_images.rglob("*.jpg"))][:3]
    listed = [files[0], files[1], files[0], files[2]]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    counts = scan_ray.run(None, [str(tmp_path / "list.txt")], tmp_path / "out", part_size=4)
    assert counts["written"] == 1
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "out" / "part-000000.parquet").column("path").to_pylist() == listed


def test_relative_paths_are_read_from_the_drivers_folder(labelled_images, tmp_path, monkeypatch):
    monkeypatch.chdir(labelled_images)  # Ray's workers started elsewhere: they must not resolve paths in their own
    files = sorted(str(p.relative_to(labelled_images)) for p in labelled_images.rglob("*.jpg"))[:3]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    counts = scan_ray.run(None, [str(tmp_path / "list.txt")], tmp_path / "out", part_size=4)
    rows = _rows(tmp_path / "out")
    assert counts["errors"] == 0 and [r["path"] for r in rows] == files and all(r["error"] is None for r in rows)


def test_actors_that_leave_no_cpu_for_reading_are_refused_not_left_waiting(labelled_images, tmp_path):
    from aigi.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves no CPU for the read tasks"):
        scan_ray.run(None, [str(labelled_images)], tmp_path / "out", part_size=5, actors=2)  # 2 CPUs in all
    counts = scan_ray.run(None, [str(labelled_images)], tmp_path / "out", part_size=5, actors=2, cpus_per_actor=0.5)
    assert counts["written"] == 3 and counts["errors"] == 0
