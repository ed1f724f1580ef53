"""Provenance: what an image file declares about its own origin (C2PA, XMP/IPTC, EXIF, generator metadata,
invisible watermarks), and how that combines with a detector's score into a verdict with its basis.

``inspect_file(path)`` never raises for a bad file: unreadable parts become ``problems`` on the result.
"""

from aigi.provenance.findings import Finding, Provenance
from aigi.provenance.inspect import inspect_file

__all__ = ["Finding", "Provenance", "inspect_file"]
