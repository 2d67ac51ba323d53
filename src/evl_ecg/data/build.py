"""A corpus from a local public ECG database: real signals, our renderer, the corpus layout of :mod:`.corpus`.

:func:`build_from_database` reads a PTB-XL, PhysioNet/CinC Challenge 2020/2021 or CODE-15% folder as published and
writes, into ``out_dir``, exactly the layout :func:`evl_ecg.data.corpus.build_corpus` writes, so that training,
distillation and evaluation read it unchanged::

    train.json                    ECGInstruct-format records: the database's own label-set question (below)
    bench/<subset>.json           the test split in the ECGBench subset's format (ptb-test, cpsc-test, code15-test)
    val/<subset>.json             the validation split, in the same format
    images/<split>/<id>.png       split = train, <subset> or val-<subset>
    manifest.json                 settings, split rule, label rule, counts, label frequencies, every record's source
                                  and label provenance, skipped records with their reason

Questions and answers (docs/data.md §3b): one question a record, the label-set question of the database's own
vocabulary, drawn with the generator's templates (:data:`evl_ecg.data.questions.LABEL_SET_PROMPTS`) and answered
with the generator's wording (:func:`~evl_ecg.data.questions.ptbxl_gold`, :func:`~evl_ecg.data.questions.cpsc_gold`,
:func:`~evl_ecg.data.questions.code15_gold`) from the database's labels; no other vocabulary and no canonical
findings are attached (no published table maps them), so a record's ``labels`` holds its vocabulary alone.

* PTB-XL: the diagnostic superclasses, by PTB-XL's own example (``example_physionet.py`` on PhysioNet): the rows of
  ``scp_statements.csv`` with ``diagnostic == 1``; every key of a record's ``scp_codes`` found there gives its
  ``diagnostic_class``, whatever its likelihood (0 included). Split: ``strat_fold`` 1-8 train, 9 validation, 10 test
  (PTB-XL's recommended split).
* Challenge 2020/2021: the CPSC-2018 classes of the ``# Dx:`` SNOMED CT codes
  (:data:`evl_ecg.ecg.labels.CPSC_SNOMED`, read by :func:`evl_ecg.ecg.readers.read_wfdb`). A code that gives no
  class (the 2021 folders, Georgia, Chapman-Shaoxing, Ningbo, PTB-XL, use many: low QRS voltages, atrial flutter,
  codes outside our SNOMED table) does not stop the record: it is kept in the record's provenance as ``unmapped`` and
  counted in the manifest's ``unmapped_codes``. A record none of whose codes gives a class has nothing the subset can
  ask about and is skipped ("no code maps to a label"): its answer would be a negative its codes do not state (a
  ventricular bigeminy code holds PVCs). No official split: the record name's :func:`fold` (the headers name no
  patient), folds 0-7 train, 8 validation, 9 test.
* CODE-15%: the six label columns of ``exams.csv``; an exam with none of them is ``NORM`` when ``normal_ecg`` is true
  and ``ABNORMAL`` otherwise (the scorer's two whole-answer classes). Split: the ``patient_id``'s :func:`fold`, as
  above, so that a patient's exams share a split.

A PTB-XL test or validation record without a diagnostic statement is skipped with that reason: the subset asks for
one (a Challenge record without a CPSC-2018 class is skipped in every split, above).

Resuming: records are processed in chunks of :data:`CHUNK`; each finished chunk is saved under ``.parts/``, and a
record found there, or in the split files of an earlier complete build, with its image intact, is not read again.
Images are written atomically and kept when present and decodable. The split files and the manifest are written at
the end, and only when their bytes change, so a rerun of a finished build rewrites nothing. ``.build.json`` holds
the settings (database kind and folder, digests of its tables, render options, seed, limit); a folder built with
other settings, or holding files no build writes, is refused before any work.

Safety: nothing is written outside ``out_dir`` (the database folder is only read; an ``out_dir`` inside it is
refused), file names come from sanitised record names, and a path in a table that leaves the database folder is a
skipped record. Errors are :class:`BuildError`, one line naming the file and the field.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.data import resumable
from evl_ecg.data.corpus import BYTES_PER_PIXEL, BYTES_PER_RECORD, MAX_RECORDS, split_file
from evl_ecg.data.questions import LABEL_SET_PROMPTS, code15_gold, cpsc_gold, ptbxl_gold
from evl_ecg.data.records import (
    GPT,
    HUMAN,
    IMAGE_TOKEN,
    Record,
    Turn,
    image_is_valid,
    validate,
    write_png,
)
from evl_ecg.ecg.labels import CODE15_LABELS, CPSC_SNOMED, PTBXL_SUPERCLASSES, VOCABULARIES
from evl_ecg.files import sha256_file

#: Database kinds: kind -> (the ECGBench subset its test split forms, the question task and label vocabulary).
KINDS: dict[str, tuple[str, str]] = {
    "ptbxl": ("ptb-test", "ptbxl"),
    "challenge": ("cpsc-test", "cpsc"),
    "code15": ("code15-test", "code15"),
}
CHUNK = 16
MANIFEST_FORMAT = "evl-ecg database corpus v1 (ECGInstruct / ECGBench record format)"
#: Version of the build rules (labels, splits, wording): part of the settings, so a corpus made by other rules is
#: never extended by these.
BUILD_RULES = 2
AUGMENT_FRACTION = 0.5

REAL_NOTE = (
    "Real ECGs from a public database, rendered by evl-ecg; the answers come from the database's labels by the rules "
    "in label_rule. The database's licence applies to this corpus (docs/data.md section 4). Research use only: not "
    "for making or supporting clinical decisions."
)

SPLIT_RULES: dict[str, str] = {
    "ptbxl": "strat_fold of ptbxl_database.csv: 1-8 train, 9 validation, 10 test (PTB-XL's recommended split)",
    "challenge": (
        "no official split; fold = int(sha256(record name).hexdigest(), 16) % 10 (the headers name no patient): "
        "0-7 train, 8 validation, 9 test"
    ),
    "code15": (
        "by patient; fold = int(sha256(str(patient_id)).hexdigest(), 16) % 10 of exams.csv's patient_id: 0-7 train, "
        "8 validation, 9 test"
    ),
}
LABEL_RULES: dict[str, str] = {
    "ptbxl": (
        "PTB-XL diagnostic superclasses: every key of scp_codes that scp_statements.csv (read from the database "
        "folder) marks diagnostic == 1 gives its diagnostic_class, whatever its likelihood, as PTB-XL's "
        "example_physionet.py aggregates them; a key the table does not list skips the record"
    ),
    "challenge": (
        "CPSC-2018 classes of the '# Dx:' SNOMED CT codes by evl_ecg.ecg.labels.CPSC_SNOMED; a code of no class is "
        "kept in the record's provenance as unmapped (counted in unmapped_codes); a record none of whose codes gives "
        "a class is skipped (no code maps to a label)"
    ),
    "code15": (
        "CODE-15% labels: the six boolean columns of exams.csv; with none of them the answer is NORM when normal_ecg "
        "is true, ABNORMAL when it is false"
    ),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The SNOMED CT codes that give a CPSC-2018 class; any other code of a Challenge record is unmapped.
_CPSC_CODES = frozenset(code for codes in CPSC_SNOMED.values() for code in codes)


class BuildError(RuntimeError):
    """A build that cannot proceed; the message is one line naming the file (and field) and the reason."""


def fold(key: str) -> int:
    """The fold (0-9) of a record or patient key: ``int(sha256(key).hexdigest(), 16) % 10``."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 10


