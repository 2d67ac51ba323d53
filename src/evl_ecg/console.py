"""What every command prints when it stops on a bad input: one ``error:`` line and exit status 1 (never a traceback,
never exit 0 on a wrong or missing result). Each stage's ``commands`` module imports :func:`fail` from here."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


__all__ = ["fail"]
