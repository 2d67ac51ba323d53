"""Label budgets: a labelled subset of a training corpus, and the unlabelled pool of the rest.

A hospital holds thousands of ECGs of which a few carry a reviewed diagnosis. Under a **label budget** (a count of
records, or a share of the corpus) only a subset of the training records keeps its answer and labels; the others
form the **pool**: each keeps its image and one label-set question drawn without reading any label
(:func:`pool_question`), and nothing else (no answer, no ``labels``, no ``meta``). What the pool is used for (the
teacher's answers, a student's own answers) is decided downstream; this module never reads an answer of a pool
record.

The labelled subset is drawn uniformly per seed, stratified by task (``meta.task``: the question type, which is
known without labels; records without one form a single stratum), and **nested**: a record labelled at 5 % is
labelled at 10 % and at 25 % under the same seed. Both follow from one order (:func:`labelled_order`): each task's
records are shuffled, the ``j``-th of a task of ``n_t`` records gets the key ``(j + u_t) / n_t`` (``u_t`` uniform,
one per task), and the corpus is sorted by key. Every budget is a prefix of that order, so the subsets nest, and
any prefix holds each task within one record of its share.

Files (:func:`write_split`): ``labelled.json`` (the labelled records, unchanged), ``pool.json`` (``{"id", "image",
"question"}`` per pool record) and ``budget.json`` (the budget, the seed, both sizes and the source file's sha256).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.data.corpus import TRAIN_MIX
from evl_ecg.data.questions import LABEL_SET_PROMPTS
from evl_ecg.data.records import (
    GPT,
    HUMAN,
    IMAGE_TOKEN,
    Record,
    RecordError,
    Turn,
    load_records,
    save_records,
    validate,
)
from evl_ecg.files import atomic_write_bytes, read_text_file, sha256_file

LABELLED_FILE = "labelled.json"
POOL_FILE = "pool.json"
BUDGET_FILE = "budget.json"
#: which label-set question a pool record of each task gets: its own vocabulary's where the task has one
#: (ECG-QA's ECGs are PTB-XL-like); tasks with no vocabulary draw one of the three by their training-mix weights
POOL_TASK_PROMPT: dict[str, str] = {"ptbxl": "ptbxl", "code15": "code15", "cpsc": "cpsc", "ecgqa": "ptbxl"}
_ALL = re.compile(r"^(all|100(\.0*)?%)$")


class BudgetError(ValueError):
    """A label budget that cannot be applied (the message names the option or file and the value)."""


@dataclass(frozen=True)
class Budget:
    """A label budget: ``count`` records, or a ``fraction`` of the corpus (``fraction = 1``: every record).

    Parse one from the command line with :meth:`parse`: ``"10%"``, ``"0.1"`` (a share), ``"200"`` (a count),
    ``"all"``.
    """

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise BudgetError("a label budget is a count or a fraction, exactly one of them")
        if self.count is not None and self.count < 1:
            raise BudgetError(f"--labels {self.count}: a count of labelled records must be at least 1")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise BudgetError(f"--labels {self.fraction}: a share of the corpus must be in (0, 1]")

    @classmethod
    def parse(cls, text: str | int | float | Budget) -> Budget:
        """``"all"`` or ``"100%"``: everything; ``"N%"`` or a float below 1: a share; an integer: a count."""
        if isinstance(text, Budget):
            return text
        raw = str(text).strip().lower()
        try:
            if _ALL.match(raw):
                return cls(fraction=1.0)
            if raw.endswith("%"):
                return cls(fraction=float(raw[:-1]) / 100.0)
            if re.fullmatch(r"\d+", raw):
                return cls(count=int(raw))
            value = float(raw)
        except ValueError:
            raise BudgetError(f"--labels {text!r}: expected a share ('10%', '0.1'), a count ('200') or 'all'") from None
        if value == 1.0:
            return cls(fraction=1.0)
        return cls(fraction=value)

    @property
    def is_all(self) -> bool:
        return self.fraction == 1.0

    def size(self, n: int) -> int:
        """How many of ``n`` records are labelled (a share rounds to the nearest record, at least one)."""
        if self.count is not None:
            if self.count > n:
                raise BudgetError(f"--labels {self.count}: the corpus holds only {n} training records")
            return self.count
        return n if self.is_all else min(n, max(1, int(math.floor(self.fraction * n + 0.5))))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return "all" if self.is_all else f"{self.fraction * 100:g}%"


@dataclass(frozen=True)
class PoolItem:
    """A pool record: its id, its image and a label-set question (the first human turn, ``<image>\\n`` first)."""

    id: str
    image: str
    question: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "image": self.image, "question": self.question}

    def with_answer(self, answer: str) -> Record:
        """The pool record as a training record whose answer is ``answer`` (a model's, never a label)."""
        record = Record(id=self.id, image=self.image, conversations=[Turn(HUMAN, self.question), Turn(GPT, answer)])
        validate(record, source="pool")
        return record


def record_task(record: Record) -> str:
    """The stratum of ``record``: its question type (``meta.task``), or ``""`` where it has none."""
    task = record.meta.get("task") if isinstance(record.meta, dict) else None
    return str(task) if task else ""


def _id_rng(record_id: str, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{salt}\0{record_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pool_draw(record: Record) -> tuple[str, np.random.Generator]:
    """The vocabulary of ``record``'s pool question, and the generator (seeded by its id) that words it."""
    rng = _id_rng(record.id, "pool-question")
    vocab = POOL_TASK_PROMPT.get(record_task(record))
    if vocab is None:
        names = sorted(LABEL_SET_PROMPTS)
        weights = np.array([TRAIN_MIX[name][0] for name in names], dtype=float)
        vocab = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return vocab, rng


def pool_vocabulary(record: Record) -> str:
    """The label vocabulary (``ptbxl``, ``code15``, ``cpsc``) whose question :func:`pool_question` asks of
    ``record``: what an answer to it may name (a shuffled teacher swaps answers within one vocabulary)."""
    return _pool_draw(record)[0]


def pool_question(record: Record) -> str:
    """The label-set question a pool record gets: drawn from the record's id alone (the same for every budget and
    seed, so one teacher pass answers every pool), of the record's task's vocabulary (:data:`POOL_TASK_PROMPT`),
    or of a vocabulary drawn by its training-mix weight. It reads no label and no answer."""
    vocab, rng = _pool_draw(record)
    return f"{IMAGE_TOKEN}\n{LABEL_SET_PROMPTS[vocab](rng)}"


def shuffled_answers(answers: dict[str, str], groups: dict[str, str], seed: int) -> dict[str, str]:
    """``answers`` given to other records: within each group (``groups[id]``, e.g. :func:`pool_vocabulary`) a
    random derangement, so that no record keeps its own answer where its group has two records or more (a group of
    one keeps it). The shuffled-teacher control: the teacher's answers, none about its own ECG."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x5348,)))  # "SH"
    by_group: dict[str, list[str]] = {}
    for rid in sorted(answers):
        by_group.setdefault(groups.get(rid, ""), []).append(rid)
    out: dict[str, str] = {}
    for group in sorted(by_group):
        ids = by_group[group]
        if len(ids) < 2:
            out.update({rid: answers[rid] for rid in ids})
            continue
        order = rng.permutation(len(ids))  # a cycle through a random order: a derangement
        for k, i in enumerate(order):
            out[ids[int(i)]] = answers[ids[int(order[(k + 1) % len(ids)])]]
    return out


def labelled_order(records: Sequence[Record], seed: int) -> list[int]:
    """Indices of ``records`` in labelling order: every budget labels a prefix (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x4C42,)))  # "LB"
    strata: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        strata.setdefault(record_task(record), []).append(i)
    keyed: list[tuple[float, str, int]] = []
    for task in sorted(strata):
        members = strata[task]
        order = rng.permutation(len(members))
        offset = float(rng.random())
        keyed += [((j + offset) / len(members), task, members[int(k)]) for j, k in enumerate(order)]
    return [i for _, _, i in sorted(keyed)]


def split(records: Sequence[Record], budget: Budget | str, seed: int) -> tuple[list[Record], list[PoolItem]]:
    """``(labelled records, pool)`` of ``records`` under ``budget`` and ``seed``, both in corpus order."""
    budget = Budget.parse(budget)
    if not records:
        raise BudgetError("a label budget needs training records; the file holds none")
    order = labelled_order(records, seed)
    chosen = set(order[: budget.size(len(records))])
    labelled = [r for i, r in enumerate(records) if i in chosen]
    pool = [PoolItem(r.id, r.image, pool_question(r)) for i, r in enumerate(records) if i not in chosen]
    return labelled, pool


def write_split(
    train_file: str | os.PathLike[str], out_dir: str | os.PathLike[str], budget: Budget | str, seed: int
) -> dict[str, Any]:
    """Write ``labelled.json``, ``pool.json`` and ``budget.json`` for ``train_file`` under ``budget`` and ``seed``
    into ``out_dir``; returns the ``budget.json`` content."""
    budget = Budget.parse(budget)
    train_file = Path(train_file)
    records = load_records(train_file)
    labelled, pool = split(records, budget, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_records(out / LABELLED_FILE, labelled)
    atomic_write_bytes(out / POOL_FILE, json.dumps([p.to_dict() for p in pool], indent=1).encode())
    info = {
        "budget": str(budget),
        "seed": int(seed),
        "labelled": len(labelled),
        "pool": len(pool),
        "records": len(records),
        "source": str(train_file),
        "source_sha256": sha256_file(train_file),
    }
    atomic_write_bytes(out / BUDGET_FILE, json.dumps(info, indent=1).encode())
    return info


def training_budget(train_file: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The label budget a training file was made under: the ``budget.json`` beside it (a budget folder's
    ``labelled.json`` or a file composed there), with the file's name; ``None`` for a file made without one."""
    if not train_file:
        return None
    path = Path(train_file)
    info = path.parent / BUDGET_FILE
    if not info.is_file():
        return None
    try:
        doc = json.loads(info.read_text())
    except (OSError, ValueError):
        return None
    return {**doc, "file": path.name} if isinstance(doc, dict) else None


def load_answers(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{record id: answer}`` of a model's answers to the pool (``evl-ecg eval answers``: PULSE's prediction rows,
    one JSON object per line with ``question_id`` and ``text``); one error naming the file and the line."""
    path = Path(path)
    out: dict[str, str] = {}
    for n, line in enumerate(read_text_file(path, BudgetError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BudgetError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question_id"), str):
            raise BudgetError(f"{path}:{n}: expected an object with a string 'question_id'")
        if not isinstance(row.get("text"), str):
            raise BudgetError(f"{path}:{n}: field 'text' must be a string")
        out[row["question_id"]] = row["text"]
    return out


def compose(
    labelled: Sequence[Record], pool: Sequence[PoolItem], answers: dict[str, str]
) -> tuple[list[Record], list[str]]:
    """The training records of a budget: the labelled records, then each pool record with ``answers[id]`` (a
    model's answer: :func:`load_answers`) as its target.

    Returns ``(records, empty)``: ``empty`` lists the pool ids whose answer is empty (left out; the caller reports
    them). A pool id without an answer raises :class:`BudgetError` naming it.
    """
    missing = [p.id for p in pool if p.id not in answers]
    if missing:
        raise BudgetError(
            f"{len(missing)} pool record(s) have no answer (first: {missing[0]!r}); answer the same training file"
        )
    out, empty = list(labelled), []
    for item in pool:
        text = answers[item.id].strip()
        if text:
            out.append(item.with_answer(text))
        else:
            empty.append(item.id)
    return out, empty


def load_pool(path: str | os.PathLike[str]) -> list[PoolItem]:
    """Read a ``pool.json``; one error naming the file, the row and the field for anything else."""
    path = Path(path)
    try:
        rows = json.loads(read_text_file(path, BudgetError))
    except json.JSONDecodeError as exc:
        raise BudgetError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise BudgetError(f"{path}: expected a list of pool records, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BudgetError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
        for key in ("id", "image", "question"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise BudgetError(f"{path}: row {i}: field {key!r} must be a non-empty string")
        if set(row) - {"id", "image", "question"}:
            extra = sorted(set(row) - {"id", "image", "question"})
            raise BudgetError(f"{path}: row {i}: field(s) {extra} do not belong in a pool (no answer, no labels)")
        item = PoolItem(row["id"], row["image"], row["question"])
        try:
            item.with_answer("-")
        except RecordError as exc:
            raise BudgetError(f"{path}: row {i}: {exc}") from None
        out.append(item)
    return out


__all__ = [
    "BUDGET_FILE",
    "LABELLED_FILE",
    "POOL_FILE",
    "POOL_TASK_PROMPT",
    "Budget",
    "BudgetError",
    "PoolItem",
    "compose",
    "load_answers",
    "labelled_order",
    "load_pool",
    "pool_question",
    "pool_vocabulary",
    "record_task",
    "shuffled_answers",
    "split",
    "training_budget",
    "write_split",
]
