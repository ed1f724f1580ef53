"""Plain metadata: EXIF (camera signature, software), XMP / IPTC (digital source type, creator tool), and the text
that generators write into PNG chunks and JPEG comments (AUTOMATIC1111, ComfyUI, InvokeAI, NovelAI, Fooocus,
Midjourney). All of it is ``weak`` evidence: any tool can write or remove it.

Every block is size-checked before it is parsed, XML with a DTD is refused (entity expansion), and JSON is
parsed only below a size cap; a block that cannot be read becomes a problem on the file, not an exception.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat

from PIL import ExifTags, Image, IptcImagePlugin

from aigi.provenance.findings import Finding

MAX_BLOCK_BYTES = 1 << 20  # one EXIF / XMP / text block; larger ones are reported, not parsed
MAX_JSON_BYTES = 4 << 20  # a ComfyUI workflow can be big, but not bigger than this
MAX_SETTINGS_CHARS = 16 << 10  # AUTOMATIC1111's settings line

# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/), with what each claims.
SOURCE_TYPES = {
    "trainedAlgorithmicMedia": "generated",
    "compositeWithTrainedAlgorithmicMedia": "ai-edited",
    "algorithmicallyEnhanced": "edited",  # filters, denoising of a capture: not generative
    "humanEdits": "edited",
    "algorithmicMedia": "generated",
    "compositeSynthetic": "generated",
    "digitalCapture": "captured",
    "computationalCapture": "captured",
    "negativeFilm": "captured",
    "positiveFilm": "captured",
    "print": "captured",
    "minorHumanEdits": "edited",
    "compositeCapture": "edited",
    "composite": "edited",
    "digitalArt": "info",
    "virtualRecording": "info",
    "screenCapture": "info",
    "dataDrivenMedia": "info",
}
# Generator names, matched as whole words. Found in a tool field (EXIF Software, XMP CreatorTool, PNG Software /
# Source) they claim "generated"; found in free text (captions, descriptions, authors) they are only "info": "Vista
# dalle colline", "on the runway" or "Imagen de Juan" must not turn a photo into a generated image.
GENERATOR_NAMES = re.compile(
    r"\b(?:stable[\s_-]?diffusion|automatic1111|comfyui|invokeai|novelai|midjourney|dall[·-]e(?:[\s-]?[23])?|"
    r"adobe firefly|firefly image|fooocus|leonardo\.ai|ideogram|bing image creator|sdxl|dreamstudio|nightcafe|craiyon|"
    r"flux\.1|gpt-4o|playground v\d)\b",
    re.IGNORECASE,
)
TOOL_FIELDS = {"Software", "CreatorTool", "Source"}
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # terminal escapes must not reach the screen
CAMERA_FIELDS = (
    "Make",
    "Model",
    "LensModel",
    "ExposureTime",
    "FNumber",
    "ISOSpeedRatings",
    "FocalLength",
    "DateTimeOriginal",
)


def _text(value) -> str:
    if isinstance(value, bytes):
        head, body = value[:8], value[8:]
        if head == b"UNICODE\x00":  # EXIF UserComment: an 8-byte character-code header, then the text
            # piexif (AUTOMATIC1111) writes big-endian; little-endian writers leave the odd bytes mostly zero
            odd = body[1::2]
            little = len(odd) > 0 and odd.count(0) > len(odd) // 2 and body[0::2].count(0) < len(odd) // 2
            return body.decode("utf-16-le" if little else "utf-16-be", "replace")
        if head in (b"ASCII\x00\x00\x00", b"\x00" * 8):
            return body.decode("latin-1")
        return value.decode("utf-8", "replace")
    return str(value)


def _clean(value, limit: int = 300) -> str:
    s = CONTROL_CHARS.sub("", _text(value)).strip()
    return s if len(s) <= limit else s[:limit] + "…"


# -- EXIF ---------------------------------------------------------------------------------------------------------
def exif_findings(im: Image.Image, problems: list[str]) -> list[Finding]:
    fields = _exif_fields(im, problems)
    if not fields:
        return []
    out = []
    camera = _camera_finding(fields)
    if camera is not None:
        out.append(camera)
    for key in ("Software", "ImageDescription", "UserComment", "Artist"):
        if key in fields:
            finding = _exif_text_finding(key, fields, problems)
            if finding is not None:
                out.append(finding)
    return out


def _exif_fields(im: Image.Image, problems: list[str]) -> dict:
    """The EXIF fields by tag name (the base IFD, then the Exif IFD); empty when absent, too large or unreadable."""
    raw = im.info.get("exif")
    if raw and len(raw) > MAX_BLOCK_BYTES:
        problems.append(f"metadata unreadable: EXIF block of {len(raw)} bytes is over the {MAX_BLOCK_BYTES}-byte limit")
        return {}
    if im.format == "PNG" and "exif" not in im.info:
        return {}  # an eXIf chunk after the image data would make PIL decode every pixel to reach it: not read
    try:
        exif = im.getexif()
        fields = {ExifTags.TAGS.get(k, str(k)): v for k, v in exif.items()}
        fields.update({ExifTags.TAGS.get(k, str(k)): v for k, v in exif.get_ifd(ExifTags.IFD.Exif).items()})
    except Exception as e:  # noqa: BLE001 - a malformed EXIF block is a finding about the file, not a crash
        problems.append(f"metadata unreadable: EXIF ({type(e).__name__}: {e})")
        return {}
    return fields


def _camera_finding(fields: dict) -> Finding | None:
    camera = {k: _clean(fields[k], 80) for k in CAMERA_FIELDS if k in fields and _clean(fields[k], 80)}
    if "Make" not in camera and "Model" not in camera:
        return None
    exposure = [k for k in ("ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength") if k in camera]
    who = " ".join(v for v in (camera.get("Make"), camera.get("Model")) if v)
    summary = f"camera EXIF: {who}" + (f" ({', '.join(exposure)})" if exposure else "")
    return Finding("exif", "captured", "weak", summary, camera)


def _exif_text_finding(key: str, fields: dict, problems: list[str]) -> Finding | None:
    """What one text field (Software, ImageDescription, UserComment, Artist) says, if anything."""
    text = _clean(fields[key], 20000)
    params = parse_a1111(text) if key in ("UserComment", "ImageDescription") else {}
    if params:  # AUTOMATIC1111 writes its parameters into JPEG/WebP UserComment
        return Finding(
            "exif",
            "generated",
            "weak",
            f"AUTOMATIC1111 parameters in EXIF {key} (model {params.get('model') or 'not named'})",
            {"field": key, **params},
        )
    if key == "UserComment" and text.startswith("{") and '"prompt"' in text.lower():  # Fooocus: JSON parameters
        return _exif_json_finding(text, fields, problems)
    if text and GENERATOR_NAMES.search(text):
        claim = "generated" if key in TOOL_FIELDS else "info"
        summary = f"EXIF {key} names a generator: {_clean(text, 120)}"
        return Finding("exif", claim, "weak", summary, {"field": key, "value": _clean(text, 2000)})
    if key == "Software" and text:
        return Finding("exif", "info", "weak", f"EXIF Software: {_clean(text, 120)}", {"field": key, "value": text})
    return None


def _exif_json_finding(text: str, fields: dict, problems: list[str]) -> Finding | None:
    """Fooocus's JSON parameters in the UserComment; a comment that is not valid JSON becomes a problem."""
    try:
        meta = _json(text)
    except ValueError as e:
        problems.append(f"metadata unreadable: EXIF UserComment ({e})")
        return None
    return Finding(
        "exif",
        "generated",
        "weak",
        "generation parameters (JSON) in EXIF UserComment",
        {
            "field": "UserComment",
            "generator": _clean(fields.get("Software", "unknown"), 80),
            "prompt": meta.get("prompt") or meta.get("Prompt"),
            "model": meta.get("base_model") or meta.get("Base Model"),
        },
    )


