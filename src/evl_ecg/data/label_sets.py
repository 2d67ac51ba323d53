"""Label-set questions and their candidate answers: what a model's per-label probabilities are read from.

A *label-set question* asks which labels of a fixed vocabulary (``ptbxl``, ``code15``, ``cpsc``:
:data:`evl_ecg.ecg.labels.VOCABULARIES`) an ECG shows, and lists every one of them as an option: the PTB-XL
superclass and CODE-15% questions name each ``CODE(long name)``, the CPSC-2018 query each long name
(:data:`evl_ecg.data.questions.LABEL_SET_PROMPTS`). :func:`question_label_set` reads the vocabulary off the question
text alone, so a pool record (whose question was drawn without its labels and which carries no ``meta``) is
recognised as well as a labelled one. Multiple-choice (one true option among eight drawn per record), fill-in,
report and ECG-QA questions are not label-set questions: their options change from record to record.

The candidates of a vocabulary (:func:`candidate_answers`) are one answer naming each label alone, in the gold
answers' own format (:func:`infer_answer_style`), then the answers that name no label (:func:`no_label_answers`:
the subset's "nothing applies" answer, and on CODE-15% under ``softmax`` the other whole answer, ``NORM`` or
``ABNORMAL``). Evaluation's label likelihood (:mod:`evl_ecg.eval.likelihood`) and the label-space distillation loss
(:mod:`evl_ecg.distill.label_space`) score the same candidates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from evl_ecg.ecg.labels import LONG_NAMES, VOCABULARIES

#: The null answer used when no record of the subset has an empty gold label set.
DEFAULT_NULL_ANSWER = "None of the listed options apply."
#: CODE-15%'s whole-answer classes (the gold answer is exactly one of them; no label of the six is present).
CODE15_WHOLE_ANSWERS = ("NORM", "ABNORMAL")
#: How candidates' log-likelihoods become label probabilities (:func:`evl_ecg.eval.likelihood.label_probabilities`).
NORMALIZATIONS = ("null", "softmax")


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _turn_value(turn: Any) -> Any:
    return turn.get("value") if isinstance(turn, Mapping) else getattr(turn, "value", None)


def _text(value: Any, sep: str) -> str:
    return sep.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def gold_text(record: Any) -> str:
    """The first gpt turn's value as one string (lists joined with ``"; "``)."""
    convs = _get(record, "conversations") or []
    if len(convs) < 2:
        rid = _get(record, "id")
        raise ValueError(f"record {'' if rid is None else str(rid)!r} has no gold answer")
    return _text(_turn_value(convs[1]), "; ")


def _gold_or_none(record: Any) -> str | None:
    try:
        return gold_text(record)
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def gold_labels(record: Any, vocabulary: str) -> list[str]:
    """The record's gold labels in ``vocabulary``: its ``labels[vocabulary]`` if present, else the scorer's rule.

    The scorer's rule (§2.3.1): a label is present if its code is a (case-sensitive) substring of the gold answer;
    for ``code15`` a gold answer that is exactly ``NORM`` or ``ABNORMAL`` has none of the six labels.
    """
    labels = _get(record, "labels") or {}
    if vocabulary in labels:
        return [c for c in VOCABULARIES[vocabulary] if c in set(labels[vocabulary])]
    text = gold_text(record)
    if vocabulary == "code15" and text.strip() in CODE15_WHOLE_ANSWERS:
        return []
    return [c for c in VOCABULARIES[vocabulary] if c in text]


def infer_answer_style(records: Sequence[Any], vocabulary: str) -> str:
    """``"coded"`` if the gold answers spell labels as ``CODE(long name)``, else ``"code"`` (bare codes)."""
    names = LONG_NAMES[vocabulary]
    for record in records:
        text = _gold_or_none(record) or ""
        if any(f"{c}({names[c]})" in text for c in names):
            return "coded"
    return "code"


def format_answer(labels: Sequence[str], vocabulary: str, style: str) -> str:
    """The answer naming ``labels`` in the subset's gold format (``"; "``-joined, as the gold answers)."""
    if style == "coded":
        return "; ".join(f"{c}({LONG_NAMES[vocabulary][c]})" for c in labels)
    if style == "code":
        return "; ".join(labels)
    raise ValueError(f"unknown answer style {style!r}; expected 'coded' or 'code'")


