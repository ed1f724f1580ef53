"""C2PA Content Credentials: the signed manifest store a file carries (JPEG APP11 JUMBF, PNG ``caBX``, ...).

Read with ``c2pa-python`` (optional: without it a file that carries C2PA data gets a problem line, nothing else).
The reader runs offline: remote manifests are not fetched (a file that only points to one gets a problem line),
OCSP is not queried, and the signer's chain is checked only against trust anchors the user supplies (the
``AIGI_C2PA_TRUST_ANCHORS`` environment variable, a PEM bundle, or the ``trust_anchors`` argument).

Strength follows validation: ``Trusted`` (signature, content hash and chain all check out) is ``strong``;
``Valid`` with a signer no trust list vouches for is ``moderate``; ``Invalid`` (e.g. pixels changed after
signing) keeps the declared claim at ``weak`` strength and adds a problem naming the failure codes.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from pathlib import Path

from PIL import Image

from aigi.provenance.findings import Finding
from aigi.provenance.metadata import CONTROL_CHARS, SOURCE_TYPES

TRUST_ANCHORS_ENV = "AIGI_C2PA_TRUST_ANCHORS"

# Extended key usages a C2PA signing certificate may carry. Without this list the SDK rejects certificates that
# carry only the C2PA claim-signing or document-signing EKU (as real signers' certificates do) as invalid.
EKU_TRUST_CONFIG = (
    "\n".join(
        [
            "1.3.6.1.4.1.62558.2.1",  # c2pa-kp-claimSigning
            "1.3.6.1.5.5.7.3.36",  # id-kp-documentSigning
            "1.3.6.1.5.5.7.3.4",  # emailProtection
            "1.3.6.1.5.5.7.3.8",  # timeStamping
            "1.3.6.1.5.5.7.3.9",  # OCSPSigning
            "1.3.6.1.4.1.311.76.59.1.9",  # Microsoft C2PA signing
        ]
    )
    + "\n"
)

MIME = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
    "JXL": "image/jxl",
    "DNG": "image/x-adobe-dng",
}

# Digital source types (IPTC, plus C2PA's own trainedAlgorithmicData) and what each claims.
GENERATED_TYPES = {"trainedAlgorithmicMedia", "trainedAlgorithmicData", "algorithmicMedia", "compositeSynthetic"}
AI_EDIT_TYPES = {
    "compositeWithTrainedAlgorithmicMedia"
}  # algorithmicallyEnhanced (filters, denoise) is an edit, not AI content
CAPTURE_TYPES = {k for k, v in SOURCE_TYPES.items() if v == "captured"}
EDIT_ACTIONS = {
    "c2pa.edited",
    "c2pa.cropped",
    "c2pa.resized",
    "c2pa.color_adjustments",
    "c2pa.filtered",
    "c2pa.drawing",
    "c2pa.orientation",
    "c2pa.placed",
    "c2pa.removed",
    "c2pa.redacted",
}
# Actions that repackage an asset without changing what it shows.
PASS_THROUGH_ACTIONS = {"c2pa.opened", "c2pa.converted", "c2pa.transcoded", "c2pa.repackaged", "c2pa.published"}

FAILURE_MEANING = {
    "assertion.dataHash.mismatch": "the pixels were changed after signing",
    "assertion.boxesHash.mismatch": "the pixels were changed after signing",
    "assertion.bmffHash.mismatch": "the pixels were changed after signing",
    "assertion.hashedURI.mismatch": "an assertion was changed after signing",
    "assertion.action.malformed": "the actions assertion is malformed",
    "claimSignature.mismatch": "the signature does not match the claim",
    "claimSignature.missing": "the claim is not signed",
    "claimSignature.outsideValidity": "signed outside the certificate's validity period",
    "signingCredential.invalid": "the signing certificate is not valid for C2PA",
    "signingCredential.revoked": "the signing certificate was revoked",
    "signingCredential.expired": "the signing certificate had expired",
}
UNTRUSTED = "signingCredential.untrusted"
MAX_MESSAGE = 200
MAX_INGREDIENT_DEPTH = 16


def _import_c2pa():
    try:
        import c2pa
    except ImportError:
        return None
    return c2pa


def has_c2pa_marker(data: bytes) -> bool:
    """True when the raw bytes carry what looks like a C2PA manifest store: a JPEG APP11 segment with a JUMBF box
    labelled c2pa, a PNG ``caBX`` chunk, or (other containers) JUMBF and c2pa bytes anywhere."""
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 4 <= len(data) and data[at] == 0xFF:
            marker, size = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
            if marker == 0xDA:  # start of scan: no more metadata segments
                return False
            if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte or a marker without a length
                at += 1 if marker == 0xFF else 2
                continue
            segment = data[at + 4 : at + 2 + size]
            if marker == 0xEB and segment[:2] == b"JP" and b"jumb" in segment and b"c2pa" in segment:
                return True
            at += 2 + size
        return False
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        at = 8
        while at + 8 <= len(data):
            size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
            if kind == b"caBX":
                return True
            if kind == b"IEND":
                return False
            at += 12 + size
        return False
    return b"jumb" in data and b"c2pa" in data


def _read_anchors(trust_anchors, problems: list[str]) -> bytes | None:
    """PEM bytes from the argument (PEM text or a path) or else from the environment variable; None when neither."""
    if trust_anchors is None:
        env = os.environ.get(TRUST_ANCHORS_ENV, "").strip()
        trust_anchors = Path(env) if env else None
    if trust_anchors is None:
        return None
    if isinstance(trust_anchors, str) and "-----BEGIN" in trust_anchors:
        return trust_anchors.encode("ascii", "replace")
    if isinstance(trust_anchors, bytes) and b"-----BEGIN" in trust_anchors:
        return trust_anchors
    try:
        pem = Path(trust_anchors).read_bytes()
    except OSError as e:
        problems.append(
            f"C2PA trust anchors unreadable: {trust_anchors} ({e.strerror or e}); signers checked against no trust list"
        )
        return None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        problems.append(
            f"C2PA trust anchors unreadable: {trust_anchors} holds no PEM certificate; signers checked against no trust list"
        )
        return None
    return pem


@functools.lru_cache(maxsize=8)
def _context(anchors: bytes | None):
    c2pa = _import_c2pa()
    trust = {"trust_config": EKU_TRUST_CONFIG}
    if anchors:
        trust["user_anchors"] = anchors.decode("ascii", "replace")
    return c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False}, "trust": trust})


def _error_name(c2pa, e: Exception) -> str:
    for name in dir(c2pa.C2paError):
        cls = getattr(c2pa.C2paError, name)
        if isinstance(cls, type) and type(e) is cls:
            return name
    return type(e).__name__.lstrip("_")


def _message(e: Exception, name: str) -> str:
    text = " ".join(str(e).split())
    if text.startswith(name + ": "):  # the SDK prefixes its messages with the error kind
        text = text[len(name) + 2 :]
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def _code(uri) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1] if uri else ""


def _agent(value) -> str | None:
    if isinstance(value, dict):
        text = " ".join(str(value[k]) for k in ("name", "version") if value.get(k))
    else:
        text = str(value) if value else ""
    return _safe(text) or None


def _safe(text: str, limit: int = 200) -> str:
    """Text from the file, without control characters (terminal escapes) and bounded in length."""
    text = CONTROL_CHARS.sub("", str(text)).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _claim_generator(manifest: dict) -> str | None:
    if isinstance(manifest.get("claim_generator"), str):  # v1 claims
        return _safe(manifest["claim_generator"])
    names = [_agent(i) for i in manifest.get("claim_generator_info") or [] if isinstance(i, dict)]
    return ", ".join(n for n in names if n) or None


def _actions(manifest: dict) -> list[dict]:
    out = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for a in (assertion.get("data") or {}).get("actions") or []:
            if isinstance(a, dict):
                out.append(
                    {
                        "action": a.get("action"),
                        "digitalSourceType": a.get("digitalSourceType"),
                        "softwareAgent": _agent(a.get("softwareAgent")),
                    }
                )
    return out


def _own_claim(actions: list[dict], generator: str | None) -> tuple[str, str]:
    """What one manifest's own actions claim, and in words (no signer, no ingredients)."""
    opened = any(a["action"] == "c2pa.opened" for a in actions)
    captured = any(a["action"] == "c2pa.created" and _code(a["digitalSourceType"]) in CAPTURE_TYPES for a in actions)
    for a in actions:
        code = _code(a["digitalSourceType"])
        who = a["softwareAgent"] or generator or "an unnamed tool"
        if code in GENERATED_TYPES:
            if a["action"] == "c2pa.created" and not captured:
                return "generated", f"created by {who} ({code})"
            if not opened and not captured and a["action"] in PASS_THROUGH_ACTIONS | {None}:
                return "generated", f"created by {who} ({code})"
            return "ai-edited", f"edited with {who} ({code})"
    for a in actions:
        code = _code(a["digitalSourceType"])
        if code in AI_EDIT_TYPES:
            return "ai-edited", f"edited with {a['softwareAgent'] or generator or 'an unnamed tool'} ({code})"
    for a in actions:
        code = _code(a["digitalSourceType"])
        if a["action"] == "c2pa.created" and code in CAPTURE_TYPES:
            return "captured", f"captured by {a['softwareAgent'] or generator or 'an unnamed device'} ({code})"
    edits = [a for a in actions if a["action"] in EDIT_ACTIONS]
    if edits:
        return "edited", f"edited by {edits[0]['softwareAgent'] or generator or 'an unnamed tool'}"
    return "info", f"manifest written by {generator}" if generator else "manifest with no actions declared"


