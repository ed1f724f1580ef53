"""Invisible watermark: fixtures embedded by invisible-watermark itself, decoded by aigi's numpy decoder.

The library (``imwatermark``, installed by scripts/setup.sh with ``--no-deps`` beside opencv-python-headless and
PyWavelets) only makes fixtures and serves as the reference; aigi never imports it.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from aigi.cli import app
from aigi.provenance import inspect_file
from aigi.provenance import watermark as wm
from aigi.provenance.fusion import fuse

runner = CliRunner()
SDXL_BITS = [int(b) for b in bin(0b101100111110110010010000011110111011000110011110)[2:]]  # diffusers' WATERMARK_BITS


def _natural(name: str, size=(512, 512)) -> np.ndarray:
    """An skimage sample as an RGB uint8 array of ``size`` (width, height)."""
    return np.asarray(Image.fromarray(getattr(skdata, name)()).convert("RGB").resize(size, Image.BICUBIC))


def _embed(rgb: np.ndarray, kind: str, content, order: str = "BGR") -> np.ndarray:
    """Mark ``rgb`` the way a pipeline does: "BGR" = the reference scripts (RGB flipped to BGR before encoding),
    "RGB" = diffusers before PR #7013 (the RGB array handed over as if it were BGR)."""
    import imwatermark  # installed by scripts/setup.sh (dev); a missing package must fail the test, not skip it

    enc = imwatermark.WatermarkEncoder()
    enc.set_watermark(kind, content)
    if order == "BGR":
        return np.ascontiguousarray(enc.encode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")[..., ::-1])
    return enc.encode(rgb.copy(), "dwtDct")


def _png(path, rgb: np.ndarray):
    Image.fromarray(rgb).save(path)
    return path


def _marks(prov):
    return [f for f in prov.findings if f.source == "watermark"]


def _wm_problems(prov):  # other extractors (C2PA, EXIF) speak for themselves about a broken file
    return [p for p in prov.problems if "watermark" in p]


@pytest.fixture(scope="module")
def astronaut():
    return _natural("astronaut")


@pytest.fixture(scope="module")
def sdxl_marked(astronaut):
    return _embed(astronaut, "bits", SDXL_BITS)


CASES = {
    "sd1": ("bytes", b"StableDiffusionV1", "BGR", "Stable Diffusion 1.x", "StableDiffusionV1", 136),
    "sd2": ("bytes", b"SDV2", "BGR", "Stable Diffusion 2.x", "SDV2", 32),
    "sdxl": ("bits", SDXL_BITS, "BGR", "Stable Diffusion XL", "0xB3EC907BB19E", 48),
    "sdxl-old-diffusers": ("bits", SDXL_BITS, "RGB", "Stable Diffusion XL", "0xB3EC907BB19E", 48),
}


@pytest.mark.parametrize("case", list(CASES))
def test_marked_png_gives_exactly_its_finding(tmp_path, astronaut, case):
    kind, content, order, generator, payload, n = CASES[case]
    prov = inspect_file(_png(tmp_path / f"{case}.png", _embed(astronaut, kind, content, order)))
    assert _wm_problems(prov) == []
    (f,) = _marks(prov)
    assert (f.claim, f.strength) == ("generated", "moderate")
    d = f.details
    assert (d["generator"], d["payload"], d["bits_total"], d["channel_order"]) == (generator, payload, n, order)
    assert d["bit_accuracy"] >= 0.9 and d["bits_matched"] == round(d["bit_accuracy"] * n)
    assert f.summary == f"{generator} invisible watermark ({d['bits_matched']}/{n} bits)"
    assert d["bits_matched"] == n  # astronaut is a lossless, clean carrier: every bit comes back


def test_numpy_decoder_matches_the_library_bit_for_bit(astronaut, sdxl_marked):
    import imwatermark  # installed by scripts/setup.sh (dev); a missing package must fail the test, not skip it

    coffee = _natural("coffee", (517, 300))
    images = [
        astronaut,
        sdxl_marked,
        _embed(astronaut, "bytes", b"StableDiffusionV1", "RGB"),
        coffee,  # odd sizes: crops to multiples of 4 and 8 must agree
        _embed(coffee, "bytes", b"SDV2"),
        _natural("chelsea", (1031, 257)),
        _natural("rocket", (128, 1024)),  # the size rule is on area, so 128 rows are enough
        np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8),
    ]
    for rgb in images:
        for order in ("BGR", "RGB"):
            as_given = np.ascontiguousarray(rgb[..., ::-1]) if order == "BGR" else rgb
            for n in (136, 32, 48):
                ref = np.asarray(imwatermark.WatermarkDecoder("bits", n).decode(as_given, "dwtDct"), np.uint8)
                assert np.array_equal(wm.decode(rgb, n, order), ref), (rgb.shape, order, n)


