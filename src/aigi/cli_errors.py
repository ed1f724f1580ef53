"""The CLI's one error path: library errors become one ``error:`` line and an exit code, here and nowhere else."""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from aigi import cli_tables as show
from aigi.errors import AigiError
from aigi.names import shown


class AigiGroup(TyperGroup):
    """Runs a command; an :class:`AigiError` or ``OSError`` becomes one ``error:`` line and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AigiError as e:
            show.error_line(str(e).replace("\n", " "))
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            where = f"{shown(e.filename)}: " if e.filename else ""
            show.error_line(f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
