"""Real-world processing chains (``--perturb chain:NAME[:SEED]``): each is deterministic under its seed, differs
between seeds, changes the pixels as its description says, and reaches ``aigi eval`` and ``aigi robustness``."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from aigi.cli import app
from aigi.data.chains import CHAINS, SAVED_AS, apply_chain, to_srgb
from aigi.data.perturb import CHAIN_SWEEP, PerturbationError, Perturbed, parse_perturbation
from aigi.data.transforms import EvalProtocol

runner = CliRunner()


def _photo(seed=0, size=(300, 200)):
    rng = np.random.default_rng(seed)
    a = np.cumsum(rng.integers(0, 5, (size[1], size[0], 3)), axis=1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _pixels(im):
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def _jpeg_quality_guess(im) -> int:
    """The quality whose re-encoding changes the image least: a JPEG re-saved at its own quality barely moves."""
    x = _pixels(im)
    errs = {}
    for q in range(40, 100, 5):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        errs[q] = np.abs(_pixels(Image.open(buf)) - x).mean()
    return min(errs, key=errs.get)


@pytest.mark.parametrize("name", list(CHAINS))
def test_each_chain_is_deterministic_under_its_seed_and_differs_between_seeds(name):
    im = _photo()
    a, b = apply_chain(name, im, 0), apply_chain(name, im, 0)
    assert a.mode == "RGB" and a.size == b.size and np.array_equal(_pixels(a), _pixels(b))
    others = [apply_chain(name, im, seed) for seed in range(1, 6)]
    assert any(o.size != a.size or not np.array_equal(_pixels(o), _pixels(a)) for o in others)
    assert a.size != im.size or not np.array_equal(_pixels(a), _pixels(im))  # it changes the image


def test_the_settings_follow_the_pixels_not_the_order_of_scoring():
    first, second = _photo(1), _photo(2)
    alone = apply_chain("editing", second, 3)
    apply_chain("editing", first, 3)
    assert np.array_equal(_pixels(apply_chain("editing", second, 3)), _pixels(alone))


def test_social_caps_the_long_side_and_reencodes_as_jpeg_70_to_85():
    big = _photo(size=(2400, 1600))
    sides = {max(apply_chain("social", big, s).size) for s in range(12)}
    assert sides <= {720, 1080, 1280, 2048} and len(sides) > 1
    small = _photo(size=(300, 200))
    out = apply_chain("social", small, 0)
    assert out.size == small.size  # never enlarged
    assert 65 <= _jpeg_quality_guess(out) <= 90


def test_messenger_downscales_strongly_and_screenshot_rescales_losslessly():
    im = _photo(size=(400, 300))
    for seed in range(5):
        sent = apply_chain("messenger", im, seed)
        w = sent.size[0]
        assert 50 <= _jpeg_quality_guess(sent) <= 70
        assert 0.35 * 400 - 1 <= w <= 0.6 * 400 + 1
        shot = apply_chain("screenshot", im, seed)
        assert 0.5 * 400 - 1 <= shot.size[0] <= 400
    assert SAVED_AS["screenshot"] == "PNG" and SAVED_AS["messenger"] == "JPEG"


def test_screenshot_converts_a_profiled_image_to_srgb():
    im = _photo()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    im.info["icc_profile"] = srgb.tobytes()
    assert np.abs(_pixels(to_srgb(im)) - _pixels(im)).max() <= 2  # sRGB to sRGB: unchanged
    im.info["icc_profile"] = b"not a profile"
    assert np.array_equal(_pixels(to_srgb(im)), _pixels(im))  # a bad profile: left as it is


def test_editing_crops_80_to_95_percent_and_upscale_doubles():
    im = _photo(size=(400, 300))
    for seed in range(5):
        w, h = apply_chain("editing", im, seed).size
        assert 0.8 * 400 - 1 <= w <= 0.95 * 400 + 1 and 0.8 * 300 - 1 <= h <= 0.95 * 300 + 1
    up = apply_chain("upscale", im, 0)
    assert up.size == (800, 600)
    plain = im.resize((800, 600), Image.BICUBIC)
    assert np.abs(_pixels(up) - _pixels(plain)).mean() > 0.5  # sharpened, not a plain bicubic resize


def test_parse_names_record_the_seed_and_bad_chains_are_messages():
    assert parse_perturbation("chain:social").name == "chain:social:0"
    assert parse_perturbation("CHAIN:editing:7").name == "chain:editing:7"
    p = parse_perturbation("chain:messenger:2")
    assert (p.kind, p.chain, p.level, p.saved_as) == ("chain", "messenger", 2, "JPEG")
    assert [parse_perturbation(t).name for t in CHAIN_SWEEP][1:] == [f"chain:{c}:0" for c in CHAINS]
    for bad, why in [("chain:tiktok", "unknown chain"), ("chain:social:x", "whole number"), ("chain:", "unknown")]:
        with pytest.raises(PerturbationError, match=why):
            parse_perturbation(bad)


def test_format_alignment_sees_the_chains_last_save():
    seen = []

    class Spy(EvalProtocol):
        def apply(self, im, fmt, pre):
            seen.append(fmt)
            return im

    for name, fmt in [("social", "JPEG"), ("upscale", "PNG")]:
        Perturbed(Spy(), parse_perturbation(f"chain:{name}")).apply(_photo(), "PNG" if fmt == "JPEG" else "JPEG", None)
    assert seen == ["JPEG", "PNG"]


def test_eval_and_robustness_take_chains(labelled_images, tmp_path):
    res = runner.invoke(
        app, ["eval", "--data", str(labelled_images), "--perturb", "chain:messenger", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 0, res.output
    assert "(chain:messenger:0)" in res.output
    out = tmp_path / "rob"
    res = runner.invoke(app, ["robustness", "--data", str(labelled_images), "-p", "chains", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "robustness.json").read_text())["rows"]
    assert [r["perturbation"] for r in rows] == ["none", *(f"chain:{c}:0" for c in CHAINS)]
    assert all(r["kind"] == "chain" and r["errors"] == 0 for r in rows[1:])
    assert len({r["mean_auroc"] for r in rows}) > 1
    assert Image.open(out / "robustness.png").size[0] > 300
    bad = runner.invoke(app, ["eval", "--data", str(labelled_images), "--perturb", "chain:nope"])
    assert bad.exit_code == 2 and "unknown chain" in bad.output and "Traceback" not in bad.output
