"""``evl-ecg study --labels``: where distillation pays. Few labelled records, an unlabelled pool, and a teacher.

A hospital holds an archive of ECGs of which a few carry a reviewed diagnosis, and a foundation model. This study
measures, on one command, how many labels the teacher saves: the control (CE on the labelled records alone) at
several label budgets, and at the main budget the teacher-using methods beside the controls that could explain
their gain (label smoothing, self-training, a shuffled teacher). Definitions: docs/train.md section 6a
and :mod:`evl_ecg.data.budget`.

Layout of ``out``::

    labels-study.json             its resume key (:mod:`evl_ecg.resume`): every setting and the teacher's fingerprint
    data/                         the training corpus (its own seed) with its validation split (val/<subset>.json)
    test/                         the reported test benchmark (its own seed; scored after every choice is made)
    answers/teacher/              the teacher's answers to every training record's pool question (one file)
    budgets/<b>/seed-<s>/         labelled.json, pool.json, budget.json; the composed training file of each row
    choose/<b>/                   phase-1 steps (the control) and the label smoothing, chosen on validation (first seed)
    phase1/<b>/seed-<s>/          phase 1: SFT on the labelled records (vision pretraining on their findings only)
    self/<b>/seed-<s>/            the phase-1 student's own answers to its pool (self-training)
    runs/<b>/<row>/seed-<s>/      one phase-2 run from that phase-1 student, its evaluation in eval/, done.json
    results.json, results.md, summary.json, figures/labels.png

Every stage that reads a label reads ``labelled.json`` only: vision pretraining (``pretrain_vision_data=train``),
phase 1, phase 2, and the validation curves, which read no more validation records than the budget has labels. A
pool record enters training only with a model's answer (the teacher's, or for self-training the student's own).

Phase 2 is the same for every row: ``phase2_steps`` steps with a validation curve, and the row keeps the student of
its best validation point (validation checkpoint selection, :func:`evl_ecg.eval.curves.best_point`; step 0 is the
phase-1 student itself). Every row thus has the same steps, data and tuning budget, and a control that only loses by
training on further is not made to (the pilot of docs/train.md section 6a: the control's validation AUC fell from
63.1 to 56.7 over 300 phase-2 steps while sequence-level KD needed more than 1,000 to gain).

Every run is a subprocess, as in :mod:`evl_ecg.experiments.study`; a run is finished when its ``done.json`` exists,
and a rerun of the same command resumes. ``jobs`` runs that many subprocesses at once (each seed's runs in order; a
single run, such as the teacher's answers, gets every job's threads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evl_ecg.data.budget import Budget, BudgetError
from evl_ecg.eval.curves import BEST_DIR, best_point
from evl_ecg.experiments.study import (
    REPORTED,
    TINY_METHOD_SETS,
    StudyError,
    _cli,
    _read_curve,
    _write_json,
    claim_study_folder,
    method_settings,
    run_process,
    study_data,
    study_teacher,
)
from evl_ecg.files import atomic_write_bytes

#: the file of the resume key
KEY_FILE = "labels-study.json"


@dataclass(frozen=True)
class Row:
    """One row of the study: what its phase 2 trains on and with which objective.

    ``pool``: ``None`` (the labelled records only), ``"teacher"`` (the pool with the teacher's answers: sequence-level
    KD), ``"self"`` (the phase-1 student's own answers: self-training) or ``"shuffled"`` (the teacher's answers given
    to other pool records of the same vocabulary). ``method``: the ``evl-ecg distill`` preset. ``sets``: its
    ``--set`` overrides (``EPS``: the label smoothing chosen on validation). ``gold``: how many times the labelled
    records appear (the pool's weight against them). ``teacher``: uses the teacher's knowledge (a candidate for the
    primary method); the shuffled teacher is a control. ``pool_ce``: whether the pool's answers are cross-entropy
    targets; ``False`` makes them context for the method's other terms only (``meta`` ``"ce": false``). ``views``:
    trains with :data:`CONSISTENT_VIEWS` (a fresh view of each page every epoch; with a teacher, the live teacher sees
    the same view: consistent teaching, Beyer et al. 2022), so never from the teacher-output cache.
    """

    name: str
    pool: str | None
    method: str
    sets: tuple[str, ...] = ()
    gold: int = 1
    teacher: bool = False
    note: str = ""
    pool_ce: bool = True
    views: bool = False


#: the view policy of the consistent-teaching rows (evl_ecg.train.views): image and signal views (rendering views held
#: out, as scripts/view_policy.py measures them), half the samples, severities 0.2 to 1
CONSISTENT_VIEWS = "views={names: [image, signal], severity: [0.2, 1.0], p: 0.5}"


def teacher_sets(row: Row, teacher_cache: bool, cache: Path) -> list[str]:
    """How ``row``'s run sees the teacher: a view policy and the live teacher (``row.views``: consistent teaching), or
    a teacher-output cache in ``cache`` that the run builds and reads (a row whose objective reads the teacher, when
    ``teacher_cache``), or nothing."""
    if row.views:
        return [CONSISTENT_VIEWS]
    if teacher_cache and row.method != "sft":
        return [f"teacher_cache={cache}"]
    return []


def evl_sets() -> tuple[str, ...]:
    """``--set`` overrides of EVL-ECG's terms at the tiny settings (the study's and the demo's)."""
    return tuple(method_settings(TINY_METHOD_SETS, "evl-ecg"))


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("control", None, "sft", note="CE on the labelled records only"),
        Row(
            "label-smoothing",
            None,
            "sft",
            ("objective={ce: {label_smoothing: EPS}}",),
            note="the control with label smoothing (strength chosen on validation)",
        ),
        Row("self-training", "self", "sft", note="the phase-1 student's own answers on the pool; no teacher"),
        Row("shuffled-teacher", "shuffled", "sft", note="the teacher's answers given to other pool records"),
        Row("seq-kd", "teacher", "sft", teacher=True, note="sequence-level KD: CE on the teacher's pool answers"),
        Row("seq-kd-gold3", "teacher", "sft", gold=3, teacher=True, note="seq-kd with the labelled records x3"),
        Row(
            "seq-kd+evl-ecg",
            "teacher",
            "evl-ecg",
            evl_sets(),
            teacher=True,
            note="seq-kd with EVL-ECG's terms (the tiny settings)",
        ),
        Row(
            "seq-kd+vanilla-kl",
            "teacher",
            "vanilla-kl",
            teacher=True,
            note="seq-kd with the logit baseline (Vanilla KL)",
        ),
        Row("evl-ecg", None, "evl-ecg", evl_sets(), teacher=True, note="EVL-ECG's terms on the labelled records"),
        Row(
            "pool-evl-ecg",
            "teacher",
            "evl-ecg",
            evl_sets(),
            teacher=True,
            pool_ce=False,
            note="EVL-ECG's terms on the pool without CE on its answers (the teacher's answers as context)",
        ),
        Row(
            "label-kd",
            "teacher",
            "label-kd",
            teacher=True,
            pool_ce=False,
            note="label-space KD: the teacher's distribution over each label-set question's answers; CE on the "
            "labelled records only (the pool's answers as context)",
        ),
        Row(
            "seq-kd+label-kd",
            "teacher",
            "label-kd",
            teacher=True,
            note="seq-kd with label-space KD",
        ),
        *(
            Row(
                f"seq-kd+evl-ecg-keys-{keys}",
                "teacher",
                "evl-ecg",
                (*evl_sets(), f"objective={{terms: {{mhca: {{teacher_positions: {keys}}}}}}}"),
                teacher=True,
                note=f"seq-kd+evl-ecg with MHCA's keys on the teacher's {what} (teacher_positions: {keys}); the "
                "row itself keys on its response positions, as its queries",
            )
            for keys, what in (("all", "every position (the paper's)"), ("text", "text positions (no image)"))
        ),
        Row(
            "views-control",
            None,
            "sft",
            views=True,
            note="the control with the consistent rows' view policy (no teacher)",
        ),
        Row(
            "consistent-seq-kd+label-kd",
            "teacher",
            "label-kd",
            teacher=True,
            views=True,
            note="seq-kd with label-space KD, a fresh view of each page every epoch for both models (live teacher)",
        ),
    )
}
#: rows at the main budget (the pool exists), at the other budgets with a pool, and where every record is labelled
MAIN_ROWS = (
    "control",
    "label-smoothing",
    "self-training",
    "shuffled-teacher",
    "seq-kd",
    "seq-kd-gold3",
    "seq-kd+evl-ecg",
    "seq-kd+vanilla-kl",
    "pool-evl-ecg",
    "label-kd",
    "seq-kd+label-kd",
    "seq-kd+evl-ecg-keys-all",
    "seq-kd+evl-ecg-keys-text",
)
#: rows where every record is labelled (the pool is empty): label smoothing, label-space KD and the consistent rows
#: where asked for
ALL_LABELLED_ROWS = (
    "control",
    "label-smoothing",
    "evl-ecg",
    "label-kd",
    "views-control",
    "consistent-seq-kd+label-kd",
)
#: consistent teaching's rows (issue "What the teacher knows beyond its answers"): outside the default grid, run with
#: a long schedule shared by the rows it compares (docs/train.md 6a: ``--rows control,views-control,label-kd,
#: seq-kd+label-kd,consistent-seq-kd+label-kd --phase2-steps 3000``)
CONSISTENT_ROWS = ("views-control", "consistent-seq-kd+label-kd")
#: the controls the primary method must beat (issue "Where distillation pays", section 4)
CONTROLS = ("control", "label-smoothing", "self-training", "shuffled-teacher")
#: seeds the shipped studies and the shipped teacher's data use (the study's corpus and test seeds)
STUDY_SEEDS = {"the study's corpus": 0, "the study's test set": 1000}