# -- XMP and IPTC ---------------------------------------------------------------------------------------------------
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_RESOURCE = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"


def _parse_xml(body: bytes) -> ET.Element:
    """Parse XML with any DTD refused by an expat pass first (a byte search for "<!DOCTYPE" is defeated by other
    encodings, e.g. UTF-16), so entity expansion never starts."""

    def refuse(*_args) -> None:
        raise ValueError("XMP packet with a DTD (entity declarations are refused)")

    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = refuse
    scan.EntityDeclHandler = refuse
    try:
        scan.Parse(body, True)
    except expat.ExpatError as e:
        raise ET.ParseError(str(e)) from None
    return ET.fromstring(body)


def _xmp_packet(im: Image.Image) -> bytes | None:
    raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    return raw or None


def xmp_findings(im: Image.Image, problems: list[str]) -> list[Finding]:
    raw = _xmp_packet(im)
    if raw is None:
        return []
    if len(raw) > MAX_BLOCK_BYTES:
        problems.append(f"metadata unreadable: XMP packet of {len(raw)} bytes is over the {MAX_BLOCK_BYTES}-byte limit")
        return []
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        problems.append("metadata unreadable: XMP packet with a DTD (entity declarations are refused)")
        return []
    start = raw.find(b"<x:xmpmeta")
    end = raw.rfind(b"</x:xmpmeta>")
    body = raw[start : end + len(b"</x:xmpmeta>")] if start >= 0 and end > start else raw
    try:
        root = _parse_xml(body)
    except (ET.ParseError, ValueError) as e:
        problems.append(f"metadata unreadable: XMP ({e})")
        return []
    values: dict[str, list[str]] = {}
    for el in root.iter():
        for attr, v in el.attrib.items():
            values.setdefault(attr, []).append(v)
        if el.tag == f"{{{IPTC_EXT}}}DigitalSourceType" and el.get(RDF_RESOURCE):  # <... rdf:resource="URI"/>
            values.setdefault(el.tag, []).append(el.get(RDF_RESOURCE))
        if el.text and el.text.strip():
            values.setdefault(el.tag, []).append(el.text.strip())
    out = []
    for uri in values.get(f"{{{IPTC_EXT}}}DigitalSourceType", []):
        out.append(_source_type_finding("xmp", uri))
    for tool in values.get(f"{{{XMP_NS}}}CreatorTool", []):
        generated = bool(GENERATOR_NAMES.search(tool))
        out.append(
            Finding(
                "xmp",
                "generated" if generated else "info",
                "weak",
                f"XMP creator tool{' names a generator' if generated else ''}: {_clean(tool, 120)}",
                {"CreatorTool": tool},
            )
        )
    descriptions = [
        v for k, vals in values.items() if k.rsplit("}", 1)[-1] in ("description", "Description") for v in vals
    ]
    for text in descriptions:
        if "Job ID:" in text or re.search(r"\bmidjourney\b", text, re.I):
            out.append(
                Finding(
                    "xmp",
                    "generated",
                    "weak",
                    "XMP description in Midjourney's form (prompt and Job ID)",
                    {"generator": "Midjourney", "description": _clean(text, 2000)},
                )
            )
    return out


