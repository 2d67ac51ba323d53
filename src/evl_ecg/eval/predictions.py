"""ECGBench gold files, prediction files, and how the two are paired (with every bad input accounted for).

Gold (``data/ECGBench/<subset>.json``): a JSON list (JSONL also read) of LLaVA records
``{"id", "image", "conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}``.
``value`` may be a list: ``ecgqa-test`` stores the prompt as a list of single characters (joined here) and the
answer as a list (kept as a list: :attr:`BenchItem.answer`).

Predictions: PULSE's JSONL output ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``;
the baseline harness's ``id`` / ``response`` / ``prompt: {"prompt": ...}`` are read as well, with PULSE's key
priority (``question_id`` before ``id``, ``text`` before ``response``).

A prediction file belongs to the subset its path names (PULSE's rule: ``"ptb-test" in path`` and so on; we look
at the file name first, then the folders above it, nearest first, so a run folder cannot capture a file) or to
the subset given explicitly. :func:`align` pairs rows with gold items by id and returns the problems it saw as
:class:`Issue` objects, which scorers count and report: nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ECGBench subsets this module scores, in the order PULSE's ``__main__`` scores them (the MCQ fallback draws
#: of one run depend on this order; MMMU comes first there).
SUBSETS: tuple[str, ...] = (
    "mmmu-ecg",
    "ptb-test",
    "cpsc-test",
    "csn-test-no-cot",
    "g12-test-no-cot",
    "ecgqa-test",
    "code15-test",
)

#: Task type of each subset.
TASKS: dict[str, str] = {
    "ptb-test": "multilabel",
    "code15-test": "multilabel",
    "cpsc-test": "multilabel",
    "csn-test-no-cot": "mcq",
    "g12-test-no-cot": "mcq",
    "mmmu-ecg": "mcq",
    "ecgqa-test": "ecgqa",
}

#: The substring PULSE looks for in a prediction file's path, per subset.
PATH_KEYS: dict[str, str] = {
    "ptb-test": "ptb-test",
    "code15-test": "code15-test",
    "cpsc-test": "cpsc-test",
    "csn-test-no-cot": "csn-test",
    "g12-test-no-cot": "g12-test",
    "mmmu-ecg": "mmmu-ecg",
    "ecgqa-test": "ecgqa-test",
}

#: Number of lines PULSE requires of an MCQ prediction file (it skips the file otherwise).
OFFICIAL_COUNTS: dict[str, int] = {"csn-test-no-cot": 1611, "g12-test-no-cot": 2026, "mmmu-ecg": 200}

IMAGE_TOKEN = "<image>"


class EvalInputError(ValueError):
    """A gold or prediction file that cannot be scored at all (the message names the file and the reason)."""


class WrongSubsetError(EvalInputError):
    """A prediction file that belongs to another subset than the gold file it is scored against."""


@dataclass(frozen=True)
class BenchItem:
    """One gold item.

    Attributes:
        id: the record id.
        prompt: the first human turn, joined if it was a list, without ``<image>`` (what the model is asked).
        answer: the first gpt turn as stored: a string, or a list (``ecgqa-test``).
    """

    id: str
    prompt: str
    answer: str | list[str]

    @property
    def answer_text(self) -> str:
        """The answer as one string: a list of single characters is joined, a list of strings joined by ``"; "``."""
        return join_value(self.answer, sep="; ")


@dataclass(frozen=True)
class PredRow:
    """One prediction row (line ``line`` of its file; ``text`` is ``""`` where the row had none).

    ``has_text`` is False when the row has neither a ``text`` nor a ``response`` key (the published scorer then
    reuses the previous row's prediction; see :func:`evl_ecg.eval.scoring.score_file`).
    """

    line: int
    id: str
    text: str
    prompt: str | None
    has_text: bool = True


@dataclass(frozen=True)
class Issue:
    """A problem with the input; ``kind`` is one of :data:`ISSUE_KINDS`."""

    kind: str
    message: str
    id: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "line": self.line, "message": self.message}


#: Kinds of :class:`Issue`, with what each scorer does about them.
ISSUE_KINDS: dict[str, str] = {
    "malformed": "line is not a JSON object with an id; not scored (both scorers)",
    "unknown_id": "id not in the gold file; not scored (both scorers; PULSE would crash with KeyError)",
    "duplicate_id": "id seen before in this file; the first row is scored, this one is not (both scorers)",
    "empty_text": (
        "no text/response or blank; scored as an empty answer (both scorers), except that pulse reuses the previous"
        " row's prediction for a row without a text/response key, as published"
    ),
    "prompt_mismatch": "the row's prompt differs from the gold prompt; pulse scores it, strict counts it wrong",
    "missing_prediction": "gold id without a prediction; pulse shrinks N (as published), strict counts it wrong",
}


@dataclass
class Alignment:
    """Prediction rows paired with gold items.

    Attributes:
        pairs: (gold, row) in prediction-file order, one per scorable row (``prompt_mismatch`` rows included).
        missing: gold items without a prediction, in gold order.
        issues: every problem seen.
        n_rows: number of non-empty lines in the prediction file (PULSE's line count).
    """

    pairs: list[tuple[BenchItem, PredRow]]
    missing: list[BenchItem]
    issues: list[Issue] = field(default_factory=list)
    n_rows: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for i in self.issues if i.kind == kind)

    def ids_with(self, kind: str) -> set[str]:
        return {i.id for i in self.issues if i.kind == kind and i.id is not None}


def join_value(value: Any, *, sep: str = "") -> str:
    """A conversation ``value`` as one string: strings as is; a list of single characters joined with ``""``
    (the HF ``list<str>`` quirk); any other list joined with ``sep``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
        if all(len(s) <= 1 for s in items):
            return "".join(items)
        return sep.join(items)
    raise TypeError(f"value must be a string or a list of strings, got {type(value).__name__}")


def normalize_prompt(text: str) -> str:
    """A prompt for comparison: ``<image>`` removed and whitespace collapsed."""
    return " ".join(text.replace(IMAGE_TOKEN, " ").split())


def subset_from_path(path: str | os.PathLike[str]) -> str | None:
    """The ECGBench subset a path names, or ``None``.

    PULSE's substring keys (``ptb-test``, ``code15-test``, ``cpsc-test``, ``csn-test``, ``g12-test``,
    ``ecgqa-test``, ``mmmu-ecg``) are looked for in the file name first and then in each folder above it, nearest
    first; the first part that names a subset decides. ``ptb-test-report`` (the report set) is not ``ptb-test``.
    A part naming two subsets raises :class:`EvalInputError`.
    """
    parts = Path(path).parts[::-1]
    for part in parts:
        found = [s for s, key in PATH_KEYS.items() if key in part]
        if "ptb-test" in found and "report" in part:
            found.remove("ptb-test")
        if len(found) > 1:
            raise EvalInputError(f"{path}: path part {part!r} names several subsets: {', '.join(found)}")
        if found:
            return found[0]
    return None


def resolve_subset(path: str | os.PathLike[str], explicit: str | None, *, what: str) -> str:
    """The subset of ``path``: ``explicit`` when given (it must agree with the path, if the path names one)."""
    if explicit is not None and explicit not in TASKS:
        raise EvalInputError(f"unknown subset {explicit!r}; known: {', '.join(sorted(TASKS))}")
    named = subset_from_path(path)
    if explicit is not None:
        if named is not None and named != explicit:
            raise WrongSubsetError(f"{path}: {what} path names subset {named!r} but subset {explicit!r} was given")
        return explicit
    if named is None:
        raise EvalInputError(
            f"{path}: cannot tell the subset of this {what} file from its path; name it after the subset "
            f"({', '.join(sorted(TASKS))}) or pass --subset"
        )
    return named


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text as PULSE's ``for line in open(path, encoding="utf-8")`` reads them (line ends
    removed): only ``\\n``, ``\\r\\n`` and ``\\r`` end a line (text-mode universal newlines). ``str.splitlines``
    would also break at U+2028, U+2029, U+0085, ``\\v``, ``\\f`` and ``\\x1c``-``\\x1e``; JSON allows the first
    three unescaped inside a string, and writers with ``ensure_ascii=False`` (PULSE's baseline harness) leave them so.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    return lines


def json_kind(value: Any) -> str:
    """What a JSON value is, for messages: ``an object``, ``an array``, ``a string``, ``a number``, ``true``, ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def read_json_rows(
    path: Path, error: type[Exception] = EvalInputError
) -> tuple[list[tuple[int, Any, str | None]], bool]:
    """(item or line number, parsed value or None, error) for a JSON list or a JSONL file, and whether it is JSON lines.

    A ``.jsonl`` file is JSON lines, each line one record, whatever its first character (a line may hold an array: it
    is that line's record, reported as such, not the start of one document). Another file is one JSON list when its
    text starts with ``[`` and parses as one document; text that holds one JSON value per line ("Extra data" after the
    first line) is JSON lines too. Lines are split as :func:`jsonl_lines` does. A file that cannot be read, or a JSON
    list that is not valid JSON, raises ``error`` naming it (and the line).
    """
    from evl_ecg.files import read_text_file

    return _json_rows(path, read_text_file(path, error), error)


def _json_rows(path: Path, text: str, error: type[Exception]) -> tuple[list[tuple[int, Any, str | None]], bool]:
    """:func:`read_json_rows` on the text already read from ``path``."""
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not (exc.msg == "Extra data" and _first_line_parses(text)):
                raise error(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
        else:
            if isinstance(data, list):
                return [(i + 1, row, None) for i, row in enumerate(data)], False
    rows: list[tuple[int, Any, str | None]] = []
    for n, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line), None))
        except json.JSONDecodeError as exc:
            rows.append((n, None, f"invalid JSON ({exc.msg})"))
    return rows, True


def _first_line_parses(text: str) -> bool:
    lines = [ln for ln in jsonl_lines(text) if ln.strip()]
    try:
        json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):
        return False
    return True


def _read_rows(path: Path) -> tuple[list[tuple[int, Any, str | None]], bool]:
    """:func:`read_json_rows`, refusing a file that holds one JSON object over several lines (an object, not a list
    of records nor JSON lines) with :class:`EvalInputError` naming it."""
    from evl_ecg.files import read_text_file

    text = read_text_file(path, EvalInputError)
    rows, json_lines = _json_rows(path, text, EvalInputError)
    stripped = text.strip() if json_lines and len(rows) > 1 and any(error for _, _, error in rows) else ""
    if stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            raise EvalInputError(f"{path}: is one JSON object, expected a JSON list of records or JSON lines")
    return rows, json_lines


def load_bench(path: str | os.PathLike[str]) -> list[BenchItem]:
    """Gold items of an ECGBench subset file; any malformed item or duplicate id raises :class:`EvalInputError`.

    An item is malformed when it is not an object, has no string ``id``, or its conversation does not start with a
    ``human`` turn (the question) followed by a ``gpt`` turn (the gold answer): scoring the question as the gold
    answer would give wrong numbers without a word. A file without items is an error too.
    """
    path = Path(path)
    items: list[BenchItem] = []
    seen: set[str] = set()
    rows, json_lines = _read_rows(path)
    for n, row, error in rows:
        where = f"{path}: line {n}" if json_lines else f"{path}: item {n}"
        if error is not None:
            raise EvalInputError(f"{where}: {error}")
        if not isinstance(row, dict):
            if json_lines:
                raise EvalInputError(f"{where}: holds {json_kind(row)}, expected an object (one record per line)")
            raise EvalInputError(f"{where}: expected an object, got {type(row).__name__}")
        rid = row.get("id")
        if not isinstance(rid, str) or not rid:
            raise EvalInputError(f"{where}: field 'id' must be a non-empty string")
        convs = row.get("conversations")
        if not isinstance(convs, list) or len(convs) < 2:
            raise EvalInputError(f"{where} (id {rid!r}): field 'conversations' needs a human and a gpt turn")
        for k, role in enumerate(("human", "gpt")):
            found = convs[k].get("from") if isinstance(convs[k], dict) else None
            if found != role:
                raise EvalInputError(
                    f"{where} (id {rid!r}): field conversations[{k}].from is {found!r}, expected {role!r} (the "
                    "question comes first, then the gold answer)"
                )
        try:
            prompt = join_value(convs[0]["value"])
            answer = convs[1]["value"]
            if isinstance(answer, list | tuple):
                answer = [str(a) for a in answer]
            elif not isinstance(answer, str):
                raise TypeError(f"answer is a {type(answer).__name__}")
        except (KeyError, TypeError) as exc:
            raise EvalInputError(f"{where} (id {rid!r}): bad conversation turn ({exc})") from None
        if rid in seen:
            raise EvalInputError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        items.append(BenchItem(id=rid, prompt=prompt.replace(IMAGE_TOKEN, "").strip(), answer=answer))
    if not items:
        raise EvalInputError(f"{path}: no gold items")
    return items


def load_predictions(path: str | os.PathLike[str]) -> tuple[list[PredRow], list[Issue]]:
    """Prediction rows of a JSONL (or JSON list) file, and the issues of rows that could not be read."""
    path = Path(path)
    rows: list[PredRow] = []
    issues: list[Issue] = []
    read, json_lines = _read_rows(path)
    for n, raw, error in read:
        if error is not None or not isinstance(raw, dict):
            why = error or (
                f"holds {json_kind(raw)}, expected an object (one prediction per line)"
                if json_lines
                else f"expected a JSON object, got {type(raw).__name__}"
            )
            issues.append(Issue("malformed", f"{path}:{n}: {why}", line=n))
            continue
        rid = raw.get("question_id", raw.get("id"))
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            issues.append(Issue("malformed", f"{path}:{n}: no 'question_id' or 'id'", line=n))
            continue
        rid = str(rid)
        has_text = "text" in raw or "response" in raw
        text = raw.get("text", raw.get("response"))
        if isinstance(text, list):
            text = join_value(text)
        if not has_text:
            why = "has no 'text' or 'response' key (pulse reuses the previous row's prediction, as published)"
            issues.append(Issue("empty_text", f"{path}:{n}: id {rid!r} {why}", id=rid, line=n))
            text = ""
        elif not isinstance(text, str) or not text.strip():
            issues.append(Issue("empty_text", f"{path}:{n}: id {rid!r} has no answer text", id=rid, line=n))
            text = text if isinstance(text, str) else ""
        prompt = raw.get("prompt")
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt")
        if isinstance(prompt, list):
            prompt = join_value(prompt)
        rows.append(
            PredRow(line=n, id=rid, text=text, prompt=prompt if isinstance(prompt, str) else None, has_text=has_text)
        )
    if read and not rows:  # not one row could be read: nothing to score; the first bad line says why
        raise EvalInputError(f"{issues[0].message}; none of its {len(read)} line(s) is a prediction row")
    return rows, issues


def align(
    bench: Sequence[BenchItem],
    rows: Sequence[PredRow],
    *,
    subset: str,
    source: str = "predictions",
    read_issues: Iterable[Issue] = (),
    mismatch_limit: float = 0.5,
) -> Alignment:
    """Pair ``rows`` with ``bench`` items by id, in file order, and list every problem (:data:`ISSUE_KINDS`).

    Raises :class:`WrongSubsetError` when the file evidently belongs to another subset: none of its ids is in
    the gold file, or more than ``mismatch_limit`` of the paired rows carry a prompt that differs from the gold
    prompt.
    """
    gold = {item.id: item for item in bench}
    issues = list(read_issues)
    pairs: list[tuple[BenchItem, PredRow]] = []
    seen: dict[str, int] = {}
    for row in rows:
        if row.id not in gold:
            issues.append(
                Issue("unknown_id", f"{source}:{row.line}: id {row.id!r} is not in {subset}", row.id, row.line)
            )
            continue
        if row.id in seen:
            issues.append(
                Issue(
                    "duplicate_id",
                    f"{source}:{row.line}: id {row.id!r} repeats line {seen[row.id]}; only the first is scored",
                    row.id,
                    row.line,
                )
            )
            continue
        seen[row.id] = row.line
        item = gold[row.id]
        if row.prompt is not None and normalize_prompt(row.prompt) != normalize_prompt(item.prompt):
            issues.append(
                Issue(
                    "prompt_mismatch",
                    f"{source}:{row.line}: id {row.id!r}: the prompt differs from the {subset} gold prompt",
                    row.id,
                    row.line,
                )
            )
        pairs.append((item, row))
    n_rows = len(rows) + sum(1 for i in issues if i.kind == "malformed")
    if rows and not pairs:
        raise WrongSubsetError(f"{source}: none of its {len(rows)} ids is in {subset}; is it another subset's file?")
    n_mismatch = sum(1 for i in issues if i.kind == "prompt_mismatch")
    if pairs and n_mismatch > mismatch_limit * len(pairs):
        raise WrongSubsetError(
            f"{source}: {n_mismatch} of {len(pairs)} rows carry a prompt unlike the {subset} gold prompt; "
            "is it another subset's file?"
        )
    missing = [item for item in bench if item.id not in seen]
    for item in missing:
        issues.append(Issue("missing_prediction", f"{source}: no prediction for {subset} id {item.id!r}", item.id))
    return Alignment(pairs=pairs, missing=missing, issues=issues, n_rows=n_rows)


def issue_counts(issues: Iterable[Issue]) -> dict[str, int]:
    """Count of each issue kind (every kind listed, zeros included)."""
    counts = Counter(i.kind for i in issues)
    return {kind: counts.get(kind, 0) for kind in ISSUE_KINDS}


_SEED_RE = re.compile(r"^seed[-_=]?(\d+)$", re.IGNORECASE)


def run_from_path(path: str | os.PathLike[str]) -> tuple[str | None, int | None]:
    """(method, seed) from a path like ``runs/<method>/seed<k>/...``: the first folder named ``seed<k>``
    (``seed-k``, ``seed_k``) gives the seed and the folder above it the method; ``(None, None)`` otherwise."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        m = _SEED_RE.match(part)
        if m and i > 0:
            return parts[i - 1], int(m.group(1))
    return None, None
