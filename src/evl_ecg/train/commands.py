"""``evl-ecg train teacher|sft|cache`` and ``evl-ecg distill``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from evl_ecg.console import fail as _fail

app = typer.Typer(no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: configs/tiny/<phase>.yaml).")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set key=value (repeat).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="run directory (output_dir).")]


def _message(exc: BaseException) -> str:
    """One line for an expected failure: ours name the file or option; a bare ``OSError`` gets its file named."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _run(phase: str, config: Path | None, overrides: list[str] | None, **kwargs) -> None:
    from evl_ecg.train.config import load_config, tiny_config_path
    from evl_ecg.train.pipeline import run

    if config is None:  # the offline default: configs/tiny/<phase>.yaml
        config = tiny_config_path(phase)
        typer.echo(f"config: {config} (the tiny offline default; --config for another)", err=True)
    try:
        cfg = load_config(config, overrides, phase=phase, **kwargs)
    except (ValueError, OSError) as exc:
        _fail(_message(exc))
    try:
        from evl_ecg.eval.curves import curve_callbacks

        result = run(cfg, callbacks=curve_callbacks(cfg))
    except (ValueError, OSError) as exc:  # bad inputs, a diverged run (NonFiniteError), an unwritable output
        _fail(_message(exc))
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


LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="label budget: train on a share ('10%'), a count ('200') or 'all' of --data's records only, drawn "
        "per --label-seed and stratified by task (the split is written to OUT/budget; docs/data.md).",
    ),
]
LabelSeedOpt = Annotated[int, typer.Option("--label-seed", min=0, help="seed of the labelled records' draw.")]
ViewsOpt = Annotated[
    str | None,
    typer.Option(
        "--views",
        help="view policy: comma-separated views or families (signal, rendering, image) drawn fresh for each sample "
        "at every epoch, the same image for both models (views: {names: ...}; severity and p from --set "
        "views={severity: [0.2, 1.0], p: 0.5}, these defaults otherwise; docs/train.md).",
    ),
]


def _with_views(views: str | None, overrides: list[str] | None) -> list[str] | None:
    """``--views NAMES`` as the override ``views={names: [...]}`` (merged with the config's and ``--set``'s)."""
    if views is None:
        return overrides
    from evl_ecg.ecg.views import FAMILIES, VIEWS

    names = [n.strip() for n in views.split(",") if n.strip()]
    for name in names:
        if name not in FAMILIES and name not in VIEWS:
            _fail(f"--views {name}: not a view or a family; known: {', '.join([*FAMILIES, *VIEWS])}")
    if not names:
        _fail("--views: name one view or family or more")
    return [*(overrides or []), f"views={{names: [{', '.join(names)}]}}"]


def _budgeted(
    data: Path | None, out: Path | None, labels: str, seed: int, overrides: list[str] | None, answers: Path | None
) -> tuple[Path, list[str]]:
    """The training file under a label budget (``OUT/budget/labelled.json``, or with ``answers`` the labelled records
    then the pool with those answers, ``OUT/budget/train.json``) and the overrides that keep every stage on it: the
    images of ``data``, and vision pretraining on the labelled records' findings (fresh drawn images carry labels)."""
    from evl_ecg.data.budget import LABELLED_FILE, POOL_FILE, BudgetError, compose, load_answers, load_pool, write_split
    from evl_ecg.data.records import RecordError, default_image_root, load_records, save_records

    if data is None or out is None:
        _fail("--labels needs --data (the corpus to draw from) and --out (where the split is written)")
    overrides = list(overrides or [])
    if any(o.replace(" ", "").startswith("pretrain_vision_data=fresh") for o in overrides):
        _fail("--labels with pretrain_vision_data=fresh: freshly drawn images carry labels beyond the budget")
    folder = Path(out) / "budget"
    try:
        info = write_split(data, folder, labels, seed)
        train = folder / LABELLED_FILE
        if answers is not None:
            records, empty = compose(load_records(train), load_pool(folder / POOL_FILE), load_answers(answers))
            if empty:
                typer.echo(f"warning: {len(empty)} pool record(s) have an empty answer and are left out", err=True)
            train = folder / "train.json"
            save_records(train, records)
    except (BudgetError, RecordError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    typer.echo(f"label budget {info['budget']}: {info['labelled']} labelled, {info['pool']} in the pool", err=True)
    root = [] if any(o.startswith("image_root=") for o in overrides) else [f"image_root={default_image_root(data)}"]
    return train, [*root, "pretrain_vision_data=train", *overrides]


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
    labels: LabelsOpt = None,
    label_seed: LabelSeedOpt = 0,
    views: ViewsOpt = None,
) -> None:
    """Phase 1: supervised fine-tuning of the student (CE on assistant turns)."""
    overrides = _with_views(views, overrides)
    if labels is not None:
        data, overrides = _budgeted(data, out, labels, label_seed, overrides, None)
    _run(
        "sft",
        config,
        overrides,
        output_dir=str(out) if out else None,
        train_file=str(data) if data else None,
        student=str(student) if student else None,
    )