def _ai_ancestor(store: dict, manifest: dict, seen: set[str], depth: int = 0) -> tuple[str, str] | None:
    """The first ingredient (at any depth) whose manifest declares AI generation: (relationship, its description)."""
    if depth >= MAX_INGREDIENT_DEPTH:
        return None
    manifests = store.get("manifests") or {}
    for ing in manifest.get("ingredients") or []:
        label = ing.get("active_manifest") if isinstance(ing, dict) else None
        if not isinstance(label, str) or label in seen or not isinstance(manifests.get(label), dict):
            continue
        seen.add(label)
        parent = manifests[label]
        claim, text = _own_claim(_actions(parent), _claim_generator(parent))
        if claim in ("generated", "ai-edited"):
            return str(ing.get("relationship") or ""), text
        deeper = _ai_ancestor(store, parent, seen, depth + 1)
        if deeper:
            return str(ing.get("relationship") or ""), deeper[1]
    return None


def _status_codes(store: dict) -> list[str]:
    codes = [s.get("code") for s in store.get("validation_status") or [] if isinstance(s, dict)]
    if not codes:
        failures = ((store.get("validation_results") or {}).get("activeManifest") or {}).get("failure") or []
        codes = [s.get("code") for s in failures if isinstance(s, dict)]
    return [str(c) for c in codes if c]