def infer_null_answer(records: Sequence[Any], vocabulary: str) -> str:
    """The most frequent gold answer among records with no label (ties: first seen); a default if none."""
    texts = [(r, _gold_or_none(r)) for r in records]
    empty = [t.strip() for r, t in texts if t is not None and not gold_labels(r, vocabulary)]
    if not empty:
        return "NORM" if vocabulary == "code15" else DEFAULT_NULL_ANSWER
    counts = Counter(empty)
    best = max(counts.values())
    return next(t for t in empty if counts[t] == best)


def no_label_answers(null: str, vocabulary: str, normalization: str) -> list[str]:
    """The no-label candidates: the null answer, and with ``softmax`` on CODE-15% the other whole answer
    (``NORM`` / ``ABNORMAL``), so that an abnormal exam outside the six labels has an answer."""
    if normalization == "softmax" and vocabulary == "code15":
        return [null] + [a for a in CODE15_WHOLE_ANSWERS if a != null]
    return [null]


def candidate_answers(vocabulary: str, style: str, null: str, normalization: str = "softmax") -> list[str]:
    """The candidates of a label-set question: each label of ``vocabulary`` alone (vocabulary order), then
    :func:`no_label_answers`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")
    labels = [format_answer([c], vocabulary, style) for c in VOCABULARIES[vocabulary]]
    return labels + no_label_answers(null, vocabulary, normalization)


def first_question(record: Any) -> str:
    """The first human turn's text (list values joined), ``""`` where the record has none."""
    convs = _get(record, "conversations") or []
    return _text(_turn_value(convs[0]), "") if convs else ""


def question_label_set(question: str) -> str | None:
    """The vocabulary whose every label the question lists as an option (``ptbxl``, ``code15``: each
    ``CODE(long name)``; ``cpsc``: each long name), ``None`` for any other question. Read from the text alone."""
    for vocabulary in ("ptbxl", "code15"):
        names = LONG_NAMES[vocabulary]
        if all(f"{c}({names[c]})".lower() in question.lower() for c in VOCABULARIES[vocabulary]):
            return vocabulary
    if all(LONG_NAMES["cpsc"][c].lower() in question.lower() for c in VOCABULARIES["cpsc"]):
        return "cpsc"
    return None


def record_label_set(record: Any) -> str | None:
    """:func:`question_label_set` of the record's first question."""
    return question_label_set(first_question(record))


def training_candidates(records: Sequence[Any], normalization: str = "softmax") -> dict[str, list[str]]:
    """The candidate answers of each vocabulary asked among ``records`` (a training set): the answer style and the
    null answer read off that vocabulary's records' own answers (:func:`infer_answer_style`,
    :func:`infer_null_answer`), as evaluation reads them off a subset's gold answers."""
    by_vocabulary: dict[str, list[Any]] = {}
    for record in records:
        vocabulary = record_label_set(record)
        if vocabulary is not None:
            by_vocabulary.setdefault(vocabulary, []).append(record)
    return {
        v: candidate_answers(v, infer_answer_style(rs, v), infer_null_answer(rs, v), normalization)
        for v, rs in sorted(by_vocabulary.items())
    }


def candidate_conversation(record: Any, answer: str) -> dict[str, Any]:
    """A two-turn conversation: the record's first human turn and ``answer`` (its id and image kept)."""
    rid = _get(record, "id")
    return {
        "id": "" if rid is None else str(rid),
        "image": _get(record, "image"),
        "conversations": [{"from": "human", "value": first_question(record)}, {"from": "gpt", "value": answer}],
    }


__all__ = [
    "CODE15_WHOLE_ANSWERS",
    "DEFAULT_NULL_ANSWER",
    "NORMALIZATIONS",
    "candidate_answers",
    "candidate_conversation",
    "first_question",
    "format_answer",
    "gold_labels",
    "gold_text",
    "infer_answer_style",
    "infer_null_answer",
    "no_label_answers",
    "question_label_set",
    "record_label_set",
    "training_candidates",
]