def split_of_fold(subset: str, value: int) -> str:
    """Folds 0-7 train, 8 validation (``val-<subset>``), 9 test (``<subset>``)."""
    return "train" if value < 8 else (f"val-{subset}" if value == 8 else subset)


# --------------------------------------------------------------------------------------------------
# Settings and results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the corpus bytes (the worker count does not).

    Attributes:
        kind: ``ptbxl``, ``challenge`` or ``code15``.
        source: the database folder (resolved).
        size: image (width, height) in px.
        dpi: render dpi (``None``: the renderer's default).
        augment: paper-image augmentations on :data:`AUGMENT_FRACTION` of the images.
        seed: seeds the wording and the augmentations (each record's stream comes from its id).
        limit: the first ``limit`` records of the database's order only (``None``: all).
        layout: the renderer's 12-lead layout.
        rate: PTB-XL: 500 (``records500/``, ``filename_hr``) or 100 (``records100/``, ``filename_lr``).
        tables: sha256 of the database's tables (``ptbxl_database.csv``, ``scp_statements.csv``, ``exams.csv``).
    """

    kind: str
    source: str
    size: tuple[int, int] = (512, 384)
    dpi: int | None = None
    augment: bool = True
    seed: int = 0
    limit: int | None = None
    layout: str = "3x4"
    rate: int | None = None
    tables: dict[str, str] = field(default_factory=dict)
    augment_fraction: float = AUGMENT_FRACTION
    rules: int = BUILD_RULES

    @property
    def subset(self) -> str:
        return KINDS[self.kind][0]

    @property
    def task(self) -> str:
        return KINDS[self.kind][1]

    def splits(self) -> tuple[str, ...]:
        return ("train", self.subset, f"val-{self.subset}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "size": list(self.size),
            "dpi": self.dpi,
            "augment": self.augment,
            "augment_fraction": self.augment_fraction,
            "seed": self.seed,
            "limit": self.limit,
            "layout": self.layout,
            "rate": self.rate,
            "tables": dict(self.tables),
            "rules": self.rules,
        }


@dataclass(frozen=True)
class Candidate:
    """One database record to build: its corpus id, the file read (relative to the source), its split and fold,
    how to read it and the label provenance the tables already give."""

    id: str
    source: str
    split: str
    fold: int
    read: tuple[Any, ...]
    provenance: dict[str, Any]


@dataclass
class BuildResult(resumable.BuildOutcome):
    """What :func:`build_from_database` did: records per split, skipped records, images rendered now, images found
    valid and kept, records taken from an earlier run, wall time; and the trace files named by the table but absent."""

    absent: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Listing the records of each database (the tables, no signal)
# --------------------------------------------------------------------------------------------------


def _read_csv(path: Path, need: tuple[str, ...], **kwargs: Any) -> Any:
    import pandas as pd

    if not path.is_file():
        raise BuildError(f"{path}: not found")
    try:
        table = pd.read_csv(path, **kwargs)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"{path}: not a readable CSV table ({type(exc).__name__}: {first})") from None
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise BuildError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _skip(rid: str | None, source: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"skip": {"id": rid, "source": source, "reason": reason, **extra}}


def _inside(root: Path, rel: str) -> bool:
    """Whether ``rel`` (a path from a table) is relative and stays inside ``root``."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/"):
        return False
    return (root / rel).resolve().is_relative_to(root.resolve())


def _whole(value: Any) -> int | None:
    """A table cell as a whole number (``3``, ``3.0``, ``"3"``), else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def ptbxl_superclasses(scp_codes: dict[str, Any], statements: Any) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """PTB-XL's diagnostic superclasses of one record and the statements they come from.

    As ``example_physionet.py`` (published with PTB-XL) aggregates them: ``scp_statements.csv``'s rows with
    ``diagnostic == 1``; each key of ``scp_codes`` found among them gives its ``diagnostic_class``, whatever its
    likelihood. Returns the classes in :data:`~evl_ecg.ecg.labels.PTBXL_SUPERCLASSES` order and
    ``[{"code", "likelihood", "diagnostic_class"}]``. A key the table does not list raises ``KeyError``.
    """
    classes: set[str] = set()
    used: list[dict[str, Any]] = []
    for code, likelihood in scp_codes.items():
        if code not in statements.index:
            raise KeyError(f"scp_codes names {code!r}, which scp_statements.csv does not list")
        row = statements.loc[code]
        if _whole(row["diagnostic"]) == 1 and isinstance(row["diagnostic_class"], str):
            classes.add(row["diagnostic_class"])
            used.append({"code": str(code), "likelihood": likelihood, "diagnostic_class": row["diagnostic_class"]})
    unknown = sorted(classes - set(PTBXL_SUPERCLASSES))
    if unknown:
        raise KeyError(f"scp_statements.csv gives diagnostic_class {unknown[0]!r}, not a PTB-XL superclass")
    return tuple(c for c in PTBXL_SUPERCLASSES if c in classes), used


def _ptbxl_rate(root: Path, rate: int | None) -> int:
    if rate is not None:
        if rate not in (100, 500):
            raise BuildError(f"{root}: rate must be 100 or 500 Hz, got {rate}")
        return rate
    for found in (500, 100):
        if (root / f"records{found}").is_dir():
            return found
    raise BuildError(f"{root}: no records500/ or records100/ folder (the PTB-XL WFDB records)")


def _ptbxl_tables(root: Path, rate: int) -> tuple[Any, Any]:
    column = "filename_hr" if rate == 500 else "filename_lr"
    db = _read_csv(root / "ptbxl_database.csv", ("ecg_id", "scp_codes", "strat_fold", column))
    statements = _read_csv(root / "scp_statements.csv", ("diagnostic", "diagnostic_class"), index_col=0)
    return db, statements


def _list_ptbxl(root: Path, rate: int) -> Iterator[Candidate | dict[str, Any]]:
    db, statements = _ptbxl_tables(root, rate)
    csv = "ptbxl_database.csv"
    column = "filename_hr" if rate == 500 else "filename_lr"
    rows: dict[int, Any] = {}
    for n, row in enumerate(db.itertuples(index=False), start=2):  # line 1 is the header
        ecg_id = _whole(row.ecg_id)
        if ecg_id is None or ecg_id < 0:
            yield _skip(None, f"{csv} line {n}", f"ecg_id {row.ecg_id!r} is not a whole number")
        elif ecg_id in rows:
            yield _skip(f"ptbxl-{ecg_id:05d}", f"{csv} line {n}", f"ecg_id {ecg_id} appears twice")
        else:
            rows[ecg_id] = row
    for ecg_id in sorted(rows):
        row = rows[ecg_id]
        rid = f"ptbxl-{ecg_id:05d}"
        where = f"{csv} ecg_id {ecg_id}"
        rel = getattr(row, column)
        strat = _whole(row.strat_fold)
        if strat is None or not 1 <= strat <= 10:
            yield _skip(rid, where, f"strat_fold {row.strat_fold!r} is not one of 1-10")
            continue
        if not isinstance(rel, str) or not _inside(root, rel):
            yield _skip(rid, where, f"{column} {rel!r} is not a path inside the database folder")
            continue
        try:
            scp = ast.literal_eval(row.scp_codes) if isinstance(row.scp_codes, str) else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            scp = None
        if not isinstance(scp, dict):
            yield _skip(rid, where, f"scp_codes {str(row.scp_codes)[:60]!r} is not a Python dict literal")
            continue
        odd = [
            k for k, v in scp.items() if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float)
        ]
        if odd:
            yield _skip(rid, where, f"scp_codes entry {odd[0]!r} is not a statement code with a likelihood number")
            continue
        try:
            classes, used = ptbxl_superclasses(scp, statements)
        except KeyError as exc:
            yield _skip(rid, where, exc.args[0])
            continue
        split = "train" if strat <= 8 else ("val-ptb-test" if strat == 9 else "ptb-test")
        provenance = {
            "ecg_id": ecg_id,
            "strat_fold": strat,
            "scp_codes": {str(k): v for k, v in scp.items()},
            "diagnostic_statements": used,
            "table": "scp_statements.csv",
        }
        yield Candidate(rid, f"{rel}.hea", split, strat, ("wfdb", f"{rel}.hea", float(rate)), provenance)


def _list_challenge(root: Path) -> Iterator[Candidate | dict[str, Any]]:
    headers = sorted(root.rglob("*.hea"), key=lambda p: p.relative_to(root).as_posix())
    if not headers:
        raise BuildError(f"{root}: no WFDB header (.hea) in the folder or below it; is it a Challenge folder?")
    seen: dict[str, str] = {}
    for path in headers:
        rel = path.relative_to(root).as_posix()
        name = path.stem
        if not _NAME.fullmatch(name):
            yield _skip(None, rel, "the record name has characters other than letters, digits, '_', '.', '-'")
            continue
        rid = f"challenge-{name}"
        if name in seen:
            yield _skip(rid, rel, f"record name {name} also names {seen[name]}")
            continue
        seen[name] = rel
        value = fold(name)
        provenance = {"record": name}
        yield Candidate(rid, rel, split_of_fold("cpsc-test", value), value, ("wfdb", rel, None), provenance)


def _list_code15(root: Path) -> Iterator[Candidate | dict[str, Any] | tuple[str, int]]:
    import h5py

    csv = root / "exams.csv"
    table = _read_csv(csv, ("exam_id", "patient_id", *CODE15_LABELS, "normal_ecg", "trace_file"))
    index_of: dict[str, dict[int, int] | str] = {}
    absent: Counter[str] = Counter()
    rows: dict[int, tuple[int, Any]] = {}
    for n, row in enumerate(table.itertuples(index=False), start=2):
        exam_id = _whole(row.exam_id)
        where = f"exams.csv line {n}"
        if exam_id is None:
            yield _skip(None, where, f"exam_id {row.exam_id!r} is not a whole number")
        elif exam_id in rows:
            yield _skip(f"code15-{exam_id}", where, f"exam_id {exam_id} appears twice")
        else:
            rows[exam_id] = (n, row)
    for exam_id in sorted(rows):
        n, row = rows[exam_id]
        rid = f"code15-{exam_id}"
        where = f"exams.csv exam_id {exam_id}"
        trace = row.trace_file
        if not isinstance(trace, str) or not _NAME.fullmatch(trace):
            yield _skip(rid, where, f"trace_file {trace!r} is not a file name")
            continue
        if trace not in index_of:
            path = root / trace
            if not path.is_file():
                index_of[trace] = "absent"
            else:
                try:
                    with h5py.File(path, "r") as h5:
                        ids = np.asarray(h5["exam_id"][()], dtype=np.int64)
                    index_of[trace] = {int(e): i for i, e in enumerate(ids)}
                except Exception as exc:  # h5py: OSError, KeyError (no 'exam_id')
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    index_of[trace] = f"{trace}: cannot read its 'exam_id' ({type(exc).__name__}: {first})"
        found = index_of[trace]
        if found == "absent":
            absent[trace] += 1
            continue
        if isinstance(found, str):
            yield _skip(rid, trace, found)
            continue
        if exam_id not in found:
            yield _skip(rid, trace, f"exam_id {exam_id} is not in the file's 'exam_id'")
            continue
        patient = _whole(row.patient_id)
        if patient is None:
            yield _skip(rid, where, f"patient_id {row.patient_id!r} is not a whole number (the split needs it)")
            continue
        value = fold(str(patient))
        provenance = {"exam_id": exam_id, "trace_file": trace, "index": found[exam_id], "exams_csv_line": n}
        yield Candidate(
            rid, trace, split_of_fold("code15-test", value), value, ("code15", trace, found[exam_id]), provenance
        )
    for trace, count in sorted(absent.items()):
        yield (trace, count)


def _entries(settings: BuildSettings) -> tuple[list[Candidate | dict[str, Any]], dict[str, int]]:
    """The records to build (and those the tables already refuse), in the database's order, cut at ``limit``;
    and the trace files ``exams.csv`` names that the folder lacks (with their exam counts)."""
    root = Path(settings.source)
    if settings.kind == "ptbxl":
        listing: Iterator[Any] = _list_ptbxl(root, int(settings.rate or 500))
    elif settings.kind == "challenge":
        listing = _list_challenge(root)
    else:
        listing = _list_code15(root)
    entries: list[Candidate | dict[str, Any]] = []
    absent: dict[str, int] = {}
    for item in listing:
        if isinstance(item, tuple):
            absent[item[0]] = item[1]
        else:
            entries.append(item)
    if settings.kind == "code15" and not any(isinstance(e, Candidate) for e in entries) and absent:
        raise BuildError(
            f"{root}: none of the trace files exams.csv names is in the folder ({', '.join(sorted(absent)[:3])}"
            f"{', ...' if len(absent) > 3 else ''}); download at least one exams_part*.hdf5 next to exams.csv"
        )
    if settings.limit is not None:
        entries = entries[: settings.limit]
    return entries, absent


# --------------------------------------------------------------------------------------------------
# One record: read, label, render, question
# --------------------------------------------------------------------------------------------------


def _record_rngs(seed: int, rid: str) -> tuple[np.random.Generator, np.random.Generator]:
    """The record's render and wording streams, from the run seed and its id alone (any order, any limit)."""
    key = int.from_bytes(hashlib.sha256(rid.encode("utf-8")).digest()[:8], "little")
    ss_render, ss_text = np.random.SeedSequence([int(seed), key]).spawn(2)
    return np.random.default_rng(ss_render), np.random.default_rng(ss_text)


def _truth(value: Any) -> bool | None:
    """A boolean table cell (``True``, ``"false"``, ``1``), ``None`` when empty or unreadable."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in ("true", "1", "1.0") else (False if text in ("false", "0", "0.0") else None)
    if isinstance(value, int | float | np.integer | np.floating) and math.isfinite(float(value)):
        return bool(value) if float(value) in (0.0, 1.0) else None
    return None


def _labels_and_answer(settings: BuildSettings, cand: Candidate, ecg: Any) -> tuple[list[str], str, dict[str, Any]]:
    """The record's labels in its vocabulary, the gold answer (the generator's wording) and label provenance."""
    if settings.kind == "ptbxl":
        given = {s["diagnostic_class"] for s in cand.provenance["diagnostic_statements"]}
        labels = [c for c in PTBXL_SUPERCLASSES if c in given]
        answer = ptbxl_gold(replace(ecg, labels={"ptbxl": tuple(labels)}, findings=frozenset()))
        return labels, answer, {}
    if settings.kind == "challenge":
        codes = list(ecg.labels.get("snomed", ()))
        labels = list(ecg.labels.get("cpsc", ()))
        answer = cpsc_gold(replace(ecg, labels={"cpsc": tuple(labels)}, findings=frozenset()))
        via = {c: [code for code in codes if code in CPSC_SNOMED[c]] for c in labels}
        unmapped = [code for code in codes if code not in _CPSC_CODES]
        extra = {"dx": codes, "cpsc_from": via, "unmapped": unmapped, "mapping": "evl_ecg.ecg.labels.CPSC_SNOMED"}
        return labels, answer, extra
    labels = list(ecg.labels.get("code15", ()))
    normal = _truth(ecg.meta.get("normal_ecg"))
    extra = {"flags": {c: c in labels for c in CODE15_LABELS}, "normal_ecg": normal}
    if labels:
        answer = code15_gold(replace(ecg, labels={"code15": tuple(labels)}, findings=frozenset()))
    elif normal is None:
        raise ValueError(f"normal_ecg {ecg.meta.get('normal_ecg')!r} is empty and no label column is true")
    else:
        answer = "NORM" if normal else "ABNORMAL"
    return labels, answer, extra


def _read(settings: BuildSettings, cand: Candidate) -> Any:
    from evl_ecg.ecg.readers import read_code15, read_wfdb
    from evl_ecg.ecg.signal import EcgError

    root = Path(settings.source)
    how = cand.read
    if how[0] == "wfdb":
        path = root / how[1]
        if not path.is_file():
            raise EcgError("not found (a record the table lists but the folder lacks)")
        ecg = read_wfdb(path)
        if how[2] is not None and abs(ecg.fs - how[2]) > 1e-6:
            raise EcgError(f"{cand.source}: sampling rate {ecg.fs:g} Hz, expected {how[2]:g} Hz")
        return ecg
    return read_code15(root / how[1], int(how[2]), exams_csv=root / "exams.csv")


def _reason(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    first = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return first


def make_record(settings: BuildSettings, out_dir: Path, cand: Candidate) -> dict[str, Any]:
    """Read, label, render (unless a valid image is present) and question one record.

    Returns ``{"record": dict, "entry": manifest entry, "rendered": bool}`` or ``{"skip": {id, source, reason}}``
    for a record that cannot be read or labelled. An image that cannot be written raises :class:`BuildError`.
    """
    from evl_ecg.ecg.labels import UnknownCodeError
    from evl_ecg.ecg.render import Augment, RenderSpec, render
    from evl_ecg.ecg.signal import EcgError

    rng_render, rng_text = _record_rngs(settings.seed, cand.id)
    augmented = bool(settings.augment and rng_render.random() < settings.augment_fraction)
    strength = float(rng_render.uniform(0.2, 1.0))
    render_seed = int(rng_render.integers(2**31))
    image_rel = f"{cand.split}/{cand.id}.png"
    image_path = out_dir / "images" / image_rel
    image = None
    try:
        ecg = _read(settings, cand)
        labels, answer, extra = _labels_and_answer(settings, cand, ecg)
        if settings.kind == "challenge" and not labels:
            if not extra["dx"]:
                return _skip(cand.id, cand.source, "the header has no '# Dx:' code")
            return _skip(cand.id, cand.source, "no code maps to a label", unmapped=extra["unmapped"])
        if cand.split != "train" and not labels and settings.kind == "ptbxl":
            what = "PTB-XL diagnostic superclass"
            return _skip(cand.id, cand.source, f"{cand.split} record without a {what}: {settings.subset} asks for one")
        if not (image_path.is_file() and image_is_valid(image_path)):
            augment = Augment.random(rng_render, strength) if augmented else None
            spec = RenderSpec(layout=settings.layout, size=tuple(settings.size), dpi=settings.dpi)
            image = render(ecg, spec, augment=augment, seed=render_seed)
    except (EcgError, UnknownCodeError, KeyError, ValueError, RuntimeError) as exc:
        reason = _reason(exc).replace(f"{settings.source}{os.sep}", "")  # paths relative to --source, as `source`
        return _skip(cand.id, cand.source, reason.removeprefix(f"{cand.source}: "))
    except OSError as exc:  # a database file that cannot be read (permissions, I/O error)
        return _skip(cand.id, cand.source, f"cannot read ({exc.strerror or type(exc).__name__})")
    prompt = LABEL_SET_PROMPTS[settings.task](rng_text)
    meta = {
        "task": settings.task,
        "split": cand.split,
        "database": settings.kind,
        "source_record": cand.id.split("-", 1)[1],
        "source": cand.source,
        "augmented": augmented,
    }
    record = Record(
        id=cand.id,
        image=image_rel,
        conversations=[Turn(HUMAN, f"{IMAGE_TOKEN}\n{prompt}"), Turn(GPT, answer)],
        meta=meta,
        labels={settings.task: labels},
    )
    validate(record, source=cand.source)
    if image is not None:
        try:
            write_png(image_path, image)
        except OSError as exc:
            raise resumable.write_error(image_path, exc, BuildError) from None
    entry = {
        "id": cand.id,
        "split": cand.split,
        "fold": cand.fold,
        "source": cand.source,
        "labels": {settings.task: labels},
        "provenance": {**cand.provenance, **extra},
    }
    return {"record": record.to_dict(), "entry": entry, "rendered": image is not None}


def _write(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; whether it was written."""
    return resumable.write_file(path, data, error=BuildError, keep_same=True)