def _source_type_finding(source: str, uri: str) -> Finding:
    code = uri.rstrip("/").rsplit("/", 1)[-1]
    claim = SOURCE_TYPES.get(code, "info")
    return Finding(source, claim, "weak", f"{source.upper()} digital source type: {code}", {"DigitalSourceType": uri})


def iptc_findings(im: Image.Image, problems: list[str]) -> list[Finding]:
    if im.format not in ("JPEG", "TIFF"):
        return []
    try:
        iptc = IptcImagePlugin.getiptcinfo(im) or {}
    except Exception as e:  # noqa: BLE001
        problems.append(f"metadata unreadable: IPTC ({type(e).__name__}: {e})")
        return []
    out = []
    for (record, tag), value in iptc.items():
        text = b" ".join(value) if isinstance(value, list) else value
        text = _clean(text, 2000)
        if (
            record == 2 and tag in (65, 120, 122, 80) and GENERATOR_NAMES.search(text)
        ):  # program, caption, writer, by-line
            claim = "generated" if tag == 65 else "info"  # 2:65 is the originating program; the others are free text
            out.append(
                Finding(
                    "iptc",
                    claim,
                    "weak",
                    f"IPTC field names a generator: {_clean(text, 120)}",
                    {"record": f"2:{tag}", "value": text},
                )
            )
        if "digitalsourcetype" in text.lower():
            out.append(_source_type_finding("iptc", text))
    return out


