"""A stack model folder (issue #12): member model folders and a combiner fitted on val, calibrated like any model. It
round-trips, moves whole, refuses a missing or changed member in one line, and really combines its members' logits."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_vit_folder
from typer.testing import CliRunner

from aigi import api
from aigi.backbones import BackboneSpec
from aigi.checkpoints import ModelConfig, build_model, load_model, platt_scaled, save_model, save_safetensors
from aigi.cli import app
from aigi.data.folders import discover
from aigi.data.perturb import parse_perturbation
from aigi.data.transforms import EvalProtocol
from aigi.detectors.stack import StackModel
from aigi.engine.inference import score_paths
from aigi.engine.trainer import train
from aigi.errors import ModelLoadError

runner = CliRunner()


def _member(root: Path, kind: str, seed: int, format_align: bool) -> Path:
    """A univfd model on a tiny random ViT saved as a local folder (so that loading it again gives the same weights),
    with a random head; the two members differ in backbone, input size and protocol."""
    size = 56 if kind == "dinov2" else 32
    spec = BackboneSpec(
        family="hf_vit",
        source=str(tiny_vit_folder(root, kind)),
        preprocess={"size": size, "mean": [0.5] * 3, "std": [0.5] * 3},
    )
    protocol = EvalProtocol(max_short_side=None, crop=None, format_align=format_align)
    model = build_model(ModelConfig(detector="univfd", backbone=spec, protocol=protocol))
    torch.manual_seed(seed)
    with torch.no_grad():
        model.detector.head.weight.normal_()
        model.detector.head.bias.fill_(0.1)
    return save_model(model, root / f"member-{kind}")


@pytest.fixture()
def members(tmp_path) -> list[Path]:
    return [_member(tmp_path, "dinov2", 1, False), _member(tmp_path, "clip_vision_model", 2, True)]


@pytest.fixture()
def stack(members, labelled_images, tmp_path) -> Path:
    train("stack", {"member": members, "val": labelled_images, "out": tmp_path / "stack"}, progress=False)
    return tmp_path / "stack"


def _paths(data: Path) -> list[Path]:
    return [s.path for s in discover(data).samples]


def _one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def _error_lines(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("error:")]


def test_a_stack_folder_round_trips_and_moves_whole(stack, members, labelled_images, tmp_path):
    trained = load_model(stack)
    before = score_paths(trained, _paths(labelled_images)).prob
    moved = Path(shutil.move(stack, tmp_path / "elsewhere"))
    for m in members:
        shutil.rmtree(m)  # the stack holds its own copies
    loaded = load_model(moved)
    assert isinstance(loaded, StackModel) and loaded.config == trained.config
    assert sorted(p.name for p in (moved / "members").iterdir()) == ["0-member-dinov2", "1-member-clip_vision_model"]
    np.testing.assert_array_equal(score_paths(loaded, _paths(labelled_images)).prob, before)
    again = load_model(save_model(loaded, tmp_path / "saved-again"))  # a library save copies the members too
    np.testing.assert_array_equal(score_paths(again, _paths(labelled_images)).prob, before)


def test_a_missing_member_folder_is_one_line_naming_it(stack):
    shutil.rmtree(stack / "members" / "1-member-clip_vision_model")
    msg = _one_line_error(stack, "member member-clip_vision_model of the stack is missing")
    assert str(stack / "members" / "1-member-clip_vision_model") in msg


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_changed_member_file_is_one_line_naming_it(stack, name):
    path = stack / "members" / "0-member-dinov2" / name
    path.write_bytes(path.read_bytes().replace(b"0.5", b"0.6") if name == "config.json" else path.read_bytes() + b" ")
    msg = _one_line_error(stack, "changed since the stack was made")
    assert msg.startswith(str(path))


def test_member_folders_outside_the_stack_are_refused(stack):
    cfg = json.loads((stack / "config.json").read_text())
    cfg["params"]["members"][0]["folder"] = "../member-dinov2"
    (stack / "config.json").write_text(json.dumps(cfg))
    _one_line_error(stack, r"config.json: invalid stack params \(members.0.folder")


def test_the_stack_is_the_sigmoid_of_its_weighted_member_logits_then_calibrated(stack, labelled_images):
    model, paths = load_model(stack), _paths(labelled_images)
    logits = np.stack(
        [np.log(p / (1 - p)) for p in (score_paths(m, paths, calibrated=False).prob for m in model.members)], 1
    )
    w = model.detector.combine.weight.detach().numpy()[0]
    b = float(model.detector.combine.bias)
    assert np.all(w != 0)
    raw = 1 / (1 + np.exp(-(logits @ w + b)))
    np.testing.assert_allclose(score_paths(model, paths, calibrated=False).prob, raw, rtol=1e-12)
    assert model.config.platt is not None  # calibrated on --val by default
    np.testing.assert_allclose(score_paths(model, paths).prob, platt_scaled(raw, *model.config.platt), rtol=1e-12)


def test_a_member_with_zero_weight_cannot_change_the_stack(stack, labelled_images):
    model, paths = load_model(stack), _paths(labelled_images)
    model.detector.set_combiner([model.detector.combine.weight[0, 0].item(), 0.0], 0.0)
    before = score_paths(model, paths).prob
    with torch.no_grad():
        model.members[1].detector.head.weight.mul_(-3.0)
    np.testing.assert_array_equal(score_paths(model, paths).prob, before)


def test_the_training_record_and_card_name_the_members(stack, members, labelled_images):
    cfg = load_model(stack).config
    record = cfg.training
    assert record["recipe"] == "stack" and record["config"]["member"] == [str(m) for m in members]
    assert [m["folder"] for m in record["members"]] == ["members/0-member-dinov2", "members/1-member-clip_vision_model"]
    assert all(0 <= m["val_auroc"] <= 1 for m in record["members"]) and 0 <= record["val_auroc"] <= 1
    assert cfg.calibration["data"] == str(labelled_images)  # --calibrate-on defaults to --val
    card = (stack / "README.md").read_text()
    assert "members/0-member-dinov2: univfd on hf_vit" in card and "members/1-member-clip_vision_model" in card


def test_a_stack_is_evaluated_beside_its_members_under_perturbation_and_in_memory(stack, labelled_images):
    model = load_model(stack)
    jpeg = parse_perturbation("jpeg:75")
    reports = {name: api.evaluate(m, labelled_images, perturbation=jpeg) for name, m in model.named_members().items()}
    reports["stack"] = api.evaluate(model, labelled_images, perturbation=jpeg)
    assert all(r.mean["n"] == 12 and not r.errors for r in reports.values())
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, format="PNG")
    (d,) = api.detect(model, [("upload.png", buf.getvalue())], provenance=False)
    assert d.verdict in ("generated", "real", "uncertain") and 0 <= d.prob_generated <= 1


def test_calibrating_a_stack_in_place_keeps_its_members(stack, labelled_images):
    res = runner.invoke(
        app, ["calibrate", "--model", str(stack), "--data", str(labelled_images), "--target-real-acc", "1.0"]
    )
    assert res.exit_code == 0, res.output
    model = load_model(stack)
    assert model.config.calibration["target_real_acc"] == 1.0 and model.config.calibration["real_acc"] == 1.0


def test_view_options_on_a_stack_are_one_clear_error_and_change_nothing(stack, labelled_images):
    before = (stack / "config.json").read_bytes()
    res = runner.invoke(app, ["calibrate", "--model", str(stack), "--data", str(labelled_images), "--flip"])
    assert res.exit_code != 0 and "a stack has no views of its own" in res.output
    assert (stack / "config.json").read_bytes() == before


def test_cli_trains_a_stack_then_eval_detect_info_work_on_it(members, labelled_images, tmp_path):
    out = tmp_path / "cli-stack"
    member_args = [a for m in members for a in ("--member", str(m))]
    res = runner.invoke(app, ["train", "stack", *member_args, "--val", str(labelled_images), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "stack of 2 (val AUROC 0-member-dinov2 " in res.output and ", stack " in res.output
    res = runner.invoke(app, ["eval", "--model", str(out), "--data", str(labelled_images)])
    assert res.exit_code == 0 and "MEAN" in res.output, res.output
    image = str(_paths(labelled_images)[0])
    res = runner.invoke(app, ["detect", "--json", "--model", str(out), image])
    assert res.exit_code == 0 and json.loads(res.stdout)["model"] == "stack", res.output
    res = runner.invoke(app, ["detect", "--model", str(out), image])
    assert res.exit_code == 0 and "stack of 2 members" in res.output, res.output
    info = json.loads(runner.invoke(app, ["info", "--model", str(out)]).stdout)
    assert [m["model"] for m in info["members"]] == ["univfd on hf_vit", "univfd on hf_vit"]
    res = runner.invoke(app, ["detect", "--explain", "--model", str(out), image])
    assert res.exit_code == 2 and _error_lines(res) == [
        "error: the stack model gives no per-patch map, so --explain has nothing to draw"
    ]


@pytest.mark.parametrize(
    "members_of, match",
    [
        (lambda m, s: [m[0]], "a stack needs at least 2 --member model folders (got 1)"),
        (lambda m, s: [m[0], m[1], m[0]], "is the same model as --member"),
        (lambda m, s: [m[0], Path(shutil.copytree(m[0], m[0].parent / "copy"))], "is the same model as --member"),
        (lambda m, s: [m[0], s], "a stack cannot be a member of a stack"),
        (lambda m, s: [m[0], m[1].parent / "nowhere"], "not a model folder"),
    ],
    ids=["one", "twice", "a-copy", "a-stack", "missing"],
)
def test_cli_refuses_bad_members_in_one_line(members_of, match, stack, members, labelled_images, tmp_path):
    member_args = [a for m in members_of(members, stack) for a in ("--member", str(m))]
    res = runner.invoke(
        app, ["train", "stack", *member_args, "--val", str(labelled_images), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and len(_error_lines(res)) == 1 and match in _error_lines(res)[0], res.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_out_folder_that_exists(stack, members, labelled_images):
    member_args = [a for m in members for a in ("--member", str(m))]
    res = runner.invoke(app, ["train", "stack", *member_args, "--val", str(labelled_images), "--out", str(stack)])
    assert res.exit_code == 2 and "already holds a finished model" in res.output, res.output


def test_a_combiner_of_another_size_is_refused_before_any_member_is_loaded(stack):
    wide = {
        "combine.weight": torch.zeros(1, 3, dtype=torch.float64),
        "combine.bias": torch.zeros(1, dtype=torch.float64),
    }
    save_safetensors(wide, stack / "model.safetensors")
    shutil.rmtree(stack / "members")  # the weights are checked first
    with pytest.raises(ModelLoadError, match=r"model.safetensors does not match its config \(stack\)"):
        load_model(stack)