def _run_chunk(settings: BuildSettings, out_dir: Path, index: int, cands: list[Candidate]) -> tuple[int, list[Any]]:
    """Build one chunk's records and save them under ``.parts/`` (atomically); returns (index, results)."""
    results = [make_record(settings, out_dir, c) for c in cands]
    resumable.save_part(out_dir / ".parts" / f"{index:05d}.json", results, _write)
    return index, results


# --------------------------------------------------------------------------------------------------
# The output folder: own files, settings, earlier work
# --------------------------------------------------------------------------------------------------


def _own_file(parts: tuple[str, ...], settings: BuildSettings) -> bool:
    """Whether ``out_dir/<parts>`` is a file a build of ``settings``' kind writes."""
    if len(parts) == 1:
        return parts[0] in ("train.json", "manifest.json", ".build.json")
    if len(parts) == 2:
        if parts[0] in ("bench", "val"):
            return parts[1] == f"{settings.subset}.json"
        return parts[0] == ".parts" and re.fullmatch(r"\d{5,}\.json", parts[1]) is not None
    return (
        len(parts) == 3
        and parts[0] == "images"
        and parts[1] in settings.splits()
        and parts[2].startswith(f"{settings.kind}-")
        and parts[2].endswith(".png")
        and _NAME.fullmatch(parts[2]) is not None
    )


