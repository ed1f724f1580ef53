"""Progress display: bars count images (not batches), the robustness sweep has one overall bar naming the cell it
scores, MIRROR Phase 1 has one bar over all epochs with the running loss and says when it resumes. Bars draw on
``aigi.progress.make_console``; these tests point it at a string buffer."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import aigi.progress as progress
from aigi.backbones.base import Preprocess
from aigi.data.transforms import EvalProtocol
from aigi.engine.features import extract
from aigi.progress import notice, progress_bar, progress_iter


@pytest.fixture()
def screen(monkeypatch):
    """Bars on: what they draw goes to a buffer (a non-terminal console prints each bar's final state once)."""
    monkeypatch.delenv("AIGI_NO_PROGRESS", raising=False)
    buf = io.StringIO()
    monkeypatch.setattr(progress, "make_console", lambda: Console(file=buf, force_terminal=False, width=200))
    return buf


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Image.new("RGB", (40, 30), (i * 20, i, 0)).save(folder / f"{i}.png") or folder / f"{i}.png" for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------------------------
# progress_iter
# ---------------------------------------------------------------------------------------------------------------
def test_weighted_items_advance_the_bar_by_their_weight(screen):
    batches = [list(range(4)), list(range(4)), list(range(2))]
    seen = list(progress_iter(batches, total=10, description="scoring images", weight=len))
    assert seen == batches
    text = screen.getvalue()
    assert "scoring images" in text and "10/10" in text and "3/3" not in text


def test_unweighted_items_count_one_each(screen):
    assert list(progress_iter(range(7), total=7, description="steps")) == list(range(7))
    assert "7/7" in screen.getvalue()


def test_the_bar_advances_after_each_item_is_processed(screen):
    with progress_bar(total=None, description="outer") as outer:
        task = lambda: next(t for t in outer.progress.tasks if "batches" in t.description)  # noqa: E731
        done = []
        for batch in progress_iter([[1, 2, 3], [4, 5]], total=5, description="batches", weight=len):
            done.append(task().completed)
        assert done == [0, 3]


def test_no_progress_env_and_enabled_false_draw_nothing(screen, monkeypatch):
    assert list(progress_iter([[1, 2]], total=2, description="x", enabled=False, weight=len)) == [[1, 2]]
    with progress_bar(total=3, description="y", enabled=False) as bar:
        bar.advance(2)
        bar.update(status="loss 1")
        assert (bar.completed, bar.status, bar.progress) == (2, "loss 1", None)  # still counts, draws nothing
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")
    assert list(progress_iter([[1, 2]], total=2, description="x", weight=len)) == [[1, 2]]
    with progress_bar(total=3, description="y") as bar:
        assert bar.progress is None
        assert list(progress_iter(range(3), total=3, description="inner")) == [0, 1, 2]
    assert screen.getvalue() == ""


def test_extract_counts_images_not_batches(screen, tmp_path):
    paths = _images(tmp_path / "imgs", 10)
    out = extract(
        paths,
        lambda x: x.mean((2, 3)),
        Preprocess(size=16),
        EvalProtocol(crop=16),
        batch_size=4,
        num_workers=0,
        description="scoring images",
    )
    assert len(out.ok) == 10
    text = screen.getvalue()
    assert re.search(r"scoring images.*\b10/10\b", text) and "3/3" not in text


def test_extract_with_unreadable_files_still_reaches_the_number_of_paths(screen, tmp_path):
    paths = _images(tmp_path / "imgs", 3) + [tmp_path / "bad.jpg"]
    paths[-1].write_bytes(b"not an image")
    out = extract(
        paths, lambda x: x.mean((2, 3)), Preprocess(size=16), EvalProtocol(crop=16), batch_size=3, num_workers=0
    )
    assert len(out.errors) == 1 and "4/4" in screen.getvalue()


def test_extract_is_quiet_under_no_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")
    extract(
        _images(tmp_path / "imgs", 3),
        lambda x: x.mean((2, 3)),
        Preprocess(size=16),
        EvalProtocol(crop=16),
        num_workers=0,
    )
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# nested bars
# ---------------------------------------------------------------------------------------------------------------
def test_nested_bars_are_rows_under_the_outer_one_and_move_it_by_its_share(screen):
    with progress_bar(total=2, description="sweep") as outer:
        outer.share = 1.0
        rows, outer_seen = [], []
        for cell in range(2):
            outer.update(description=f"sweep · cell {cell}")
            for _ in progress_iter([[0, 0], [0, 0]], total=4, description="scoring images", weight=len):
                rows.append([t.description for t in outer.progress.tasks])
                outer_seen.append(round(outer.completed, 6))
            assert len(outer.progress.tasks) == 1  # the nested row is gone when it finishes
            outer.update(completed=cell + 1)
    assert rows[0] == ["[bold]sweep · cell 0[/bold]", "  scoring images"]
    assert outer_seen == [0.0, 0.5, 1.0, 1.5]  # half a cell per batch of 2 out of 4 images
    text = screen.getvalue()
    assert "2/2" in text and "scoring images" not in text  # one final line: the overall bar


def test_descriptions_are_not_read_as_markup(screen):
    with progress_bar(total=1, description="model [v2] · jpeg:75") as bar:
        bar.advance()
    assert "model [v2] · jpeg:75" in screen.getvalue()


def test_a_resumed_bar_starts_part_way(screen):
    with progress_bar(total=10, completed=6, description="phase 1") as bar:
        for _ in range(4):
            bar.advance()
        bar.update(status="loss 0.5")
    text = screen.getvalue()
    assert "10/10" in text and "loss 0.5" in text


def test_notice_is_one_unwrapped_line_on_stderr(capsys):
    long = "resuming from epoch 3 of 10 in /" + "x" * 300
    notice(long)
    assert capsys.readouterr().err == long + "\n"


# ---------------------------------------------------------------------------------------------------------------
# robustness sweep
# ---------------------------------------------------------------------------------------------------------------
def _fake_sweep(monkeypatch, seen):
    import aigi.engine.robustness as rob

    def fake_row(model, name, image_set, p, batch_size=8, progress_on=True):
        paths = [s.path for s in image_set.samples]
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        for _ in progress_iter(
            batches, total=len(paths), description="scoring images", enabled=progress_on, weight=len
        ):
            bars = progress._active.get()
            seen.append([t.description for t in bars.progress.tasks] if bars is not None else None)
        return {
            "model": name,
            "perturbation": p.name,
            "kind": p.kind,
            "level": p.level,
            "mean_auroc": 0.5,
            "mean_ap": 0.5,
            "real_acc": 0.5,
            "fake_acc": 0.5,
            "bal_acc": 0.5,
            "errors": 0,
            "subsets": {},
        }

    monkeypatch.setattr(rob, "sweep_row", fake_row)
    monkeypatch.setattr(rob, "model_id", lambda model: f"id-{model}")
    monkeypatch.setattr(rob, "plot_png", lambda rows, metric="mean_auroc": b"")
    return rob


def test_robustness_has_one_overall_bar_naming_model_and_perturbation(screen, monkeypatch, labelled_images, tmp_path):
    from aigi.data.folders import discover
    from aigi.data.perturb import Perturbation

    seen = []
    rob = _fake_sweep(monkeypatch, seen)
    perts = [Perturbation(kind="none", level=0), Perturbation(kind="jpeg", level=75)]
    image_set = discover(labelled_images)  # 12 images: 2 batches of 8 and 4
    rob.run_sweep({"default": "m1", "other": "m2"}, image_set, perts, tmp_path / "rob", batch_size=8)
    names = [p.name for p in perts]
    assert len(seen) == 2 * 2 * 2
    assert seen[0] == [f"[bold]robustness · default · {names[0]}[/bold]", "  scoring images"]
    assert seen[-1][0] == f"[bold]robustness · other · {names[1]}[/bold]"
    text = screen.getvalue()
    assert "4/4" in text and "scoring images" not in text and "12/12" not in text  # only the overall bar stays
    # a resumed sweep counts the finished cells as done and draws nothing when nothing is left
    screen.seek(0), screen.truncate()
    seen.clear()
    rob.run_sweep(
        {"default": "m1", "other": "m2"}, image_set, perts + [Perturbation(kind="blur", level=2)], tmp_path / "rob"
    )
    assert len(seen) == 4  # two new cells (blur:2 for each model), two batches each
    assert "6/6" in screen.getvalue()
    screen.seek(0), screen.truncate()
    rob.run_sweep({"default": "m1"}, image_set, perts, tmp_path / "rob")
    assert screen.getvalue() == ""


def test_robustness_is_quiet_under_no_progress(monkeypatch, labelled_images, tmp_path, capsys):
    from aigi.data.folders import discover
    from aigi.data.perturb import Perturbation

    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")
    seen = []
    rob = _fake_sweep(monkeypatch, seen)
    rob.run_sweep({"default": "m1"}, discover(labelled_images), [Perturbation(kind="none", level=0)], tmp_path / "rob")
    assert seen == [None, None] and capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# MIRROR Phase 1
# ---------------------------------------------------------------------------------------------------------------
def _phase1(data, out, epochs, progress_on, batch_size=4):
    from test_mirror import BACKBONE

    from aigi.detectors.mirror_recipe import load_memory
    from aigi.engine.trainer import train

    settings = dict(slots=64, heads=8, top_k=8, epochs=epochs, batch_size=batch_size, lr=1e-2, seed=3)
    train("mirror-memory", dict(data=data, out=out, **BACKBONE, **settings), progress=progress_on)
    return load_memory(out)[0].state_dict()


def test_phase1_resume_prints_a_notice(tmp_path, capsys):
    from test_mirror import make_folder

    data = make_folder(tmp_path / "data", real=8, fake=0)
    _phase1(data, tmp_path / "mem", 1, False)
    assert "resuming" not in capsys.readouterr().err
    _phase1(data, tmp_path / "mem", 3, False)
    err = capsys.readouterr().err
    assert err.count("resuming") == 1 and f"resuming from epoch 1 of 3 in {tmp_path / 'mem'}\n" in err


def test_phase1_one_bar_over_all_epochs_with_loss_and_the_same_weights(screen, tmp_path, monkeypatch):
    from test_mirror import make_folder

    data = make_folder(tmp_path / "data", real=8, fake=0)  # 8 token sets, batches of 4: 2 steps per epoch
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")
    quiet = _phase1(data, tmp_path / "quiet", 3, False)
    monkeypatch.delenv("AIGI_NO_PROGRESS")
    shown = _phase1(data, tmp_path / "shown", 3, True)
    for k in quiet:
        assert torch.equal(quiet[k], shown[k]), k  # drawing the bar changes nothing in training
    text = screen.getvalue()
    line = next(ln for ln in text.splitlines() if "mirror-memory epoch" in ln)
    assert "mirror-memory epoch 3/3" in line and "6/6" in line and re.search(r"loss \d", line) and "eta" in line
    assert sum("mirror-memory epoch" in ln for ln in text.splitlines()) == 1  # one bar, not one per epoch
    # resumed: the bar starts at the epochs already done and goes on to the new total
    screen.seek(0), screen.truncate()
    _phase1(data, tmp_path / "shown", 4, True)
    line = next(ln for ln in screen.getvalue().splitlines() if "mirror-memory epoch" in ln)
    assert "mirror-memory epoch 4/4" in line and "8/8" in line
    assert np.isfinite(float(re.search(r"loss (\S+)", line).group(1)))
