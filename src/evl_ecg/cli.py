"""``evl-ecg``: the one command, with one sub-command group per stage.

Each stage keeps its commands in its own ``commands.py`` (a typer app); this module only composes them, so
that ``evl-ecg --help`` stays fast (stages import their heavy dependencies inside the commands).

Errors: a command reports an expected failure itself (``error: <file or option>: <problem>``, exit 1). Any other
exception, in any command, is one line here, ``evl-ecg: error: <type>: <message> (run with --debug for the
traceback)``, exit 1; ``evl-ecg --debug ...`` or ``EVL_ECG_DEBUG=1`` shows the traceback instead.

Libraries' load noise (torchao's kernel-library lines, which transformers triggers whenever the ``[edge]`` extra is
installed) is kept off the screen, except under ``--debug`` / ``EVL_ECG_DEBUG=1`` (:mod:`evl_ecg.quiet`).
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

# Nothing in this project downloads anything: weights and data load from local paths only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEBUG_ENV = "EVL_ECG_DEBUG"
_DEBUG_META = "evl_ecg.debug"


def debug_requested(ctx: typer.Context | None = None) -> bool:
    """Whether the user asked for tracebacks: ``--debug`` (on ``ctx``) or ``EVL_ECG_DEBUG`` set to other than 0."""
    if ctx is not None and ctx.meta.get(_DEBUG_META):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_line(exc: BaseException) -> str:
    """The one line an unexpected exception is reported as."""
    lines = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"evl-ecg: error: {message} (run with --debug for the traceback)"


class _OneLineErrors(TyperGroup):
    """The root group: an exception that no command handled becomes one line and exit status 1, not a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise  # usage errors, typer.Exit (after a command's own `error:` line), Ctrl-C: typer reports them
        except Exception as exc:
            if debug_requested(ctx):
                raise
            typer.echo(error_line(exc), err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="evl-ecg",
    help="EVL-ECG: distil a large ECG vision-language model into a small one, offline.",
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# (module, attribute, name, help); a stage whose commands module is absent is simply not listed.
_GROUPS = [
    ("evl_ecg.data.commands", "app", "data", "Synthesise, render and inspect ECGs and conversation records."),
    ("evl_ecg.eval.commands", "app", "eval", "Score predictions on ECGBench; generate and evaluate models."),
    ("evl_ecg.train.commands", "app", "train", "Train the tiny teacher or fine-tune the student (SFT)."),
]
_COMMANDS = [
    ("evl_ecg.eval.commands", "report", "report"),
    ("evl_ecg.train.commands", "distill", "distill"),
    ("evl_ecg.experiments.commands", "demo", "demo"),
    ("evl_ecg.experiments.commands", "study", "study"),
    ("evl_ecg.infer.commands", "predict", "predict"),
    ("evl_ecg.infer.commands", "export", "export"),
    ("evl_ecg.infer.commands", "serve", "serve"),
    ("evl_ecg.infer.commands", "embed", "embed"),
]


def _attach() -> None:
    for module, attr, name, help_text in _GROUPS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        app.add_typer(getattr(mod, attr), name=name, help=help_text)
    for module, attr, name in _COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        if hasattr(mod, attr):
            app.command(name=name)(getattr(mod, attr))


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", help=f"show the Python traceback of an unexpected error (or set {DEBUG_ENV}=1)."),
    ] = False,
) -> None:
    """EVL-ECG: distil a large ECG vision-language model into a small one, offline."""
    from evl_ecg.quiet import quiet_library_noise

    if debug:
        ctx.meta[_DEBUG_META] = True
    quiet_library_noise(not debug_requested(ctx))  # libraries' load noise (torchao's) only when asked for


_attach()


@app.command()
def version() -> None:
    """Print the package version."""
    from evl_ecg import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