@dataclass(frozen=True)
class LabelStudySettings:
    """Everything that determines a label-budget study's numbers."""

    budgets: tuple[str, ...] = ("5%", "10%", "25%", "50%", "100%")
    main_budget: str = "10%"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    other_seeds: int = 3
    rows: tuple[str, ...] = MAIN_ROWS
    seq_kd_budgets: tuple[str, ...] = ("5%", "25%")
    n_train: int = 2000
    n_val: int = 100
    test_ptb: int = 500
    data_seed: int = 21
    test_seed: int = 2100
    generator: int = 2
    phase1_steps: int | None = None
    phase2_steps: int = 1200
    phase1_max: int = 2000
    choice_points: int = 4
    smoothing_grid: tuple[float, ...] = (0.05, 0.1, 0.2)
    max_new_tokens: int = 32
    answer_tokens: int = 64
    teacher: str | None = None
    #: rows that read the teacher's outputs (EVL-ECG's terms, Vanilla KL) take them from a teacher-output cache built
    #: by their run over its own training file (one teacher pass per record, then deleted) instead of running the
    #: teacher at every step: the same outputs (tests/train/test_teacher_cache.py), so not part of the resume key
    teacher_cache: bool = True
    quick: bool = False
    threads: int = 2
    jobs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            parsed = [Budget.parse(b) for b in self.budgets]
            Budget.parse(self.main_budget)
        except BudgetError as exc:
            raise StudyError(f"--labels: {exc}") from None
        if self.main_budget not in self.budgets:
            raise StudyError(f"the main budget {self.main_budget} is not among --labels {', '.join(self.budgets)}")
        if len({str(b) for b in parsed}) != len(parsed):
            raise StudyError(f"--labels {', '.join(self.budgets)}: a budget is given twice")
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown:
            raise StudyError(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
        if "control" not in self.rows:
            raise StudyError("the study needs the control (every row is compared with it): add 'control'")
        if not self.seeds or self.other_seeds < 1:
            raise StudyError("--seeds: give at least one seed (and other_seeds >= 1)")
        if self.n_train < 2 or self.n_val < 1 or self.test_ptb < 1:
            raise StudyError("n_train must be >= 2, n_val and test_ptb >= 1")
        if self.phase1_steps is not None and self.phase1_steps < 1:
            raise StudyError("phase1_steps must be >= 1 (or unset: chosen on validation)")
        if self.phase2_steps < 1 or self.choice_points < 1:
            raise StudyError("phase2_steps and choice_points must be >= 1")
        if self.jobs < 1 or self.threads < 1:
            raise StudyError("jobs and threads must be >= 1")
        if not self.smoothing_grid or not all(0 < e < 1 for e in self.smoothing_grid):
            raise StudyError("smoothing_grid: strengths in (0, 1)")
        clash = {name: seed for name, seed in STUDY_SEEDS.items() if seed in (self.data_seed, self.test_seed)}
        if clash or self.data_seed == self.test_seed:
            raise StudyError(
                f"data_seed {self.data_seed} and test_seed {self.test_seed} must differ from each other and from "
                + ", ".join(f"{k} ({v})" for k, v in STUDY_SEEDS.items())
            )

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def grid(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """``(budget, row, seeds)`` of every phase-2 cell, in the order they run (controls first in each budget)."""
        out = []
        for b in self.budgets:
            seeds = self.seeds if b == self.main_budget else self.seeds[: self.other_seeds]
            if Budget.parse(b).is_all:  # no pool: the controls and EVL-ECG's terms on the labelled records
                rows = [r for r in ALL_LABELLED_ROWS if r in ("control", "evl-ecg") or r in self.rows]
            elif b == self.main_budget:
                rows = [
                    r
                    for r in self.rows
                    if ROWS[r].pool is not None or ROWS[r].views or r in ("control", "label-smoothing")
                ]
            elif b in self.seq_kd_budgets:
                rows = ["control", "seq-kd"]
            else:
                rows = ["control"]
            out += [(b, r, tuple(seeds)) for r in rows]
        return out


def _slug(budget: str) -> str:
    return str(Budget.parse(budget)).replace("%", "pct")


class LabelStudy:
    """One label-budget study folder: :meth:`run` does (or resumes) everything and writes the results."""

    def __init__(
        self,
        out: str | os.PathLike[str],
        settings: LabelStudySettings,
        log: Callable[[str], None] = print,
        runner: Callable[[list[str], Path, int], dict[str, float]] | None = None,
    ):
        self.out = Path(out)
        self.settings = settings
        self.log = log
        #: how a command runs: its own process by default (each run's peak memory its own); a test may run them
        #: in-process (the same code and seeds)
        self.run_process = runner or run_process

    # ---- set-up --------------------------------------------------------------------------------------------------
    def _teacher(self) -> Path:
        return study_teacher(self.settings.teacher)

    def check_teacher_seeds(self, teacher: Path) -> None:
        """The study's corpus and test seeds must differ from those of the teacher's own training corpus and test set
        (its card's ``data_seed`` and ``bench_seed``, where it records them): otherwise the test set or the
        unlabelled pool would be records the teacher was trained or chosen on."""
        card = teacher / "card.json"
        if not card.is_file():
            return
        doc = json.loads(card.read_text())
        used = {
            "the teacher's training corpus": (doc.get("facts") or {}).get("data_seed"),
            "the teacher's test set": (doc.get("scores") or {}).get("bench_seed"),
        }
        for what, seed in used.items():
            for mine, value in (("data_seed", self.settings.data_seed), ("test_seed", self.settings.test_seed)):
                if seed is not None and seed == value:
                    raise StudyError(f"{mine} {value} is the seed of {what} ({card}): choose another")

    def _check_settings(self, teacher: Path) -> None:
        from evl_ecg.models.fingerprint import model_fingerprint
        from evl_ecg.resume import ResumeKey

        if not teacher.is_dir():
            raise StudyError(f"--teacher {teacher}: no such model folder")
        self.check_teacher_seeds(teacher)
        wanted = self.settings.to_json()
        info = {"rows": wanted.pop("rows"), "teacher_cache": wanted.pop("teacher_cache")}
        wanted["teacher_fingerprint"] = model_fingerprint(teacher)["digest"][:16]
        key = ResumeKey(self.out, "label study", wanted, info=info, fresh_option=None, path=self.out / KEY_FILE)
        claim_study_folder(self.out, key)

    def _data(self) -> tuple[Path, Path]:
        s = self.settings
        return study_data(self.out, s.n_train, s.n_val, s.test_ptb, s.data_seed, s.test_seed, s.generator, self.log)

    def _split(self, data: Path, budget: str, seed: int) -> tuple[Path, dict]:
        from evl_ecg.data.budget import BUDGET_FILE, write_split

        folder = self.out / "budgets" / _slug(budget) / f"seed-{seed}"
        if not (folder / BUDGET_FILE).exists():
            write_split(data / "train.json", folder, budget, seed)
        return folder, json.loads((folder / BUDGET_FILE).read_text())

    def _val_records(self, labelled: int) -> int:
        """Validation records a curve may read: no more than the budget has labels."""
        return max(1, min(self.settings.n_val, labelled))

    def _curve_sets(self, data: Path, steps: int, labelled: int, points: int) -> list[str]:
        every = max(1, steps // max(1, points))
        sets = [f"curve_every={every}", f"curve_bench={data / 'val' / 'ptb-test.json'}"]
        return sets + [f"curve_records={self._val_records(labelled)}"]

    # ---- phases --------------------------------------------------------------------------------------------------
    def _phase1(
        self, data: Path, budget: str, seed: int, steps: int, run_dir: Path, curve: int = 0, threads: int | None = None
    ) -> Path:
        """Phase 1 (SFT) on the budget's labelled records: vision pretraining on their findings only."""
        s = self.settings
        if (run_dir / "done.json").exists():
            return run_dir / "student"
        folder, info = self._split(data, budget, seed)
        self.log(f"[labels] phase 1, {budget} ({info['labelled']} labelled), seed {seed}: {steps} steps")
        sets = [
            f"seed={seed}",
            f"max_steps={steps}",
            f"save_steps={steps}",
            "pretrain_vision_data=train",
            f"image_root={data / 'images'}",
            f"logging_steps={max(1, min(25, steps))}",
        ]
        if s.quick:
            sets += ["pretrain_vision_steps=2", "pretrain_vision_records=16"]
        if curve:
            sets += self._curve_sets(data, steps, info["labelled"], curve)
        cmd = _cli("train", "sft", "--data", str(folder / "labelled.json"), "--out", str(run_dir))
        args = [*cmd, *[x for v in sets for x in ("--set", v)]]
        usage = self.run_process(args, run_dir.with_suffix(".log"), threads or s.threads)
        _write_json(run_dir / "done.json", usage)
        return run_dir / "student"

    def _teacher_answers(self, teacher: Path, data: Path, threads: int | None = None) -> Path:
        """The teacher's answers to every training record's pool question, once (every budget and seed)."""
        from evl_ecg.eval.answers import answers_file
        from evl_ecg.models.fingerprint import model_fingerprint

        folder = self.out / "answers" / "teacher"
        done = folder / "done.json"
        path = answers_file(folder, model_fingerprint(teacher)["digest"])
        if not done.exists():
            self.log("[labels] the teacher answers every training record's pool question")
            cmd = _cli(
                "eval",
                "answers",
                "--model",
                str(teacher),
                "--data",
                str(data / "train.json"),
                "--out",
                str(folder),
                "--max-new-tokens",
                str(self.settings.answer_tokens),
            )
            _write_json(done, self.run_process(cmd, folder / "answers.log", threads or self.settings.threads))
        return path

    def _self_answers(self, student: Path, data: Path, budget: str, seed: int) -> Path:
        """The phase-1 student's own answers to its pool (self-training): the pool questions as records."""
        from evl_ecg.data.budget import POOL_FILE, load_pool
        from evl_ecg.data.records import save_records
        from evl_ecg.eval.answers import answers_file
        from evl_ecg.models.fingerprint import model_fingerprint

        folder = self.out / "self" / _slug(budget) / f"seed-{seed}"
        done = folder / "done.json"
        path = answers_file(folder, model_fingerprint(student)["digest"])
        if not done.exists():
            split, _ = self._split(data, budget, seed)
            questions = folder / "pool-questions.json"
            folder.mkdir(parents=True, exist_ok=True)
            save_records(questions, [item.with_answer("-") for item in load_pool(split / POOL_FILE)])
            self.log(f"[labels] self-training: the phase-1 student answers its pool ({budget}, seed {seed})")
            cmd = _cli(
                "eval",
                "answers",
                "--model",
                str(student),
                "--data",
                str(questions),
                "--out",
                str(folder),
                "--image-root",
                str(data / "images"),
                "--max-new-tokens",
                str(self.settings.answer_tokens),
            )
            _write_json(done, self.run_process(cmd, folder / "answers.log", self.settings.threads))
        return path

    def _compose(self, row: Row, data: Path, budget: str, seed: int, answers: Path | None) -> Path:
        """The training file of ``row`` at ``budget`` and ``seed`` (the labelled records alone, or with a pool)."""
        from evl_ecg.data.budget import (
            LABELLED_FILE,
            POOL_FILE,
            compose,
            load_answers,
            load_pool,
            pool_vocabulary,
            shuffled_answers,
        )
        from evl_ecg.data.records import load_records, save_records

        folder, _ = self._split(data, budget, seed)
        if row.pool is None:
            return folder / LABELLED_FILE
        name = f"train-{row.pool}" + (f"-gold{row.gold}" if row.gold > 1 else "")
        name += ("" if row.pool_ce else "-context") + ".json"
        path = folder / name
        if path.exists():
            return path
        labelled = load_records(folder / LABELLED_FILE)
        pool = load_pool(folder / POOL_FILE)
        assert answers is not None
        given = load_answers(answers)
        if row.pool == "shuffled":
            ids = {p.id for p in pool}
            vocab = {r.id: pool_vocabulary(r) for r in load_records(data / "train.json") if r.id in ids}
            given = shuffled_answers({i: given[i] for i in ids if i in given}, vocab, seed)
        records, empty = compose(labelled, pool, given)
        if empty:
            self.log(f"[labels] {name}: {len(empty)} pool record(s) with an empty answer left out")
        copies = [dataclasses.replace(r, id=f"{r.id}~{k}") for k in range(2, row.gold + 1) for r in labelled]
        if not row.pool_ce:  # the pool's answers are context for the method's terms, not CE targets
            ids = {p.id for p in pool}
            records = [dataclasses.replace(r, meta={"ce": False}) if r.id in ids else r for r in records]
        save_records(path, records + copies)
        return path

    def _phase2(
        self,
        row: Row,
        budget: str,
        seed: int,
        train_file: Path,
        student: Path,
        teacher: Path,
        data: Path,
        steps: int,
        run_dir: Path,
        labelled: int,
        eps: float | None = None,
        test: Path | None = None,
    ) -> dict:
        s = self.settings
        done = run_dir / "done.json"
        if done.exists():
            return json.loads(done.read_text())
        self.log(f"[labels] {budget} {row.name}, seed {seed}: {steps} phase-2 steps")
        sets = [
            f"seed={seed}",
            f"max_steps={steps}",
            f"save_steps={steps}",
            f"image_root={data / 'images'}",
            f"logging_steps={max(1, min(25, steps))}",
        ]
        sets += [x.replace("EPS", str(eps)) for x in row.sets]
        sets += [*self._curve_sets(data, steps, labelled, s.choice_points), "curve_keep_best=true"]
        cache = run_dir / "teacher-cache"
        sets += teacher_sets(row, s.teacher_cache, cache)
        cmd = _cli(
            "distill",
            "--method",
            row.method,
            "--data",
            str(train_file),
            "--student",
            str(student),
            "--teacher",
            str(teacher),
            "--out",
            str(run_dir / "train"),
        )
        train = self.run_process([*cmd, *[x for v in sets for x in ("--set", v)]], run_dir / "train.log", s.threads)
        if cache.is_dir():  # its outputs are the teacher's, rebuilt in a minute: not worth the disk once trained
            train["teacher_cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            shutil.rmtree(cache)
        curve = _read_curve(run_dir / "train")
        if not curve:
            raise StudyError(f"{run_dir / 'train'}: the run wrote no validation curve")
        best = best_point(curve)
        # the row's model: the student of its best validation point (step 0: the phase-1 student itself)
        model = run_dir / "train" / BEST_DIR if best["step"] > 0 else student
        result: dict[str, Any] = {
            "row": row.name,
            "budget": budget,
            "seed": seed,
            "steps": steps,
            "train": train,
            "curve": curve,
            "chosen_step": int(best["step"]),
            "val_auc": float(best["auc"]),
            "model": str(model),
            "train_file": str(train_file),
        }
        if eps is not None:
            result["label_smoothing"] = eps
        if test is not None:
            result["eval"] = self.run_process(self._eval_cmd(model, test, run_dir), run_dir / "eval.log", s.threads)
            result["scores"] = str(run_dir / "eval" / "scores.json")
        _write_json(done, result)
        return result

    def _eval_cmd(self, model: Path, test: Path, run_dir: Path) -> list[str]:
        subsets = [x for sub in REPORTED for x in ("--subset", sub)]
        cmd = _cli("eval", "run", "--model", str(model), "--bench", str(test / "bench"), "--out", str(run_dir / "eval"))
        return cmd + ["--max-new-tokens", str(8 if self.settings.quick else self.settings.max_new_tokens), *subsets]

    def _teacher_eval(self, teacher: Path, test: Path, threads: int | None = None) -> dict:
        run_dir = self.out / "runs" / "teacher"
        done = run_dir / "done.json"
        if done.exists():
            return json.loads(done.read_text())
        self.log("[labels] the teacher on the test benchmark")
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._eval_cmd(teacher, test, run_dir)
        usage = self.run_process(cmd, run_dir / "eval.log", threads or self.settings.threads)
        result = {
            "row": "teacher",
            "budget": None,
            "seed": None,
            "eval": usage,
            "scores": str(run_dir / "eval" / "scores.json"),
        }
        _write_json(done, result)
        return result

    # ---- choices on the validation split -------------------------------------------------------------------------
    @staticmethod
    def best_step(curve: list[dict]) -> tuple[int, float]:
        """The step of the highest validation AUC after step 0 (the earlier one on a tie: fewer steps cost less)."""
        points = [p for p in curve if p["step"] > 0]
        if not points:
            raise StudyError("a choice run wrote no validation curve after step 0")
        best = max(points, key=lambda p: (p["auc"], -p["step"]))
        return int(best["step"]), float(best["auc"])

    def _choose(self, data: Path, teacher: Path, budget: str) -> dict:
        """The phase-1 step count at ``budget``, chosen for the control on the validation split (first seed) before
        any teacher row runs; the label-smoothing strength at the main budget likewise (each strength's run keeps its
        best validation point, as every row does). Phase 2's length is a setting; its checkpoint is chosen per run."""
        s = self.settings
        folder = self.out / "choose" / _slug(budget)
        path = folder / "choice.json"
        if path.exists():
            return json.loads(path.read_text())
        seed = s.seeds[0]
        _, info = self._split(data, budget, seed)
        choice: dict[str, Any] = {
            "budget": budget,
            "seed": seed,
            "labelled": info["labelled"],
            "val_records": self._val_records(info["labelled"]),
        }
        p1max = 4 if s.quick else s.phase1_max
        if s.phase1_steps is not None:
            choice["phase1_steps"] = s.phase1_steps
        else:
            alone = s.threads * s.jobs  # the choice run runs alone
            self._phase1(data, budget, seed, p1max, folder / "phase1", curve=s.choice_points, threads=alone)
            curve = _read_curve(folder / "phase1")
            choice["phase1_steps"], choice["phase1_val_auc"] = self.best_step(curve)
            choice["phase1_curve"] = curve
        choice["phase2_steps"] = min(4, s.phase2_steps) if s.quick else s.phase2_steps
        if budget == s.main_budget and "label-smoothing" in s.rows:
            student = self._phase1(data, budget, seed, choice["phase1_steps"], self._phase1_dir(budget, seed))
            train_file = self._compose(ROWS["control"], data, budget, seed, None)

            def smoothing(eps: float) -> dict:
                run_dir = folder / f"smoothing-{eps}"
                row = ROWS["label-smoothing"]
                steps = choice["phase2_steps"]
                return self._phase2(
                    row, budget, seed, train_file, student, teacher, data, steps, run_dir, info["labelled"], eps
                )

            runs = self._parallel([lambda e=e: smoothing(e) for e in s.smoothing_grid])
            scores = {str(eps): run["val_auc"] for eps, run in zip(s.smoothing_grid, runs, strict=True)}
            choice["label_smoothing"] = float(max(scores, key=lambda e: (scores[e], -float(e))))
            choice["label_smoothing_val_auc"] = scores
        _write_json(path, choice)
        return choice

    def _phase1_dir(self, budget: str, seed: int) -> Path:
        return self.out / "phase1" / _slug(budget) / f"seed-{seed}"

    def seconds_left(
        self, grid: list[tuple[str, str, tuple[int, ...]]], choices: dict[str, dict], eval_s: float
    ) -> float:
        """The grid's wall time, from what has been measured: each budget's phase-1 run, a phase-2 run's seconds per
        step (x3 for a row that runs the teacher live, as a KD step costs on the tiny pair; x1.5 from the teacher-output
        cache, its build included), and the teacher's
        evaluation as a bound on a student's; runs already finished count 0; divided among the jobs."""
        total = 0.0
        for budget, name, seeds in grid:
            choice = choices[budget]
            p1 = self._done_seconds(self._phase1_dir(budget, choice["seed"]))
            done = sorted((self.out / "choose" / _slug(budget)).glob("smoothing-*/done.json"))
            done += sorted((self.out / "runs" / _slug(budget)).glob("*/seed-*/done.json"))
            p2 = self._done_seconds(done[0].parent, per_step=True) if done else None
            if p2 is None:
                p2 = (p1 or 0.0) / max(1, choice["phase1_steps"])
            for seed in seeds:
                if (self.out / "runs" / _slug(budget) / name / f"seed-{seed}" / "done.json").exists():
                    continue
                if not (self._phase1_dir(budget, seed) / "done.json").exists():
                    total += p1 or 0.0
                live = ROWS[name].views or not self.settings.teacher_cache
                factor = 1.0 if ROWS[name].method == "sft" else 3.0 if live else 1.5
                total += p2 * choice["phase2_steps"] * factor + eval_s
        return total / self.settings.jobs

    @staticmethod
    def _done_seconds(run_dir: Path, per_step: bool = False) -> float | None:
        done = run_dir / "done.json"
        if not done.exists():
            return None
        doc = json.loads(done.read_text())
        seconds = (doc.get("train") or doc).get("seconds")
        if seconds is None:
            return None
        return seconds / max(1, int(doc.get("steps", 1))) if per_step else float(seconds)

    def _parallel(self, tasks: list[Callable[[], Any]], on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Run ``tasks`` (each runs its subprocesses in order) ``jobs`` at a time; their results in order.
        ``on_done(i, result)`` as each finishes, one at a time. A task that fails stops the tasks not yet begun."""
        results: list[Any] = [None] * len(tasks)
        if self.settings.jobs == 1 or len(tasks) < 2:
            for i, t in enumerate(tasks):
                results[i] = t()
                if on_done is not None:
                    on_done(i, results[i])
            return results
        pool = ThreadPoolExecutor(max_workers=self.settings.jobs)
        try:
            futures = {pool.submit(t): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                if on_done is not None:
                    on_done(futures[f], results[futures[f]])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    # ---- the grid ------------------------------------------------------------------------------------------------
    def _cell(self, data: Path, teacher: Path, test: Path, budget: str, name: str, seed: int, choice: dict) -> dict:
        """One row at one (budget, seed): the seed's phase-1 student (made once, whichever row asks first), the row's
        training file, its phase 2 and its evaluation."""
        row = ROWS[name]
        resumed = (self.out / "runs" / _slug(budget) / name / f"seed-{seed}" / "done.json").exists()
        with self._lock:
            if not resumed and self._clock is None:  # the rate counts the cells this invocation runs, from the first
                self._clock = time.perf_counter()
        with self._seed_lock(budget, seed):  # the seed's split, phase 1, self-training answers and files, once
            _, info = self._split(data, budget, seed)
            student = self._phase1(data, budget, seed, choice["phase1_steps"], self._phase1_dir(budget, seed))
            answers = None
            if row.pool in ("teacher", "shuffled"):
                answers = self._teacher_answers(teacher, data)
            elif row.pool == "self":
                answers = self._self_answers(student, data, budget, seed)
            train_file = self._compose(row, data, budget, seed, answers)
        run_dir = self.out / "runs" / _slug(budget) / name / f"seed-{seed}"
        eps = choice.get("label_smoothing", self.settings.smoothing_grid[0]) if name == "label-smoothing" else None
        steps = choice["phase2_steps"]
        result = self._phase2(
            row, budget, seed, train_file, student, teacher, data, steps, run_dir, info["labelled"], eps=eps, test=test
        )
        with self._lock:
            self._finished += 1
            self._ran += 0 if resumed else 1
            left = ""
            if self._ran and self._clock is not None:  # seconds per cell of this invocation, over the jobs
                rate = (time.perf_counter() - self._clock) / self._ran
                left = f"; about {rate * (self._total - self._finished) / 60:.0f} min left"
            self.log(f"[labels] {self._finished}/{self._total} runs{left}")
        return result

    def _seed_lock(self, budget: str, seed: int) -> threading.Lock:
        with self._lock:
            return self._seed_locks.setdefault((budget, seed), threading.Lock())

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = self.settings
        teacher = self._teacher()
        self._check_settings(teacher)
        data, test = self._data()
        grid = s.grid()
        self.log(f"[labels] {estimate(s)}")
        alone = s.threads * s.jobs  # a run that runs alone gets every job's threads
        teacher_run = self._teacher_eval(teacher, test, alone)
        if any(ROWS[name].pool in ("teacher", "shuffled") for _, name, _ in grid):
            self._teacher_answers(teacher, data, alone)
        # the main budget first: its rows answer the study's question
        order = [s.main_budget, *[b for b in s.budgets if b != s.main_budget]]
        self._lock, self._finished, self._ran, self._clock = threading.Lock(), 0, 0, None
        self._seed_locks: dict[tuple[str, int], threading.Lock] = {}
        self._total = sum(len(seeds) for _, _, seeds in grid)
        choices: dict[str, dict] = {}
        done: dict[tuple[str, str, int], dict] = {}
        for budget in order:
            choices[budget] = self._choose(data, teacher, budget)
            cells = [(b, name, seeds) for b, name, seeds in grid if b == budget]
            left = self.seconds_left(cells, choices, teacher_run["eval"]["seconds"])
            self.log(f"[labels] {budget}: about {left / 60:.0f} min on this machine (from the timings so far)")
            # row by row (the controls and sequence-level KD first), each row's seeds side by side: the jobs make
            # different seeds' phase-1 students at once, and a stopped study has its first rows complete
            order_cells = [(name, seed) for _, name, seeds in cells for seed in seeds]
            tasks = [
                (lambda b=budget, n=name, k=seed, c=choices[budget]: self._cell(data, teacher, test, b, n, k, c))
                for name, seed in order_cells
            ]

            def finished(i: int, result: dict, budget: str = budget, cells: list = cells, order=order_cells) -> None:
                """Partial results whenever a row has every seed: a long study can be read as it goes."""
                name, seed = order[i]
                done[(budget, name, seed)] = result
                seeds = next(ss for _, n, ss in cells if n == name)
                if all((budget, name, k) in done for k in seeds):
                    complete = [done[(b, n, k)] for b, n, ss in grid for k in ss if all((b, n, x) in done for x in ss)]
                    self._write_results([*complete, teacher_run], test, choices, t0, partial=True)

            self._parallel(tasks, on_done=finished)
        # results in the grid's order, whatever order the jobs finished in
        runs = [done[(b, name, seed)] for b, name, seeds in grid for seed in seeds]
        return self._write_results([*runs, teacher_run], test, choices, t0)

    def _write_results(
        self, runs: list[dict], test: Path, choices: dict[str, dict], t0: float, partial: bool = False
    ) -> dict[str, Any]:
        """results.json, results.md, summary.json and the figure from ``runs``; ``partial`` after a budget of a
        study that goes on (the budgets still to run are missing from the tables, and the files say so)."""
        s = self.settings
        res = label_results(runs, test, s, choices)
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        res["partial"] = partial
        res["figures"] = label_figures(res, self.out / "figures")
        _write_json(self.out / "results.json", res)
        atomic_write_bytes(self.out / "results.md", label_markdown(res).encode("utf-8"))
        keys = (
            "settings",
            "primary",
            "choices",
            "table",
            "teacher",
            "labels_saved",
            "answers",
            "wall_seconds",
            "partial",
        )
        _write_json(self.out / "summary.json", {k: res[k] for k in keys})
        what = "partial results (the study goes on)" if partial else "results"
        self.log(f"[labels] wrote {what} to {self.out / 'results.md'} ({res['wall_seconds']:.0f} s this invocation)")
        return res


def estimate(s: LabelStudySettings) -> str:
    """The grid's size before it starts: runs, steps and evaluations (the wall time follows from the machine)."""
    cells = s.grid()
    runs = sum(len(seeds) for _, _, seeds in cells)
    phase1 = len({(b, seed) for b, _, seeds in cells for seed in seeds})
    return (
        f"{len(s.budgets)} budgets, {len(cells)} cells, {runs} phase-2 runs and as many test evaluations, "
        f"{phase1} phase-1 runs, and a step choice per budget on validation"
    )


# ---- results ---------------------------------------------------------------------------------------------------------
def _final_val(run: dict) -> float | None:
    """The validation AUC of the run's kept student (its best curve point)."""
    curve = run.get("curve") or []
    return float(best_point(curve)["auc"]) if curve else None


def label_results(runs: list[dict], test: Path, s: LabelStudySettings, choices: dict[str, dict]) -> dict[str, Any]:
    """Per budget and row: strict macro AUC mean +- std over seeds per subset, the paired bootstrap against that
    budget's control, the share of the teacher gap; the primary method (chosen on validation by the rule stated in
    ``primary.rule``), labels saved, and the section-4 answers."""
    from evl_ecg.eval.stats import label_matrices, labels_saved, macro_auc, mean_std, paired_bootstrap, share_of_gap

    n_boot = 200 if s.quick else 2000
    mats: dict[tuple[str, str], dict[str, dict[int, tuple]]] = {}
    teacher: dict[str, tuple] = {}
    val: dict[tuple[str, str], list[float]] = {}
    labelled: dict[str, int] = {}
    for run in runs:
        eval_dir = Path(run["scores"]).parent
        for subset in REPORTED:
            pred = eval_dir / subset / "predictions.jsonl"
            if not pred.exists():
                continue
            _, Y, P = label_matrices(test / "bench" / f"{subset}.json", pred)
            if run["row"] == "teacher":
                teacher[subset] = (Y, P)
            else:
                mats.setdefault((run["budget"], run["row"]), {}).setdefault(subset, {})[run["seed"]] = (Y, P)
        if run["row"] != "teacher":
            v = _final_val(run)
            if v is not None:
                val.setdefault((run["budget"], run["row"]), []).append(v)
    for b, choice in choices.items():
        labelled[b] = choice["labelled"]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (budget, row), by_subset in mats.items():
        control = mats.get((budget, "control"), {})
        entry = table.setdefault(budget, {}).setdefault(row, {})
        if (budget, row) in val:
            entry["val_auc"] = mean_std(val[(budget, row)])
        for subset, by_seed in by_subset.items():
            aucs = [macro_auc(*by_seed[k]) for k in sorted(by_seed)]
            mean, std = mean_std(aucs)
            cell: dict[str, Any] = {"auc_mean": mean, "auc_std": std, "auc_per_seed": aucs, "seeds": sorted(by_seed)}
            if row != "control" and subset in control:
                cell["vs_control"] = paired_bootstrap(by_seed, control[subset], n_boot=n_boot)
                if subset in teacher:
                    cell["share_of_gap"] = share_of_gap(by_seed, control[subset], teacher[subset], n_boot=n_boot)
            entry[subset] = cell
    teacher_row = {sub: macro_auc(*m) for sub, m in teacher.items()}
    # the primary method: a rule stated before the test split is read
    rule = (
        "the teacher-using row with the best mean strict PTB-XL AUC on the validation split (each run's kept point) "
        f"at {s.main_budget}"
    )
    candidates = {r: val[(s.main_budget, r)] for r in s.rows if ROWS[r].teacher and (s.main_budget, r) in val}
    primary_name = max(candidates, key=lambda r: mean_std(candidates[r])[0]) if candidates else None
    primary = {"rule": rule, "row": primary_name, "validation": {r: mean_std(v)[0] for r, v in candidates.items()}}
    saved: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    if primary_name is not None:
        method_mats = mats[(s.main_budget, primary_name)]
        for subset in REPORTED:
            curve = {
                labelled[b]: mats[(b, "control")][subset]
                for b in s.budgets
                if (b, "control") in mats and subset in mats[(b, "control")]
            }
            if subset in method_mats and curve:
                saved[subset] = labels_saved(curve, method_mats[subset], labelled[s.main_budget], n_boot=n_boot)
        for other in CONTROLS:
            mm = mats.get((s.main_budget, other), {})
            if "ptb-test" in mm and "ptb-test" in method_mats:
                answers[f"vs {other}"] = paired_bootstrap(method_mats["ptb-test"], mm["ptb-test"], n_boot=n_boot)
        with_terms, seq = mats.get((s.main_budget, "seq-kd+evl-ecg"), {}), mats.get((s.main_budget, "seq-kd"), {})
        if "ptb-test" in with_terms and "ptb-test" in seq:
            answers["evl-ecg terms over seq-kd"] = paired_bootstrap(
                with_terms["ptb-test"], seq["ptb-test"], n_boot=n_boot
            )
        answers["required_holds"] = bool(
            len([k for k in answers if k.startswith("vs ")]) == len(CONTROLS)
            and all(answers[f"vs {c}"]["lo"] > 0 for c in CONTROLS)
        )
    return {
        "settings": s.to_json(),
        "labelled": labelled,
        "choices": choices,
        "table": table,
        "teacher": teacher_row,
        "primary": primary,
        "labels_saved": saved,
        "answers": answers,
        "runs": runs,
    }


def label_figures(res: dict[str, Any], folder: Path) -> dict[str, str]:
    """``labels.png``: strict PTB-XL AUC (test) against labelled records, one line per row with its seeds' band;
    ``curves-<budget>.png``: each row's validation curve over its phase-2 steps (mean over seeds, their band)."""
    from evl_ecg.eval.figures import plot_label_budgets, plot_learning_curves

    out: dict[str, str] = {}
    curves: dict[str, dict[str, list[list[dict]]]] = {}
    for run in res.get("runs", []):
        if run.get("curve"):
            curves.setdefault(run["budget"], {}).setdefault(run["row"], []).append(run["curve"])
    for budget, by_row in curves.items():
        ylabel = f"validation strict PTB-XL AUC, {budget} labels"
        path = plot_learning_curves(by_row, folder / f"curves-{_slug(budget)}.png", ylabel=ylabel)
        out[f"curves {budget}"] = str(path)

    series: dict[str, dict[int, list[float]]] = {}
    for budget, rows in res["table"].items():
        for row, cells in rows.items():
            if "ptb-test" in cells:
                series.setdefault(row, {})[res["labelled"][budget]] = cells["ptb-test"]["auc_per_seed"]
    if not series:
        return out
    title = f"label budgets (primary: {res['primary']['row']})"
    path = plot_label_budgets(series, folder / "labels.png", teacher=res["teacher"].get("ptb-test"), title=title)
    return {"labels": str(path), **out}


def _fmt(b: dict | None) -> str:
    return f"{b['diff']:+.1f} [{b['lo']:+.1f}, {b['hi']:+.1f}]" if b else "-"


def label_markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# evl-ecg label-budget study (synthetic ECGs; not a clinical evaluation)",
        "",
        f"{s['n_train']} training records (corpus seed {s['data_seed']}, generator {s['generator']}); test benchmark "
        f"seed {s['test_seed']} ({s['test_ptb']} PTB-XL records, ECGBench proportions). Strict macro AUC, mean +- std "
        "over seeds; [lo, hi]: 95 % paired bootstrap (records x seeds) of the difference to the same budget's control."
        + (" --quick: a smoke test, not a result." if s["quick"] else ""),
        "",
        "Teacher (one model): " + ", ".join(f"{k} {v:.1f}" for k, v in res["teacher"].items()),
        "",
    ]
    if res.get("partial"):
        missing = [b for b in s["budgets"] if b not in res["table"]]
        lines += [f"**Partial**: the study goes on; budgets not yet run: {', '.join(missing) or 'none'}.", ""]
    for budget, rows in res["table"].items():
        choice = res["choices"].get(budget, {})
        lines += [
            f"## {budget} labels ({res['labelled'][budget]} records; validation {choice.get('val_records')} records; "
            f"{choice.get('phase1_steps')} phase-1 steps, chosen for the control on validation; "
            f"{choice.get('phase2_steps')} phase-2 steps, each run keeping its best validation point)",
            "",
            "| row | val PTB-XL | " + " | ".join(REPORTED) + " | PTB-XL vs control | share of gap (PTB-XL) |",
            "|---|---:|" + "---:|" * len(REPORTED) + "---:|---:|",
        ]
        for row, cells in rows.items():
            v = cells.get("val_auc")
            vals = [f"{cells[x]['auc_mean']:.1f} +- {cells[x]['auc_std']:.1f}" if x in cells else "-" for x in REPORTED]
            ptb = cells.get("ptb-test", {})
            g = ptb.get("share_of_gap")
            gap = f"{g['share']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}]" if g else "-"
            lines.append(
                f"| {row} | {f'{v[0]:.1f}' if v else '-'} | "
                + " | ".join(vals)
                + f" | {_fmt(ptb.get('vs_control'))} | {gap} |"
            )
        lines.append("")
    p = res["primary"]
    lines += [
        f"**Primary method** ({p['rule']}): **{p['row']}**; validation: "
        + ", ".join(f"{k} {v:.1f}" for k, v in p["validation"].items()),
        "",
    ]
    largest = max(res["labelled"].values()) if res["labelled"] else 0
    main = res["labelled"].get(s["main_budget"])

    def records(x: float) -> str:
        return f"{x:.0f}" if math.isfinite(x) else f"> {largest}"

    missing = [b for b in s["budgets"] if b not in res["table"]]
    so_far = f" so far (budgets still to run: {', '.join(missing)})" if missing else ""
    for subset, ls in res["labels_saved"].items():
        if not math.isfinite(ls["records"]):
            lines.append(
                f"- Labels saved ({subset}): no budget of the control run{so_far} reaches the primary method (more "
                f"than {largest} labelled records; interval [{records(ls['lo'])}, {records(ls['hi'])}])"
            )
            continue
        lines.append(
            f"- Labels saved ({subset}): the control reaches the primary method at {ls['records']:.0f} "
            f"labelled records [{records(ls['lo'])}, {records(ls['hi'])}]: {ls['ratio']:.1f}x the primary "
            f"method's {main}"
        )
    for name, b in res["answers"].items():
        if isinstance(b, dict):
            lines.append(f"- Primary {name} (PTB-XL): {_fmt(b)}" if name.startswith("vs ") else f"- {name}: {_fmt(b)}")
    if "required_holds" in res["answers"]:
        ran = [c for c in CONTROLS if f"vs {c}" in res["answers"]]
        verdict = "holds" if res["answers"]["required_holds"] else "does not hold"
        if len(ran) < len(CONTROLS) and not any(res["answers"][f"vs {c}"]["lo"] <= 0 for c in ran):
            verdict = f"not known yet (controls still to run: {', '.join(c for c in CONTROLS if c not in ran)})"
        lines.append(f"- Required (above every control, each interval excluding 0): {verdict}")
    lines += ["", f"Wall time of this invocation: {res.get('wall_seconds', 0):.0f} s", ""]
    return "\n".join(lines)


def run_label_study(
    out: str | os.PathLike[str], settings: LabelStudySettings, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the label-budget study in ``out``; returns what ``results.json`` holds."""
    return LabelStudy(out, settings, log).run()


__all__ = [
    "CONSISTENT_ROWS",
    "CONSISTENT_VIEWS",
    "ROWS",
    "LabelStudy",
    "evl_sets",
    "LabelStudySettings",
    "Row",
    "estimate",
    "label_results",
    "run_label_study",
]
