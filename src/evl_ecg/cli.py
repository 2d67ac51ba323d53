"""``evl-ecg``: the one command, with one sub-command group per stage.

Each stage keeps its commands in its own ``commands.py`` (a typer app); this module only composes them, so
that ``evl-ecg --help`` stays fast (stages import their heavy dependencies inside the commands).
"""

from __future__ import annotations

import importlib
import os

import typer

# Nothing in this project downloads anything: weights and data load from local paths only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="evl-ecg",
    help="EVL-ECG: distil a large ECG vision-language model into a small one, offline.",
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
    ("evl_ecg.train.commands", "demo", "demo"),
    ("evl_ecg.train.commands", "study", "study"),
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
def _root() -> None:
    """EVL-ECG: distil a large ECG vision-language model into a small one, offline."""


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