def distill(
    method: Annotated[
        str | None,
        typer.Option(
            help="objective preset: evl-ecg, ot, ot+mhca, ot+mhca+rel, or a baseline (default: the config's "
            "method, evl-ecg in the tiny config).",
        ),
    ] = None,
    config: ConfigOpt = None,
    out: OutOpt = None,
    data: Annotated[Path | None, typer.Option(help="training file (ECGInstruct JSON).")] = None,
    student: Annotated[Path | None, typer.Option(help="the SFT student checkpoint directory.")] = None,
    teacher: Annotated[Path | None, typer.Option(help="the teacher checkpoint directory.")] = None,
    teacher_cache: Annotated[
        Path | None,
        typer.Option(
            "--teacher-cache",
            help="teacher-output cache directory: built there if empty or absent, reused if its key matches, "
            "refused otherwise (docs/train.md).",
        ),
    ] = None,
    overrides: SetOpt = None,
    labels: LabelsOpt = None,
    label_seed: LabelSeedOpt = 0,
    answers: Annotated[
        Path | None,
        typer.Option(
            help="with --labels: a model's answers to the pool (`evl-ecg eval answers`), the pool's targets "
            "(the teacher's: sequence-level KD); without it only the labelled records train."
        ),
    ] = None,
    views: ViewsOpt = None,
) -> None:
    """Phase 2: distil the teacher into the student with any registered method."""
    from evl_ecg.distill.presets import list_presets

    if method is not None and method not in list_presets():  # given: it wins over the config's and --set's
        _fail(f"unknown method {method!r}; choose one of {', '.join(sorted(list_presets()))}")
    if answers is not None and labels is None:
        _fail("--answers: the pool's answers need a --labels budget (the records they answer)")
    overrides = _with_views(views, overrides)
    if labels is not None:
        data, overrides = _budgeted(data, out, labels, label_seed, overrides, answers)
    _run(
        "kd",
        config,
        overrides,
        method=method,
        output_dir=str(out) if out else None,
        train_file=str(data) if data else None,
        student=str(student) if student else None,
        teacher=str(teacher) if teacher else None,
        teacher_cache=str(teacher_cache) if teacher_cache else None,
    )


@app.command("cache")
def build_cache(
    out: Annotated[Path, typer.Option("--out", help="the cache directory (empty or absent).")],
    teacher: Annotated[Path, typer.Option(help="the teacher checkpoint directory.")],
    data: Annotated[Path | None, typer.Option(help="training file (ECGInstruct JSON).")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(help="method(s) the cache must serve (repeat; the union of what they read): default evl-ecg."),
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            help="a field the cache must hold beyond what the methods' presets read (repeat; for methods whose "
            "objective is overridden per method, as `study --method-set` does).",
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Build the teacher-output cache that `distill --teacher-cache DIR` reuses (the teacher runs once per record)."""
    from evl_ecg.distill.presets import list_presets
    from evl_ecg.train.config import load_config, tiny_config_path
    from evl_ecg.train.pipeline import image_loader, load_training_records
    from evl_ecg.train.teacher_cache import FIELDS, method_fields, open_or_build

    methods = method or ["evl-ecg"]
    extra = sorted(set(field or []))
    bad = [f for f in extra if f not in FIELDS]
    if bad:
        _fail(f"--field {', '.join(bad)}: not a cacheable field; choose from {', '.join(FIELDS)}")
    unknown = [m for m in methods if m not in list_presets()]
    if unknown:
        _fail(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(sorted(list_presets()))}")
    if config is None:
        config = tiny_config_path("kd")
        typer.echo(f"config: {config} (the tiny offline default; --config for another)", err=True)
    t0 = time.perf_counter()
    try:
        cfg = load_config(
            config,
            overrides,
            phase="kd",
            method=methods[0],
            teacher=str(teacher),
            teacher_cache=str(out),
            train_file=str(data) if data else None,
        )
        fields = method_fields(methods, cfg.objective if len(methods) == 1 else None)
        if fields is None and not extra:
            _fail(f"method(s) {', '.join(methods)} read nothing of the teacher: no cache to build")
        fields = frozenset(fields or ()) | frozenset(extra)
        records = load_training_records(cfg)
        cache = open_or_build(cfg, records, image_loader(cfg), fields=fields)
    except (ValueError, OSError) as exc:
        _fail(_message(exc))
    typer.echo(json.dumps({**cache.describe(), "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
