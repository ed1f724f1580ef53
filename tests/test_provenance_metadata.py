"""Plain-metadata provenance: fixtures written here, exact findings asserted, malformed variants never crash."""

import io
import json
import struct

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from aigi.cli import app
from aigi.provenance import inspect_file
from aigi.provenance.fusion import fuse

runner = CliRunner()

A1111 = (
    "a cat astronaut, highly detailed\nNegative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: abcd1234, Model: v1-5-pruned-emaonly, Version: v1.6.0"
)
COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
}
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
    ' Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/{kind}" xmp:CreatorTool="{tool}"/>'
    "</rdf:RDF></x:xmpmeta>"
)


def _png(path, **text):
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    Image.new("RGB", (48, 40), (90, 120, 30)).save(path, pnginfo=info)
    return path


def _camera_jpeg(path, software=None):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D Mark IV"
    if software:
        exif[0x0131] = software
    ifd = exif.get_ifd(0x8769)
    ifd[0x8827] = 400  # ISO
    ifd[0xA434] = "EF24-70mm f/2.8L II USM"
    Image.new("RGB", (48, 40), (20, 40, 60)).save(path, exif=exif)
    return path


def _only(prov, source):
    hits = [f for f in prov.findings if f.source == source]
    assert len(hits) == 1, prov.findings
    return hits[0]


def test_a1111_parameters(tmp_path):
    prov = inspect_file(_png(tmp_path / "a.png", parameters=A1111))
    f = _only(prov, "png-text")
    assert (f.claim, f.strength) == ("generated", "weak")
    assert f.summary == "AUTOMATIC1111 parameters (model v1-5-pruned-emaonly)"
    assert f.details["prompt"] == "a cat astronaut, highly detailed"
    assert f.details["negative_prompt"] == "blurry, lowres"
    assert f.details["settings"]["Steps"] == "20" and f.details["settings"]["Sampler"] == "Euler a"
    assert f.details["settings"]["Model hash"] == "abcd1234"
    assert prov.problems == []


def test_comfyui_prompt_and_workflow(tmp_path):
    prov = inspect_file(
        _png(tmp_path / "c.png", prompt=json.dumps(COMFY_PROMPT), workflow=json.dumps({"nodes": [{}, {}, {}]}))
    )
    f = _only(prov, "png-text")
    assert f.summary == "ComfyUI workflow (model sd_xl_base_1.0.safetensors)"
    assert f.details["prompts"] == ["a lighthouse at dusk"] and f.details["nodes"] == 3


def test_invokeai_novelai_fooocus_midjourney(tmp_path):
    inv = inspect_file(
        _png(
            tmp_path / "i.png",
            invokeai_metadata=json.dumps({"positive_prompt": "a fox", "model": {"name": "juggernaut"}}),
        )
    )
    assert _only(inv, "png-text").details == {"generator": "InvokeAI", "model": "juggernaut", "prompt": "a fox"}
    nai = inspect_file(
        _png(
            tmp_path / "n.png",
            Software="NovelAI",
            Source="Stable Diffusion 1D44365E",
            Comment=json.dumps({"prompt": "1girl", "steps": 28, "seed": 7}),
        )
    )
    f = _only(nai, "png-text")
    assert (
        f.details["generator"] == "NovelAI"
        and f.details["prompt"] == "1girl"
        and f.details["settings"] == {"steps": 28, "seed": 7}
    )
    foo = inspect_file(
        _png(tmp_path / "f.png", parameters=json.dumps({"Prompt": "a boat", "Base Model": "juggernautXL"}))
    )
    assert _only(foo, "png-text").details["model"] == "juggernautXL"
    mj = inspect_file(
        _png(
            tmp_path / "m.png",
            Description="a castle in the clouds --ar 16:9 Job ID: 1c2d3e4f-aaaa-bbbb-cccc-0123456789ab",
        )
    )
    assert _only(mj, "png-text").details["generator"] == "Midjourney"


