"""The CLI's one error path: library errors become one ``error:`` line and an exit code, here and nowhere else."""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from aigi import cli_tables as show
from aigi.errors import AigiError
from aigi.names import shown


def _click_errors(name: str) -> tuple[type, ...]:
    """``click``'s exception class ``name``, and the copy inside Typer, which vendors click from 0.2x on."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored

        found.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


HELP_ASKED, USAGE_ERRORS = _click_errors("NoArgsIsHelpError"), _click_errors("UsageError")


class AigiGroup(TyperGroup):
    """Runs a command; an :class:`AigiError` or ``OSError`` becomes one ``error:`` line and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AigiError as e:
            show.error_line(str(e).replace("\n", " "))
            raise typer.Exit(e.exit_code) from None
        except HELP_ASKED:
            raise  # a bare `aigi export`: its help, as asked
        except USAGE_ERRORS as e:  # a bad option or argument: one line too, with where to read more
            where = e.ctx.command_path if e.ctx is not None else "aigi"
            show.error_line(f"{e.format_message()} (see {where} --help)".replace("\n", " "))
            raise typer.Exit(2) from None
        except OSError as e:
            where = f"{shown(e.filename)}: " if e.filename else ""
            show.error_line(f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
