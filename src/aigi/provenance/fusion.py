"""One verdict from a detector's probability and what the file declares, with the basis said in words.

Rules, in order:

0. A capture claim in C2PA from a trusted signer outranks any weaker claim of generation.
1. A ``strong`` or ``moderate`` claim that the image was generated or AI-edited (a C2PA manifest, an invisible
   watermark) decides: "generated (declared: C2PA by <issuer>)" from a trusted signer, "generated (declared: C2PA
   by <issuer>; signer not on a trust list)" from an unknown one, "generated (watermark: ...)".
2. A ``weak`` declaration that the image was generated (generator parameters, an XMP digital source type, a
   generator named in EXIF) also decides: such a statement is easy to write but rarely written falsely, because
   nobody gains from claiming a real photo is generated. The verdict says it is a declaration. A C2PA manifest
   that fails validation is such a weak declaration: "generated (declared: C2PA by <issuer>; manifest fails
   validation; detector 0.20)".
3. A capture claim decides only when it is C2PA from a trusted signer (a camera with Content Credentials):
   "real (declared: C2PA capture by <issuer>, trusted)". A capture claim signed by an unknown key is as easy to
   make as a self-signed certificate, so it is only mentioned.
4. Otherwise the detector decides at its threshold, and camera EXIF or other weak findings are mentioned beside
   it, never instead of it: anyone can copy a camera's EXIF onto a generated image. Inside the model's uncertainty
   band (low < P < high, chosen on validation data) it does not decide: "uncertain (detector 0.48; band 0.30-0.70)".
5. No score (the file could not be decoded) and nothing declared: "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass

from aigi.provenance.findings import STRENGTH_ORDER, Provenance

GENERATIVE = ("generated", "ai-edited")


@dataclass
class Verdict:
    label: str  # generated | real | uncertain | unknown
    basis: str  # e.g. "generated (declared: C2PA by Adobe)"
    source: str  # declared | watermark | detector | none


def fuse(
    prob: float | None, threshold: float, provenance: Provenance | None, band: tuple[float, float] | None = None
) -> Verdict:
    declared = provenance.best(*GENERATIVE) if provenance else None
    camera = provenance.best("captured") if provenance else None
    trusted_capture = camera is not None and camera.source == "c2pa" and camera.strength == "strong"
    if trusted_capture and (declared is None or STRENGTH_ORDER[declared.strength] < STRENGTH_ORDER["strong"]):
        signer = camera.details.get("issuer") or camera.details.get("common_name") or "an unnamed signer"
        score = f"; detector {prob:.2f}" if prob is not None else ""
        other = f"; also declared: {declared.summary}" if declared is not None else ""
        return Verdict("real", f"real (declared: C2PA capture by {signer}, trusted{score}{other})", "declared")
    if declared is not None:
        what = "AI-edited" if declared.claim == "ai-edited" else "generated"
        if declared.source == "watermark":
            return Verdict("generated", f"generated (watermark: {declared.summary})", "watermark")
        score = f"; detector {prob:.2f}" if prob is not None else ""
        if declared.source == "c2pa":
            signer = declared.details.get("issuer") or declared.details.get("common_name") or "an unnamed signer"
            note = {"strong": "", "moderate": "; signer not on a trust list"}.get(
                declared.strength, f"; manifest fails validation{score}"
            )
            return Verdict("generated", f"{what} (declared: C2PA by {signer}{note})", "declared")
        note = "" if declared.strength != "weak" else "; unsigned metadata"
        return Verdict("generated", f"{what} (declared: {declared.summary}{note}{score})", "declared")
    if prob is None:
        return Verdict("unknown", "unknown (no detector score and nothing declared)", "none")
    label = "generated" if prob >= threshold else "real"
    extras = []
    if band is not None and band[0] < prob < band[1]:
        label = "uncertain"
        extras.append(f"band {band[0]:.2f}-{band[1]:.2f}")
    if camera is not None:
        extras.append("camera EXIF present" if camera.source == "exif" else camera.summary)
    return Verdict(label, f"{label} (detector {prob:.2f}" + "".join(f"; {e}" for e in extras) + ")", "detector")