def _finding(store: dict, problems: list[str]) -> Finding | None:
    label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(label) if isinstance(label, str) else None
    if not isinstance(manifest, dict):
        if store.get("manifests"):
            problems.append("C2PA data unreadable: the manifest store names no active manifest")
        return None
    sig = manifest.get("signature_info") or {}
    generator = _claim_generator(manifest)
    actions = _actions(manifest)
    claim, what = _own_claim(actions, generator)
    if claim not in ("generated", "ai-edited"):
        ancestor = _ai_ancestor(store, manifest, {label})
        if ancestor is not None:
            relationship, text = ancestor
            converted_only = bool(actions) and all(a["action"] in PASS_THROUGH_ACTIONS for a in actions)
            if relationship == "parentOf" and converted_only:
                claim, what = "generated", f"converted from an AI-generated ingredient ({text})"
            else:
                claim, what = "ai-edited", f"edited from an AI-generated ingredient ({text})"
    state = str(store.get("validation_state") or "")
    codes = _status_codes(store)
    sig = {k: (_safe(v) if isinstance(v, str) else v) for k, v in sig.items()}
    issuer = sig.get("issuer") or sig.get("common_name") or "an unnamed signer"
    details = {
        "issuer": sig.get("issuer"),
        "common_name": sig.get("common_name"),
        "alg": sig.get("alg"),
        "cert_serial_number": sig.get("cert_serial_number"),
        **({"time": sig["time"]} if sig.get("time") else {}),
        "claim_generator": generator,
        "actions": actions,
        "ingredients": [
            {"title": i.get("title"), "relationship": i.get("relationship")}
            for i in manifest.get("ingredients") or []
            if isinstance(i, dict)
        ],
        "validation_state": state,
        "validation_status": codes,
        "trusted": state == "Trusted",
    }
    if state == "Trusted":
        return Finding("c2pa", claim, "strong", f"C2PA by {issuer}: {what}", details)
    if state == "Valid":
        note = "; signed, but the signer is not on a trust list" if UNTRUSTED in codes else ""
        return Finding("c2pa", claim, "moderate", f"C2PA by {issuer}: {what}{note}", details)
    failures = [c for c in codes if c != UNTRUSTED] or ["no failure code given"]
    problems.append(
        "C2PA manifest fails validation: "
        + "; ".join(f"{c} ({FAILURE_MEANING[c]})" if c in FAILURE_MEANING else c for c in failures)
    )
    return Finding(
        "c2pa", claim, "weak", f"C2PA manifest fails validation ({', '.join(failures)}): by {issuer}, {what}", details
    )


