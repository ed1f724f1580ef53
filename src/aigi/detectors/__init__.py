"""Detectors: one file per method, joined to :data:`DETECTORS` by name.

- ``univfd``: frozen backbone global feature -> logistic regression (:mod:`aigi.detectors.univfd`).
"""

from __future__ import annotations

from aigi.registry import Registry

DETECTORS: Registry = Registry("detector")


def _load_all() -> None:
    from aigi.detectors import univfd  # noqa: F401  (registers itself)


def get_detector(name: str):
    _load_all()
    return DETECTORS.get(name)


def detector_names() -> list[str]:
    _load_all()
    return DETECTORS.names()