def test_unmarked_and_grayscale_images_give_no_finding(tmp_path):
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert _marks(inspect_file(_png(tmp_path / f"{name}.png", _natural(name)))) == [], name
    gray = Image.fromarray(skdata.camera()).resize((512, 512))
    gray.save(tmp_path / "camera_L.png")
    gray.convert("RGB").save(tmp_path / "camera_rgb.png")
    for p in ("camera_L.png", "camera_rgb.png"):
        prov = inspect_file(tmp_path / p)
        assert _marks(prov) == [] and _wm_problems(prov) == []
    # A flat U plane decodes to all-equal bits; SD 2.x's payload is 19/32 zeros, so this must be "no signal".
    flat = wm.decode(np.asarray(gray.convert("RGB")), 32)
    assert flat.min() == flat.max()


def test_jpeg_reencode_destroys_the_mark(tmp_path, sdxl_marked):
    """The mark is fragile: one JPEG q75 re-encode (or a resize, or a crop) brings it to chance.
    So a missing watermark says nothing about where an image came from."""
    buf = io.BytesIO()
    Image.fromarray(sdxl_marked).save(buf, "JPEG", quality=75)
    (tmp_path / "marked.jpg").write_bytes(buf.getvalue())
    prov = inspect_file(tmp_path / "marked.jpg")
    assert _marks(prov) == [] and _wm_problems(prov) == []


def test_small_large_and_broken_images(tmp_path, sdxl_marked, monkeypatch):
    Image.fromarray(_natural("astronaut", (255, 256))).save(tmp_path / "tiny.png")  # area 65280 < 256*256
    prov = inspect_file(tmp_path / "tiny.png")
    assert _marks(prov) == [] and _wm_problems(prov) == []
    path = _png(tmp_path / "marked.png", sdxl_marked)
    monkeypatch.setattr(wm, "MAX_PIXELS", 512 * 511)
    prov = inspect_file(path)
    assert _marks(prov) == [] and _wm_problems(prov) == ["watermark not checked: image too large (512x512 pixels)"]
    monkeypatch.undo()
    data = path.read_bytes()
    prov = inspect_file(tmp_path / "cut.png", data=data[: len(data) // 2])
    assert _marks(prov) == []
    (problem,) = _wm_problems(prov)
    assert problem.startswith("watermark not checked: pixels could not be decoded (OSError")


def test_inspect_cli_and_fusion(tmp_path, sdxl_marked):
    d = tmp_path / "imgs"
    d.mkdir()
    _png(d / "sdxl.png", sdxl_marked)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(d / "small.png")
    res = runner.invoke(app, ["inspect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    (f,) = [f for f in rows["sdxl.png"]["findings"] if f["source"] == "watermark"]
    assert (f["source"], f["claim"], f["strength"]) == ("watermark", "generated", "moderate")
    assert (
        f["summary"] == "Stable Diffusion XL invisible watermark (48/48 bits)"
        and f["details"]["channel_order"] == "BGR"
    )
    assert not [f for f in rows["small.png"]["findings"] if f["source"] == "watermark"]
    v = fuse(0.02, 0.5, inspect_file(d / "sdxl.png"))  # the watermark decides, whatever the detector says
    assert (v.label, v.source) == ("generated", "watermark")
    assert v.basis == "generated (watermark: Stable Diffusion XL invisible watermark (48/48 bits))"
    assert v.basis.startswith("generated (watermark: ")