def _own_folder(parts: tuple[str, ...], settings: BuildSettings) -> bool:
    if len(parts) == 1:
        return parts[0] in ("bench", "val", "images", ".parts")
    return len(parts) == 2 and parts[0] == "images" and parts[1] in settings.splits()


def _check_out(out: Path, settings: BuildSettings) -> tuple[list[Path], bool]:
    """Refuse an ``out`` that is not a folder, lies inside the database, holds foreign files or a build of other
    settings (nothing is written); returns the build's stale temporary files and whether ``.build.json`` is still to
    be written."""
    source = Path(settings.source)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a folder")
    resolved = out.resolve()
    if resolved == source or resolved.is_relative_to(source):
        raise BuildError(
            f"{out}: lies inside the database folder {source}, which a build only reads; use another --out"
        )
    if not out.exists():
        return [], True  # created once the database's tables have been read
    scan = resumable.scan_folder(
        out, lambda parts: _own_file(parts, settings), lambda parts: _own_folder(parts, settings)
    )
    resumable.refuse_foreign(out, scan.foreign, who=settings.kind, filler="a build", error=BuildError)
    wanted = settings.to_dict()
    marker, manifest = out / ".build.json", out / "manifest.json"
    recorded = False
    for path in (marker, manifest):
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise BuildError(f"{path}: unreadable ({why}); use another --out or delete the folder") from None
        if path == manifest:
            if not (isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT):
                raise BuildError(f"{path}: not the manifest of an evl-ecg database corpus; use another --out")
            doc = doc.get("settings")
        if not isinstance(doc, dict):
            raise BuildError(f"{path}: not a build marker (a JSON object of settings); delete the folder to start over")
        resumable.refuse_other_settings(out, path, doc, wanted, BuildError)
        recorded = True
    if scan.own and not recorded:
        raise BuildError(
            f"{out}: holds corpus files ({', '.join(scan.own[:3])}) but no .build.json or manifest.json, so the "
            "settings they were made with are unknown; use another --out or delete the folder"
        )
    return scan.temporary, not marker.is_file()


