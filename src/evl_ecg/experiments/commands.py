"""``evl-ecg demo`` and ``evl-ecg study`` (``--labels``): thin commands over :mod:`evl_ecg.experiments`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from evl_ecg.console import fail as _fail


def demo(
    out: Annotated[Path, typer.Option(help="directory for everything the demo makes.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed of the corpus and of every run.")] = 0,
    quick: Annotated[bool, typer.Option(help="a very short run (smoke test), not the documented default.")] = False,
    paper_objective: Annotated[
        bool, typer.Option(help="KD with the paper's objective as written, not the tiny preset's settings.")
    ] = False,
    study: Annotated[
        Path | None,
        typer.Option(
            help="a study folder (evl-ecg study --out) whose mean +- std to print beside this run (default: "
            "the shipped study)."
        ),
    ] = None,
    generator: Annotated[
        int,
        typer.Option(
            min=1, max=2, help="synthetic-ECG generator of the corpus: 2 (closer to real ECGs) or 1 (frozen)."
        ),
    ] = 2,
    teacher: Annotated[
        Path | None, typer.Option(help="teacher checkpoint in place of the shipped tiny one (e.g. the v1 teacher).")
    ] = None,
    labels: Annotated[
        str,
        typer.Option(
            help="label budget: a count or a fraction of the training records ('10%', '200'); 'all' for the paper's "
            "regime (every record labelled)."
        ),
    ] = "10%",
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="with a label budget: phase-2 runs at once, each in its own process with cores / jobs threads "
            "(default: one per core, at most 3).",
        ),
    ] = None,
) -> None:
    """synth -> label budget -> teacher answers the pool -> student SFT on the labelled records -> control, the
    label study's primary method and it with EVL-ECG's terms, same steps -> evaluation, results table."""
    from evl_ecg.experiments.demo import run_demo

    t0 = time.perf_counter()
    try:
        summary = run_demo(
            out,
            seed=seed,
            quick=quick,
            paper_objective=paper_objective,
            study=study,
            generator=generator,
            teacher=teacher,
            labels=labels,
            jobs=jobs,
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(summary["table_markdown"])
    typer.echo(f"total {time.perf_counter() - t0:.0f} s; results in {out / 'results.md'} and {out / 'results.json'}")
    os.environ.setdefault("EVL_ECG_DEMO_DONE", "1")


def study(
    out: Annotated[Path, typer.Option(help="study folder (created; a rerun resumes what did not finish).")],
    seeds: Annotated[
        str | None,
        typer.Option(help="comma-separated seeds of the phase-2 runs (default 0,1,2; with --labels 0,1,2,3,4)."),
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="comma-separated methods (default: the 11 of Tables 1 and 6, control included).")
    ] = None,
    phase1_seeds: Annotated[bool, typer.Option(help="train one phase-1 checkpoint per seed (default: one shared).")] = (
        False
    ),
    teacher: Annotated[Path | None, typer.Option(help="teacher checkpoint (default: the shipped tiny one).")] = None,
    train_records: Annotated[int, typer.Option("--train", help="training records of the corpus.")] = 2000,
    val: Annotated[int, typer.Option(help="validation records per subset (settings are chosen on them).")] = 100,
    test_ptb: Annotated[int, typer.Option(help="PTB-XL records of the test benchmark (others in proportion).")] = 500,
    steps: Annotated[int, typer.Option(help="phase-2 steps of every method (the control's too).")] = 300,
    phase1_set: Annotated[list[str] | None, typer.Option("--phase1-set", help="phase-1 config override.")] = None,
    phase2_set: Annotated[list[str] | None, typer.Option("--phase2-set", help="phase-2 config override.")] = None,
    method_set: Annotated[
        list[str] | None,
        typer.Option(
            "--method-set",
            help="phase-2 override of some methods only: METHOD[,METHOD...]:KEY=VALUE "
            "(e.g. 'evl-ecg:objective={alpha: 0.5}'), after the tiny preset's own (later wins).",
        ),
    ] = None,
    paper_objective: Annotated[
        bool,
        typer.Option(
            help="EVL-ECG and Table 6's rows with the paper's objective as written, without the tiny preset's "
            "settings (docs/train.md section 4: on the tiny pair it returns the student to one answer)."
        ),
    ] = False,
    threads: Annotated[
        int, typer.Option(help="torch threads of each run (runs go one at a time; with --labels, --jobs at a time).")
    ] = 2,
    generator: Annotated[
        int,
        typer.Option(
            min=1, max=2, help="synthetic-ECG generator of both corpora: 2 (closer to real ECGs) or 1 (frozen)."
        ),
    ] = 2,
    quick: Annotated[bool, typer.Option(help="a smoke test of the whole grid (a few steps each), not a result.")] = (
        False
    ),
    labels: Annotated[
        str | None,
        typer.Option(
            help="the label-budget study instead (docs/train.md): comma-separated budgets of the control, e.g. "
            "'5%,10%,25%,50%,100%'; the teacher rows run at --main-budget."
        ),
    ] = None,
    main_budget: Annotated[str, typer.Option(help="with --labels: the budget of every row and 5 seeds.")] = "10%",
    rows: Annotated[
        str | None, typer.Option(help="with --labels: comma-separated rows at the main budget (default: all).")
    ] = None,
    phase1_steps: Annotated[
        int | None, typer.Option(min=1, help="with --labels: phase-1 steps (default: chosen on validation).")
    ] = None,
    phase2_steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="with --labels: phase-2 steps of every row, each keeping its best validation point (1200)."
        ),
    ] = None,
    jobs: Annotated[
        int, typer.Option(min=1, help="with --labels: runs at once, each with --threads threads (2 x 1 on 2 cores).")
    ] = 1,
    data_seed: Annotated[int, typer.Option(min=0, help="with --labels: seed of the training corpus.")] = 21,
    test_seed: Annotated[int, typer.Option(min=0, help="with --labels: seed of the test benchmark.")] = 2100,
) -> None:
    """Every method of the paper's Tables 1, 6 and 7 from one phase-1 checkpoint, over seeds, on a fresh test set;
    with --labels, the label-budget study (few labels, an unlabelled pool, the teacher's answers)."""
    from evl_ecg.experiments.study import STUDY_METHODS, TINY_METHOD_SETS, StudyError, StudySettings, run_study

    default_seeds = "0,1,2,3,4" if labels else "0,1,2"
    try:
        seed_list = tuple(int(x) for x in (seeds or default_seeds).split(",") if x.strip())
    except ValueError:
        _fail(f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,1,2")
    if labels:
        _label_study(out, labels, main_budget, rows, seed_list, phase1_steps, phase2_steps, data_seed, test_seed,
                     teacher, train_records, val, test_ptb, threads, generator, quick, jobs,
                     unused={"--methods": methods, "--method-set": method_set, "--phase1-set": phase1_set,
                             "--phase2-set": phase2_set, "--phase1-seeds": phase1_seeds or None,
                             "--paper-objective": paper_objective or None})  # fmt: skip
        return
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else STUDY_METHODS
    small = {"n_train": 48, "n_val": 4, "test_ptb": 8} if quick else {}
    try:
        settings = StudySettings(
            seeds=seed_list,
            methods=chosen,
            phase1_seeds=phase1_seeds,
            n_train=small.get("n_train", train_records),
            n_val=small.get("n_val", val),
            test_ptb=small.get("test_ptb", test_ptb),
            phase2_steps=steps,
            phase1_overrides=tuple(phase1_set or ()),
            phase2_overrides=tuple(phase2_set or ()),
            method_overrides=(() if paper_objective else TINY_METHOD_SETS) + tuple(method_set or ()),
            teacher=str(teacher) if teacher else None,
            quick=quick,
            threads=threads,
            generator=generator,
        )
        res = run_study(out, settings, log=lambda m: typer.echo(m, err=True))
    except (StudyError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
    typer.echo((Path(out) / "results.md").read_text())
    typer.echo(f"wall time {res['wall_seconds']:.0f} s")


def _label_study(
    out: Path, labels: str, main_budget: str, rows: str | None, seeds: tuple[int, ...], phase1_steps: int | None,
    phase2_steps: int | None, data_seed: int, test_seed: int, teacher: Path | None, train_records: int, val: int,
    test_ptb: int, threads: int, generator: int, quick: bool, jobs: int, unused: dict[str, Any],
) -> None:  # fmt: skip
    """``evl-ecg study --labels``: the label-budget study (:mod:`evl_ecg.experiments.label_study`)."""
    from evl_ecg.experiments.label_study import MAIN_ROWS, LabelStudySettings, run_label_study
    from evl_ecg.experiments.study import StudyError

    given = [name for name, value in unused.items() if value]
    if given:
        _fail(f"{given[0]}: not an option of the label-budget study (--labels); its rows are chosen with --rows")
    budgets = tuple(b.strip() for b in labels.split(",") if b.strip())
    chosen = tuple(r.strip() for r in rows.split(",") if r.strip()) if rows else MAIN_ROWS
    small = {"n_train": 40, "n_val": 4, "test_ptb": 8} if quick else {}
    try:
        settings = LabelStudySettings(
            budgets=budgets,
            main_budget=main_budget,
            seeds=seeds,
            rows=chosen,
            n_train=small.get("n_train", train_records),
            n_val=small.get("n_val", val),
            test_ptb=small.get("test_ptb", test_ptb),
            data_seed=data_seed,
            test_seed=test_seed,
            generator=generator,
            phase1_steps=phase1_steps,
            **({"phase2_steps": phase2_steps} if phase2_steps else {}),
            teacher=str(teacher) if teacher else None,
            quick=quick,
            threads=threads,
            jobs=jobs,
        )
        res = run_label_study(out, settings, log=lambda m: typer.echo(m, err=True))
    except (StudyError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
    typer.echo((Path(out) / "results.md").read_text())
    typer.echo(f"wall time {res['wall_seconds']:.0f} s")
