"""The package's errors. Every problem a user can fix is an :class:`AigiError`; the CLI prints it as one line
``error: <message>`` and exits with its ``exit_code`` (2 unless the error says otherwise), in one place
(:class:`aigi.cli.AigiGroup`). Library callers (notebooks, the HTTP server) catch ``AigiError`` alike.

Each subclass is also a ``ValueError`` (or ``KeyError``) so code written against the older built-in types keeps
working.
"""

from __future__ import annotations

from pydantic import ValidationError


class AigiError(Exception):
    """A problem with the user's input, files or settings, described in one line."""

    exit_code: int = 2


class ConfigError(AigiError, ValueError):
    """Invalid settings: hyper-parameters, options, a config file."""


class DataError(AigiError, ValueError):
    """Data that cannot be used: no such folder, no labelled images, a bad manifest."""


class ModelLoadError(AigiError, ValueError):
    """A model or memory folder that cannot be loaded: missing files, wrong tensors, settings that disagree."""


class NothingScoredError(AigiError):
    """Not one input could be read: exit code 1, as ``aigi detect`` documents."""

    exit_code = 1


class UnknownNameError(AigiError, KeyError, ValueError):
    """A name not in a registry (detector, backbone, recipe, benchmark suite)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def describe_validation(error: ValidationError) -> str:
    """A pydantic error as one line: ``field: message; other.field: message`` (no URLs, no input dumps)."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