def _earlier(out: Path, settings: BuildSettings) -> dict[str, dict[str, Any]]:
    """Results of an earlier run, by record id: the chunks under ``.parts/``, then a finished build's split files and
    manifest entries. Records only (skips are retried), and only those whose image is intact."""
    found: dict[str, dict[str, Any]] = {}
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            entries = {e["id"]: e for e in doc.get("records", [])}
            for rel in doc.get("files", {}).values():
                for rec in json.loads((out / rel).read_text(encoding="utf-8")):
                    if rec.get("id") in entries:
                        found[rec["id"]] = {"record": rec, "entry": entries[rec["id"]]}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            found = {}
    parts = out / ".parts"
    if parts.is_dir():
        for path in sorted(parts.glob("*.json")):
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for item in saved if isinstance(saved, list) else []:
                if isinstance(item, dict) and "record" in item:
                    found[item["record"]["id"]] = {"record": item["record"], "entry": item["entry"]}
    return {
        rid: item
        for rid, item in found.items()
        if isinstance(item["record"].get("image"), str) and image_is_valid(out / "images" / item["record"]["image"])
    }


# --------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------


def _settings(
    source: str | os.PathLike[str],
    kind: str,
    *,
    size: tuple[int, int],
    dpi: int | None,
    augment: bool,
    seed: int,
    limit: int | None,
    rate: int | None,
    layout: str,
) -> BuildSettings:
    from evl_ecg.ecg.render import LAYOUTS, RenderSpec

    if kind not in KINDS:
        raise BuildError(f"--kind {kind!r}: unknown database; choose {', '.join(KINDS)}")
    root = Path(source)
    if not root.exists():
        raise BuildError(f"{root}: no such folder")
    if not root.is_dir():
        raise BuildError(f"{root}: not a folder (--source is the database's folder)")
    if limit is not None and not 1 <= limit <= MAX_RECORDS:
        raise BuildError(f"--limit {limit}: must lie in 1-{MAX_RECORDS:,}")
    if seed < 0:
        raise BuildError(f"--seed {seed}: must be >= 0")
    size = (int(size[0]), int(size[1]))
    try:
        RenderSpec(size=size)
    except ValueError as exc:
        raise BuildError(f"size {size[0]}x{size[1]}: {exc}") from None
    if dpi is not None and dpi <= 0:
        raise BuildError(f"dpi must be positive, got {dpi}")
    if layout not in LAYOUTS:
        raise BuildError(f"--layout {layout!r}: unknown layout; use {', '.join(LAYOUTS)}")
    tables: dict[str, str] = {}
    if kind == "ptbxl":
        rate = _ptbxl_rate(root, rate)
        names: tuple[str, ...] = ("ptbxl_database.csv", "scp_statements.csv")
    else:
        rate = None
        names = ("exams.csv",) if kind == "code15" else ()
    for name in names:
        path = root / name
        if not path.is_file():
            raise BuildError(f"{path}: not found; a {kind} folder holds {' and '.join(names)}")
        try:
            tables[name] = sha256_file(path)
        except OSError as exc:
            raise BuildError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return BuildSettings(
        kind=kind,
        source=str(root.resolve()),
        size=size,
        dpi=dpi,
        augment=bool(augment),
        seed=int(seed),
        limit=limit,
        layout=layout,
        rate=rate,
        tables=tables,
    )