# -- generator parameters in text chunks ------------------------------------------------------------------------------
def parse_a1111(text: str) -> dict:
    """AUTOMATIC1111's ``parameters``: prompt lines, ``Negative prompt: ...``, then ``Steps: 20, Sampler: ..., Model: ...``."""
    lines = text.strip().splitlines()
    if not lines or not re.search(r"(^|\n)Steps: \d+", text):
        return {}
    settings_line = next((ln for ln in reversed(lines) if ln.startswith("Steps: ")), "")
    # bounded key length and line length: the pattern must stay linear on hostile input
    settings = dict(
        m.groups()
        for m in re.finditer(
            r"([A-Za-z][\w /-]{0,63}): (\"[^\"]{0,4096}\"|[^,]{0,4096})(?:,|$)", settings_line[:MAX_SETTINGS_CHARS]
        )
    )
    body = text[: text.rfind(settings_line)].strip() if settings_line else text
    prompt, _, negative = body.partition("Negative prompt:")
    out = {"generator": "AUTOMATIC1111 / stable-diffusion-webui", "prompt": prompt.strip(), "settings": settings}
    if negative:
        out["negative_prompt"] = negative.strip()
    if "Model" in settings:
        out["model"] = settings["Model"].strip()
    return out


def _json(text: str):
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{len(text)} bytes is over the {MAX_JSON_BYTES}-byte limit")
    return json.loads(text)


def parse_comfyui(prompt_json: str) -> dict:
    graph = _json(prompt_json)
    if not isinstance(graph, dict):
        raise ValueError("not a ComfyUI node graph")
    nodes = [n for n in graph.values() if isinstance(n, dict) and "class_type" in n]
    models, prompts = [], []
    for n in nodes:
        inputs = n.get("inputs") or {}
        for key in ("ckpt_name", "unet_name"):
            if isinstance(inputs.get(key), str):
                models.append(inputs[key])
        if "CLIPTextEncode" in n["class_type"] and isinstance(inputs.get("text"), str):
            prompts.append(inputs["text"])
    return {
        "generator": "ComfyUI",
        "model": models[0] if models else None,
        "models": models,
        "prompts": prompts,
        "nodes": len(nodes),
    }


# Each generation tool's own chunk format: one parser per format, taking the chunk's text and all the chunks, giving
# the finding's summary and details.
def _fooocus(text: str, info: dict) -> tuple[str, dict]:
    params = _json(text)  # Fooocus writes JSON into 'parameters'
    return "Fooocus parameters", {
        "generator": "Fooocus",
        "prompt": params.get("prompt") or params.get("Prompt"),
        "model": params.get("base_model") or params.get("Base Model"),
        "raw_keys": sorted(params)[:40],
    }


def _a1111(text: str, info: dict) -> tuple[str, dict]:
    parsed = parse_a1111(text)
    if parsed:
        return f"AUTOMATIC1111 parameters (model {parsed.get('model') or 'not named'})", parsed
    return "generation parameters", {"generator": "unknown (a 'parameters' chunk)", "text": _clean(text, 2000)}


def _comfyui(text: str, info: dict) -> tuple[str, dict]:
    parsed = parse_comfyui(text)
    return f"ComfyUI workflow (model {parsed['model'] or 'not named'})", parsed


def _comfyui_editor(text: str, info: dict) -> tuple[str, dict]:
    return "ComfyUI workflow (editor graph only)", {"generator": "ComfyUI", "nodes": len(_json(text).get("nodes", []))}