def test_camera_exif_and_generator_software(tmp_path):
    prov = inspect_file(_camera_jpeg(tmp_path / "cam.jpg", software="Adobe Lightroom Classic 13.0"))
    cam = next(f for f in prov.findings if f.claim == "captured")
    assert (cam.source, cam.strength) == ("exif", "weak")
    assert (
        cam.details["Make"] == "Canon"
        and cam.details["Model"] == "Canon EOS 5D Mark IV"
        and cam.details["LensModel"].startswith("EF24-70")
    )
    assert any(f.claim == "info" and f.details.get("value") == "Adobe Lightroom Classic 13.0" for f in prov.findings)
    gen = inspect_file(_camera_jpeg(tmp_path / "gen.jpg", software="Stable Diffusion XL"))
    assert any(
        f.claim == "generated" and f.source == "exif" and "Stable Diffusion XL" in f.summary for f in gen.findings
    )


def test_parameters_in_jpeg_exif_usercomment(tmp_path):
    """AUTOMATIC1111 (UTF-16 UserComment in the Exif IFD) and Fooocus (plain JSON string in IFD0) write JPEGs this way."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg", exif=exif)
    f = _only(inspect_file(tmp_path / "a.jpg"), "exif")
    assert f.summary == "AUTOMATIC1111 parameters in EXIF UserComment (model v1-5-pruned-emaonly)"
    assert f.details["prompt"] == "a cat astronaut, highly detailed"
    exif = Image.Exif()
    exif[0x0131] = "Fooocus v2.5.5"
    exif[0x9286] = json.dumps({"Prompt": "a red boat", "Base Model": "juggernautXL_v8"})
    Image.new("RGB", (40, 30)).save(tmp_path / "f.jpg", exif=exif)
    found = [f for f in inspect_file(tmp_path / "f.jpg").findings if f.claim == "generated"]
    assert any(
        f.details.get("model") == "juggernautXL_v8" and f.details.get("prompt") == "a red boat" for f in found
    ), found


def _with_iptc(jpeg: bytes, *fields: tuple[int, bytes]) -> bytes:
    """Pillow cannot write IPTC: add an APP13 "Photoshop 3.0" segment with an 8BIM 0x0404 IIM block by hand."""
    iim = b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(v)) + v for tag, v in fields)
    res = (
        b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim)) + iim + b"\x00" * (len(iim) % 2)
    )
    app13 = b"Photoshop 3.0\x00" + res
    return jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(app13) + 2) + app13 + jpeg[2:]


def test_iptc_fields(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "JPEG")
    (tmp_path / "i.jpg").write_bytes(
        _with_iptc(buf.getvalue(), (120, b"a castle, made with Midjourney v6"), (80, b"Jane Doe"))
    )
    f = _only(inspect_file(tmp_path / "i.jpg"), "iptc")
    assert (f.claim, f.details["record"]) == ("info", "2:120")  # a caption is free text: mentioned, never deciding
    assert f.summary == "IPTC field names a generator: a castle, made with Midjourney v6"
    (tmp_path / "p.jpg").write_bytes(_with_iptc(buf.getvalue(), (65, b"Adobe Firefly Image 3")))
    assert _only(inspect_file(tmp_path / "p.jpg"), "iptc").claim == "generated"  # 2:65 names the originating program


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_xmp_digital_source_type(tmp_path, fmt):
    xmp = XMP.format(kind="compositeWithTrainedAlgorithmicMedia", tool="Adobe Photoshop 25.0")
    path = tmp_path / f"x.{fmt.lower()}"
    if fmt == "JPEG":
        Image.new("RGB", (32, 32)).save(path, xmp=xmp.encode())
    else:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        Image.new("RGB", (32, 32)).save(path, pnginfo=info)
    prov = inspect_file(path)
    dst = next(f for f in prov.findings if "DigitalSourceType" in f.details)
    assert (dst.claim, dst.summary) == ("ai-edited", "XMP digital source type: compositeWithTrainedAlgorithmicMedia")
    tool = next(f for f in prov.findings if "CreatorTool" in f.details)
    assert tool.claim == "info" and tool.details["CreatorTool"] == "Adobe Photoshop 25.0"


def _malformed(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good = _png(tmp_path / "g.png", parameters=A1111).read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00garbage-garbage" + bytes(range(256)) * 4)
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    big = "<x:xmpmeta>" + "A" * (2 << 20) + "</x:xmpmeta>"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", big, zip=True)
    Image.new("RGB", (8, 8)).save(d / "huge_xmp.png", pnginfo=info)
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>'
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", bomb)
    Image.new("RGB", (8, 8)).save(d / "entities.png", pnginfo=info)
    _png(d / "bad_comfy.png", prompt="{not json at all")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta><unclosed>")
    Image.new("RGB", (8, 8)).save(d / "broken_xmp.png", pnginfo=info)
    return d


def test_malformed_metadata_is_a_problem_not_a_crash(tmp_path):
    d = _malformed(tmp_path)
    problems = {p.name: inspect_file(p).problems for p in sorted(d.iterdir())}
    assert problems["empty.png"] == ["empty file (0 bytes)"]
    assert problems["text.png"] == ["not an image (unrecognised or unsupported format)"]
    assert any("XMP packet with a DTD" in p for p in problems["entities.png"])
    assert any("text chunk 'prompt' (JSONDecodeError" in p for p in problems["bad_comfy.png"])
    assert any(p.startswith("metadata unreadable: XMP (") for p in problems["broken_xmp.png"])
    # PIL refuses the 2 MiB chunk; it is skipped, by name, and the rest of the file is still read
    assert problems["huge_xmp.png"] == [
        "metadata unreadable: text chunk 'XML:com.adobe.xmp' inflates past 1048576 bytes (skipped)"
    ]
    assert isinstance(problems["garbage.jpg"], list) and isinstance(problems["truncated.png"], list)


def test_inspect_cli_on_a_folder_of_malformed_files(tmp_path):
    d = _malformed(tmp_path)
    _png(d / "ok.png", parameters=A1111)
    res = runner.invoke(app, ["inspect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert set(rows) >= {
        "truncated.png",
        "garbage.jpg",
        "empty.png",
        "huge_xmp.png",
        "entities.png",
        "bad_comfy.png",
        "ok.png",
    }
    assert rows["ok.png"]["findings"][0]["summary"].startswith("AUTOMATIC1111")
    Image.new("RGB", (16, 16)).save(d / "plain.png")
    table = runner.invoke(app, ["inspect", str(d)])
    assert table.exit_code == 0 and "metadata unreadable" in table.output
    assert table.output.count("nothing declared") == 1  # only the plain file; a file with problems shows them instead


def test_fusion_rules(tmp_path):
    a1111 = inspect_file(_png(tmp_path / "a.png", parameters=A1111))
    v = fuse(0.1, 0.5, a1111)
    assert (
        v.label == "generated"
        and v.basis.startswith("generated (declared: AUTOMATIC1111 parameters")
        and "unsigned metadata" in v.basis
    )
    cam = inspect_file(_camera_jpeg(tmp_path / "cam.jpg"))
    assert fuse(0.08, 0.5, cam).basis == "real (detector 0.08; camera EXIF present)"
    assert (
        fuse(0.93, 0.5, cam).basis == "generated (detector 0.93; camera EXIF present)"
    )  # EXIF never overrides the detector
    assert fuse(None, 0.5, cam).label == "unknown"
    assert fuse(0.93, 0.5, None).basis == "generated (detector 0.93)"


def test_detect_reports_the_basis(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _png(d / "a1111.png", parameters=A1111)
    _camera_jpeg(d / "cam.jpg")
    res = runner.invoke(app, ["detect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert rows["a1111.png"]["verdict"] == "generated" and "declared: AUTOMATIC1111" in rows["a1111.png"]["basis"]
    assert rows["a1111.png"]["provenance"]["findings"][0]["source"] == "png-text"
    cam = rows["cam.jpg"]
    assert cam["verdict"] in (cam["detector_verdict"], "uncertain") and cam["basis"].endswith("camera EXIF present)")
    res = runner.invoke(app, ["detect", "--json", "--no-provenance", str(d)])
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert (
        rows["a1111.png"]["verdict"] in (rows["a1111.png"]["detector_verdict"], "uncertain")
        and "provenance" not in rows["a1111.png"]
    )


def test_mutated_files_never_crash(tmp_path):
    """Random byte flips and cuts in metadata-rich files: every result is findings and/or problems, never an exception."""
    import random

    rng = random.Random(0)
    seeds = [
        _png(tmp_path / "s.png", parameters=A1111, prompt=json.dumps(COMFY_PROMPT)).read_bytes(),
        _camera_jpeg(tmp_path / "s.jpg", software="Stable Diffusion").read_bytes(),
    ]
    for i in range(60):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.5:
            data = data[: rng.randrange(8, len(data))]
        path = tmp_path / f"m{i}.bin"
        path.write_bytes(bytes(data))
        prov = inspect_file(path)
        assert isinstance(prov.findings, list) and isinstance(prov.problems, list)


def test_only_a_trusted_c2pa_capture_claim_overrides_the_detector():
    from aigi.provenance.findings import Finding, Provenance

    def capture(strength):
        return Provenance(
            "x.jpg", [Finding("c2pa", "captured", strength, "C2PA by Leica: captured", {"issuer": "Leica Camera AG"})]
        )

    assert (
        fuse(0.9, 0.5, capture("strong")).basis
        == "real (declared: C2PA capture by Leica Camera AG, trusted; detector 0.90)"
    )
    assert fuse(0.9, 0.5, capture("moderate")).basis == "generated (detector 0.90; C2PA by Leica: captured)"


def test_a_trusted_capture_outranks_a_weak_generated_declaration():
    from aigi.provenance.findings import Finding, Provenance

    prov = Provenance(
        "x.jpg",
        [
            Finding("c2pa", "captured", "strong", "C2PA by Leica: captured", {"issuer": "Leica Camera AG"}),
            Finding("png-text", "generated", "weak", "AUTOMATIC1111 parameters", {}),
        ],
    )
    v = fuse(0.02, 0.5, prov)
    assert (
        v.label == "real"
        and v.basis
        == "real (declared: C2PA capture by Leica Camera AG, trusted; detector 0.02; also declared: AUTOMATIC1111 parameters)"
    )


def test_free_text_naming_a_generator_never_decides(tmp_path):
    for caption in (
        "Vista dalle colline di Firenze",
        "Boeing 747 on the runway",
        "Imagen de Juan Pérez",
        "made with Stable Diffusion",
    ):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x010E] = "Canon", "EOS R5", caption
        Image.new("RGB", (32, 32)).save(tmp_path / "c.jpg", exif=exif)
        prov = inspect_file(tmp_path / "c.jpg")
        assert fuse(0.03, 0.5, prov).label == "real", (caption, prov.findings)


def test_hostile_parameters_stay_fast(tmp_path):
    import time

    _png(tmp_path / "q.png", parameters="cat\nSteps: 1, " + "a " * 500_000)
    t0 = time.perf_counter()
    inspect_file(tmp_path / "q.png")
    assert time.perf_counter() - t0 < 5.0  # was quadratic (minutes) before the pattern was bounded


def test_xmp_rdf_resource_form_and_utf16_dtd(tmp_path):
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"><Iptc4xmpExt:DigitalSourceType'
        ' rdf:resource="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/></rdf:Description></rdf:RDF></x:xmpmeta>'
    )
    Image.new("RGB", (32, 32)).save(tmp_path / "r.jpg", xmp=xmp.encode())
    assert _only(inspect_file(tmp_path / "r.jpg"), "xmp").summary == "XMP digital source type: trainedAlgorithmicMedia"
    bomb = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>'
    ).encode("utf-16")
    Image.new("RGB", (32, 32)).save(tmp_path / "b.jpg", xmp=bomb)
    assert inspect_file(tmp_path / "b.jpg").problems == [
        "metadata unreadable: XMP (XMP packet with a DTD (entity declarations are refused))"
    ]


def test_utf16_be_usercomment_starting_with_cjk(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + ("猫の写真\n" + A1111.split("\n", 1)[1]).encode("utf-16-be")
    Image.new("RGB", (40, 30)).save(tmp_path / "c.jpg", exif=exif)
    assert _only(inspect_file(tmp_path / "c.jpg"), "exif").details["prompt"] == "猫の写真"


def test_control_characters_are_stripped(tmp_path):
    exif = Image.Exif()
    exif[0x0131] = "GIMP\x1b[31mRED\x1b]0;pwned\x07"
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg", exif=exif)
    assert "\x1b" not in json.dumps(
        [f.to_dict() for f in inspect_file(tmp_path / "a.jpg").findings], ensure_ascii=False
    )


def test_an_oversized_chunk_does_not_hide_the_others(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    info.add_text("padding", "x" * (2 << 20), zip=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "p.png", pnginfo=info)
    prov = inspect_file(tmp_path / "p.png")
    assert prov.problems and "skipped" in prov.problems[0]
    assert any(f.summary.startswith("AUTOMATIC1111") for f in prov.findings)
