"""``evl-ecg train teacher|sft``, ``evl-ecg distill`` and ``evl-ecg demo``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: configs/tiny/<phase>.yaml).")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set key=value (repeat).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="run directory (output_dir).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _run(phase: str, config: Path | None, overrides: list[str] | None, **kwargs) -> None:
    from evl_ecg.train.config import load_config, tiny_config_path
    from evl_ecg.train.pipeline import run

    if config is None:  # the offline default: configs/tiny/<phase>.yaml
        config = tiny_config_path(phase)
        typer.echo(f"config: {config} (the tiny offline default; --config for another)", err=True)
    try:
        cfg = load_config(config, overrides, phase=phase, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "phase": phase,
                "objective": result.objective,
                "output_dir": str(result.output_dir),
                "student": str(result.student_dir),
                "seconds": round(result.seconds, 1),
            },
            indent=2,
        )
    )


@app.command("teacher")
def train_teacher(
    config: ConfigOpt = None,
    out: OutOpt = None,
    data: Annotated[Path | None, typer.Option(help="training file (ECGInstruct JSON).")] = None,
    overrides: SetOpt = None,
) -> None:
    """Train the tiny teacher on the synthetic corpus (offline default only)."""
    _run("teacher", config, overrides, output_dir=str(out) if out else None, train_file=str(data) if data else None)


@app.command("sft")
def train_sft(
    config: ConfigOpt = None,
    out: OutOpt = None,
    data: Annotated[Path | None, typer.Option(help="training file (ECGInstruct JSON).")] = None,
    student: Annotated[Path | None, typer.Option(help="student checkpoint (default: a new tiny student).")] = None,
    overrides: SetOpt = None,
) -> None:
    """Phase 1: supervised fine-tuning of the student (CE on assistant turns)."""
    _run(
        "sft",
        config,
        overrides,
        output_dir=str(out) if out else None,
        train_file=str(data) if data else None,
        student=str(student) if student else None,
    )


def distill(
    method: Annotated[str, typer.Option(help="objective preset: evl-ecg, ot, ot+mhca, ot+mhca+rel, or a baseline.")] = (
        "evl-ecg"
    ),
    config: ConfigOpt = None,
    out: OutOpt = None,
    data: Annotated[Path | None, typer.Option(help="training file (ECGInstruct JSON).")] = None,
    student: Annotated[Path | None, typer.Option(help="the SFT student checkpoint directory.")] = None,
    teacher: Annotated[Path | None, typer.Option(help="the teacher checkpoint directory.")] = None,
    overrides: SetOpt = None,
) -> None:
    """Phase 2: distil the teacher into the student with any registered method."""
    from evl_ecg.distill.presets import list_presets

    if method not in list_presets():
        _fail(f"unknown method {method!r}; choose one of {', '.join(sorted(list_presets()))}")
    _run(
        "kd",
        config,
        overrides,
        method=method,
        output_dir=str(out) if out else None,
        train_file=str(data) if data else None,
        student=str(student) if student else None,
        teacher=str(teacher) if teacher else None,
    )


def demo(
    out: Annotated[Path, typer.Option(help="directory for everything the demo makes.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed of the corpus and of every run.")] = 0,
    quick: Annotated[bool, typer.Option(help="a very short run (smoke test), not the documented default.")] = False,
) -> None:
    """synth -> teacher -> student SFT -> KD (EVL-ECG) -> evaluation with both scorers, with a results table."""
    from evl_ecg.train.demo import run_demo

    t0 = time.perf_counter()
    try:
        summary = run_demo(out, seed=seed, quick=quick)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(summary["table_markdown"])
    typer.echo(f"total {time.perf_counter() - t0:.0f} s; results in {out / 'results.md'} and {out / 'results.json'}")
    os.environ.setdefault("EVL_ECG_DEMO_DONE", "1")
