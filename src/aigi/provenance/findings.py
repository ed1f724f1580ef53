"""What a file says about its own origin, and how much that is worth.

A :class:`Finding` is one piece of declared evidence: where it was found (``source``), what it claims
(``claim``), how far it can be trusted (``strength``), one line for people (``summary``) and the parsed
fields (``details``). Strength is about forgery, not about truth:

- ``strong``: cryptographically bound to the pixels by a signer a trust list vouches for (valid C2PA);
- ``moderate``: hard to fake by accident, e.g. a C2PA claim signed by a key nobody vouches for, or an
  invisible watermark that decodes to a known generator's payload;
- ``weak``: plain metadata that any tool can write or strip (EXIF, XMP, IPTC, PNG text chunks).

Absence of metadata proves nothing: most platforms strip it, so "no findings" is not evidence of "real".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from aigi.names import shown

Claim = Literal["generated", "ai-edited", "captured", "edited", "info"]
Strength = Literal["strong", "moderate", "weak"]
STRENGTH_ORDER = {"strong": 3, "moderate": 2, "weak": 1}


@dataclass
class Finding:
    source: str  # c2pa, xmp, iptc, exif, png-text, jpeg-comment, watermark
    claim: Claim
    strength: Strength
    summary: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Provenance:
    """Everything one file declares; ``problems`` are per-source failures ("metadata unreadable: ...")."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable: bool = False  # the file itself could not be read (missing, empty, a folder, too large)

    def best(self, *claims: str) -> Finding | None:
        """The strongest finding making one of ``claims`` (None when there is none)."""
        hits = [f for f in self.findings if f.claim in claims]
        return max(hits, key=lambda f: STRENGTH_ORDER[f.strength]) if hits else None

    def to_dict(self) -> dict:
        return {
            "path": shown(self.path),
            "findings": [f.to_dict() for f in self.findings],
            "problems": list(self.problems),
        }