def _invokeai(text: str, info: dict) -> tuple[str, dict]:
    meta = _json(text) if text.lstrip().startswith("{") else {"text": _clean(text, 2000)}
    model = meta.get("model") or meta.get("model_weights")
    return "InvokeAI metadata", {
        "generator": "InvokeAI",
        "model": model.get("name") if isinstance(model, dict) else model,
        "prompt": meta.get("positive_prompt") or meta.get("prompt") or (meta.get("image") or {}).get("prompt"),
    }


def _novelai(text: str, info: dict) -> tuple[str, dict]:
    comment = _json(_text(info["Comment"])) if "Comment" in info else {}
    return "NovelAI metadata", {
        "generator": "NovelAI",
        "source": _clean(info.get("Source", ""), 200),
        "prompt": comment.get("prompt"),
        "settings": {k: comment[k] for k in ("steps", "sampler", "seed", "scale") if k in comment},
    }


def _midjourney(text: str, info: dict) -> tuple[str, dict]:
    return "Midjourney description (prompt and Job ID)", {"generator": "Midjourney", "description": _clean(text, 2000)}


def _is_json(text: str, info: dict) -> bool:
    return text.lstrip().startswith("{")


# (chunk keys, a further condition on the text and the other chunks or None, parser), tried in this order: the first
# match wins. A 'workflow' chunk counts only without a 'prompt' chunk, which holds the same graph in a better form.
TOOL_CHUNKS = (
    (("parameters",), _is_json, _fooocus),
    (("parameters",), None, _a1111),
    (("prompt",), _is_json, _comfyui),
    (("workflow",), lambda text, info: "prompt" not in info and _is_json(text, info), _comfyui_editor),
    (("invokeai_metadata", "sd-metadata", "Dream", "invokeai_graph"), None, _invokeai),
    (("Software",), lambda text, info: "novelai" in text.lower(), _novelai),
    (
        ("Description", "comment", "Comment"),
        lambda text, info: "Job ID:" in text or re.search(r"\bmidjourney\b", text, re.I),
        _midjourney,
    ),
)
# Plain fields where a generator's name alone is worth reporting, when no tool's own format was found.
GENERIC_FIELDS = ("Software", "Source", "comment", "Comment", "Title", "Author")


def _tool_chunk(key: str, text: str, info: dict) -> tuple[str, dict] | None:
    for keys, condition, parse in TOOL_CHUNKS:
        if key in keys and (condition is None or condition(text, info)):
            return parse(text, info)
    return None


def text_chunk_findings(im: Image.Image, problems: list[str]) -> list[Finding]:
    """PNG tEXt/iTXt/zTXt chunks (and the JPEG / WebP comment) written by generation tools."""
    info = {
        k: v
        for k, v in im.info.items()
        if isinstance(v, (str, bytes)) and k not in ("exif", "xmp", "icc_profile", "XML:com.adobe.xmp")
    }
    source = "png-text" if im.format == "PNG" else "comment"
    out, generic = [], []  # generic: a generator named in a plain field, kept only when no tool's own format was found
    for key, value in info.items():
        text = _text(value)
        if not text.strip():
            continue  # an empty chunk (or one PIL could not read) declares nothing
        if len(text) > MAX_JSON_BYTES:
            problems.append(f"metadata unreadable: text chunk {key!r} of {len(text)} bytes is over the limit")
            continue
        try:
            tool = _tool_chunk(key, text, info)
            if tool is not None:
                summary, details = tool
                out.append(Finding(source, "generated", "weak", summary, details))
            elif key in GENERIC_FIELDS and GENERATOR_NAMES.search(text):
                claim = "generated" if key in TOOL_FIELDS else "info"
                summary = f"{key} names a generator: {_clean(text, 120)}"
                generic.append(Finding(source, claim, "weak", summary, {"field": key, "value": _clean(text, 2000)}))
        except Exception as e:  # noqa: BLE001 - incl. RecursionError from deeply nested JSON: this chunk only
            problems.append(f"metadata unreadable: text chunk {key!r} ({type(e).__name__}: {str(e)[:200]})")
    return out or generic