def c2pa_findings(
    im: Image.Image, data: bytes, problems: list[str], trust_anchors: bytes | str | os.PathLike | None = None
) -> list[Finding]:
    """The active C2PA manifest of ``data`` as one finding (or none); failures become ``problems``, never exceptions.

    ``trust_anchors``: PEM text/bytes or a path to a PEM bundle of root certificates to trust; by default the file
    named by ``AIGI_C2PA_TRUST_ANCHORS``, else none (every signer is then reported as not on a trust list)."""
    c2pa = _import_c2pa()
    if c2pa is None:
        if has_c2pa_marker(data):
            problems.append("C2PA not checked: the c2pa-python package is not installed")
        return []
    anchors = _read_anchors(trust_anchors, problems)
    mime = MIME.get(getattr(im, "format", None) or "")
    try:
        try:
            context = _context(anchors)
        except c2pa.C2paError as e:
            problems.append(
                f"C2PA trust anchors unusable ({_message(e, _error_name(c2pa, e))}); signers checked against no trust list"
            )
            context = _context(None)
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
        if reader is None:
            if has_c2pa_marker(data):  # e.g. a damaged JUMBF header: the store is there, the reader does not see it
                problems.append(
                    "C2PA data unreadable: a manifest store is embedded but the reader does not recognise it"
                )
            return []
        with reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        name = _error_name(c2pa, e)
        if name == "NotSupported":  # BMP and other containers that cannot carry C2PA
            return []
        text = " ".join(str(e).split())
        if name == "RemoteManifest" or text.startswith("Remote"):
            url = re.search(r"https?://[^\s)\"']+", text)
            problems.append("C2PA manifest is remote (not fetched)" + (f": {url.group(0)}" if url else ""))
            return []
        if has_c2pa_marker(data):
            problems.append(f"C2PA data unreadable: {name}: {_message(e, name)}")
        return []  # no C2PA data in the file: the reader only failed on its structure, which others report
    except ValueError as e:  # the store's JSON (json.JSONDecodeError is a ValueError)
        problems.append(f"C2PA data unreadable: {type(e).__name__}: {str(e)[:MAX_MESSAGE]}")
        return []
    if not isinstance(store, dict):
        problems.append("C2PA data unreadable: the manifest store is not a JSON object")
        return []
    finding = _finding(store, problems)
    return [finding] if finding is not None else []