def build_from_database(
    source: str | os.PathLike[str],
    kind: str,
    out_dir: str | os.PathLike[str],
    *,
    limit: int | None = None,
    seed: int = 0,
    size: tuple[int, int] = (512, 384),
    dpi: int | None = None,
    augment: bool = True,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    rate: int | None = None,
    layout: str = "3x4",
) -> BuildResult:
    """Build (or resume) a corpus from a local public ECG database; see the module docstring for the rules.

    Args:
        source: the database's folder, as published (PTB-XL: ``ptbxl_database.csv``, ``scp_statements.csv``,
            ``records500/`` or ``records100/``; Challenge: ``.hea``/``.mat`` records anywhere below it; CODE-15%:
            ``exams.csv`` and ``exams_part*.hdf5``).
        kind: ``ptbxl``, ``challenge`` or ``code15``.
        out_dir: output folder (created; empty, or a partial or finished build of the same settings).
        limit: the first ``limit`` records of the database's order (PTB-XL and CODE-15% by id, the Challenge by
            path), skipped ones included.
        seed: seeds the wording and the augmentations.
        size, dpi, augment: the renderer's options, as ``evl-ecg data synth``'s.
        workers: worker processes (1: in this process); does not change the output.
        progress: a progress bar on stderr.
        log: where to report skipped records as they are found (``None``: only in the result and the manifest).
        rate: PTB-XL only: 500 or 100 Hz (``None``: ``records500/`` when present, else ``records100/``).
        layout: the 12-lead layout (``3x4``, ``6x2``, ``12x1``); the page shows the first 10 s, so a shorter record
            (CODE-15%'s 7 s exams) leaves the end of each row blank: in ``3x4`` the V4-V6 column, in ``6x2`` (5 s
            columns) 3 s of the second column.

    Raises:
        BuildError: one line naming the file (and field): a missing or unreadable table, a missing column, an
            ``out_dir`` holding other files or another build, a file that cannot be written.
    """
    tally = resumable.Tally()
    settings = _settings(
        source, kind, size=size, dpi=dpi, augment=augment, seed=seed, limit=limit, rate=rate, layout=layout
    )
    out = Path(out_dir)
    temporary, new_marker = _check_out(out, settings)
    entries, absent = _entries(settings)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    cands = [e for e in entries if isinstance(e, Candidate)]
    width, height = settings.size
    need = int(len(cands) * width * height * BYTES_PER_PIXEL + len(cands) * BYTES_PER_RECORD)
    hint = "use --limit or a smaller --size"
    resumable.check_free_space(out, need, len(cands), settings.size, hint=hint, error=BuildError)
    resumable.begin(out, settings.to_dict(), new_marker=new_marker, temporary=temporary, write=_write)

    earlier = _earlier(out, settings)
    results: dict[str, dict[str, Any]] = {}
    for e in entries:
        if isinstance(e, Candidate) and e.id in earlier:
            results[e.id] = earlier[e.id]
    tally.resumed = len(results)
    todo = [c for c in cands if c.id not in results]
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]

    def take(job: tuple[Any, ...], done: tuple[int, list[Any]]) -> int:
        chunk, res = job[3], done[1]
        for cand, item in zip(chunk, res, strict=True):
            if "record" in item:
                tally.rendered += item["rendered"] is True
                tally.reused += item["rendered"] is False
            results[cand.id] = item
            if "skip" in item and log is not None:
                log(f"skipped {item['skip']['id']}: {item['skip']['reason']}")
        return len(res)

    resumable.run_chunks(
        _run_chunk,
        [(settings, out, i, chunk) for i, chunk in enumerate(chunks)],
        take,
        workers=workers,
        total=len(entries),
        done=len(entries) - len(cands) + tally.resumed,
        progress=progress,
        desc=f"build {settings.kind}",
    )

    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in settings.splits()}
    records_manifest: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for e in entries:
        item = e if not isinstance(e, Candidate) else results[e.id]
        if "skip" in item:
            skipped.append(item["skip"])
        else:
            by_split[item["entry"]["split"]].append(item["record"])
            records_manifest.append(item["entry"])
    if log is not None:
        for e in entries:
            if not isinstance(e, Candidate):
                log(f"skipped {e['skip']['id'] or e['skip']['source']}: {e['skip']['reason']}")

    # a bench/val file without items is no benchmark (evl_ecg.eval reads every file it finds)
    written = {s: v for s, v in by_split.items() if s == "train" or v}
    files = resumable.write_splits(out, written, split_file, _write)
    for split in settings.splits():  # a split emptied since an earlier build of these settings (never by them)
        if split not in files and (out / split_file(split)).is_file():
            (out / split_file(split)).unlink()

    vocab = settings.task
    manifest = {
        "format": MANIFEST_FORMAT,
        "note": REAL_NOTE,
        "database": settings.kind,
        "source": settings.source,
        "seed": settings.seed,
        "settings": settings.to_dict(),
        "image_root": "images",
        "files": files,
        "split_rule": SPLIT_RULES[settings.kind],
        "label_rule": LABEL_RULES[settings.kind],
        "question": {
            "task": vocab,
            "prompts": f"evl_ecg.data.questions.LABEL_SET_PROMPTS[{vocab!r}]",
            "answers": {"ptbxl": "ptbxl_gold", "cpsc": "cpsc_gold", "code15": "code15_gold"}[vocab],
        },
        "counts": {s: len(v) for s, v in by_split.items()},
        "listed": len(entries),
        "skipped_count": len(skipped),
        "label_frequencies": {
            s: {
                **{c: sum(1 for r in v if c in r["labels"][vocab]) for c in VOCABULARIES[vocab]},
                "(none)": sum(1 for r in v if not r["labels"][vocab]),
            }
            for s, v in by_split.items()
        },
        "augmented": {s: sum(1 for r in v if r["meta"]["augmented"]) for s, v in by_split.items()},
        "absent_trace_files": absent,
        **({"unmapped_codes": unmapped_codes(records_manifest, skipped)} if settings.kind == "challenge" else {}),
        "versions": resumable.versions("numpy", "pillow", "wfdb"),
        "skipped": skipped,
        "records": records_manifest,
    }
    if vocab == "code15":
        for s, v in by_split.items():
            for whole in ("NORM", "ABNORMAL"):
                manifest["label_frequencies"][s][whole] = sum(1 for r in v if r["conversations"][1]["value"] == whole)
    return resumable.finish(
        out, manifest, BuildResult, skipped=skipped, tally=tally, write=_write, ensure_ascii=False, absent=absent
    )


def unmapped_codes(records: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """The Challenge codes that gave no CPSC-2018 class, over the records read (built, or skipped because no code
    maps): ``{"records": how many carry one, "codes": {code: records carrying it}}``, the most frequent first."""
    lists = [e["provenance"].get("unmapped", []) for e in records] + [s.get("unmapped", []) for s in skipped]
    counts = Counter(code for codes in lists for code in dict.fromkeys(codes))
    return {
        "records": sum(1 for codes in lists if codes),
        "codes": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


__all__ = [
    "CHUNK",
    "KINDS",
    "LABEL_RULES",
    "MANIFEST_FORMAT",
    "SPLIT_RULES",
    "BuildError",
    "BuildResult",
    "BuildSettings",
    "Candidate",
    "build_from_database",
    "fold",
    "make_record",
    "ptbxl_superclasses",
    "split_of_fold",
    "unmapped_codes",
]
