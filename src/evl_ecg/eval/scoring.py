"""The two ECGBench scorers: ``pulse`` (the published scorer's numbers, traps included) and ``strict`` (fixed).

``pulse`` restates PULSE's ``evaluation/evaluate_ecgbench.py`` (ref §2.3, ``docs/eval.md`` has the table of every
behaviour, trap kept or bug fixed):

* multi-label sets: a label is predicted iff its code is a *case-sensitive substring* of the text (``"NORM"`` is
  in ``"ABNORMAL"``, ``"MI"`` in ``"STEMI"``, ``"ST"`` in ``"STE"``, ``"AF"`` in ``"AFL"``); CODE-15% has the
  whole-answer ``NORM`` / ``ABNORMAL`` rules; the headline AUC / F1 / HL by :func:`pulse_compute_f1_auc` (the
  published ``compute_f1_auc``, one-gold-class F1 included) rounded as published (:func:`pulse_round`), per-class
  figures by :func:`evl_ecg.eval.metrics.pulse_multilabel`;
* MCQ sets: :func:`pulse_extract_letter` (five rules, alphabetical rule 2), then ``rng.choice`` of the letters when
  nothing was found, with one ``random.Random(42)`` shared by a whole scoring run (PULSE seeds once at import);
* ECG-QA: candidates split from the prompt after ``Options:``; a candidate is predicted iff ``c in text.lower()``
  (the candidate is not lower-cased, so one with a capital letter never matches); exact set match with the gold
  list (or GEM's character-set rule with ``ecgqa_rule="gem"``).

``strict`` matches labels as whole codes or long names (:func:`strict_labels`), extracts MCQ letters by explicit
rules or by the option text (:func:`strict_extract_letter`, no random fallback), compares ECG-QA answers as
case-insensitive option sets, scores over the full vocabulary with NaN-safe averages, and counts missing or
unparsable answers wrong.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evl_ecg.eval.metrics import MultiLabelMetrics, accuracy, pct, pulse_multilabel, strict_multilabel
from evl_ecg.eval.parsing import (
    ECGQA_RULES,
    MCQ_LETTERS,
    VOCABULARY,
    ecgqa_candidates,
    ecgqa_correct,
    ecgqa_gold_options,
    pulse_code15_gold,
    pulse_code15_pred,
    pulse_ecgqa,
    pulse_ecgqa_gold,
    pulse_extract_letter,
    pulse_labels,
    strict_classes,
    strict_ecgqa,
    strict_extract_letter,
    strict_labels,
)
from evl_ecg.eval.predictions import (
    OFFICIAL_COUNTS,
    TASKS,
    Alignment,
    BenchItem,
    EvalInputError,
    Issue,
    PredRow,
    align,
    issue_counts,
)

SCORERS: tuple[str, ...] = ("pulse", "strict")
#: Seed of PULSE's ``random.seed(42)`` (set once at import of the published scorer).
PULSE_SEED = 42

# --------------------------------------------------------------------------------------------------
# pulse: the published metrics and their rounding
# --------------------------------------------------------------------------------------------------


def pulse_round(x: float | None) -> float | None:
    """``round(x * 100, 1)`` on a numpy float64, as the published scorer rounds ``np.mean`` results; ``None`` for NaN.

    numpy rounds by scaling (``rint(y * 10) / 10``), so an exact decimal tie goes to the even digit: F1 0.8045 gives
    80.4, where Python's ``round`` on the float ``80.45000000000000284...`` gives 80.5 (:func:`pct`).
    """
    if x is None or math.isnan(x):
        return None
    return float(round(np.float64(x) * 100, 1))


@dataclass(frozen=True)
class PulseMultilabelNumbers:
    """The published ``compute_f1_auc`` outputs (fractions) and how the published scorer rounds each.

    Attributes:
        f1: mean of ``f1_score(average=None)[idx]`` over the fitted classes (one gold class: the first of the two
            binary F1 values, the negative label's, unless no 0 occurs at all).
        auc: ``np.mean`` of the per-class AUCs (NaN propagates).
        hl: ``hamming_loss``.
        one_class: the binariser fitted one class (sklearn then scores a binary problem).
        hl_numpy: ``hamming_loss`` returns a numpy float64 there (scikit-learn 1.2.2, PULSE's pin: the binary branch
            returns ``np.average``; the multi-label branch a Python float), so the published rounding is numpy's.
    """

    f1: float
    auc: float
    hl: float
    one_class: bool
    hl_numpy: bool

    def metrics(self) -> dict[str, float | None]:
        """``{"AUC", "F1", "HL"}`` x 100 to one decimal as the published ``round(x*100, 1)`` gives them."""
        return {
            "AUC": pulse_round(self.auc),
            "F1": pulse_round(self.f1),
            "HL": pulse_round(self.hl) if self.hl_numpy else pct(self.hl),
        }


def pulse_compute_f1_auc(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> PulseMultilabelNumbers:
    """The published ``compute_f1_auc(y_pred, y_true)``, restated.

    ``MultiLabelBinarizer`` fitted on ``gold``; ``hamming_loss``; ``f1_score(average=None)`` then the values at the
    indices of the fitted classes, averaged with ``np.mean``; per-class ``roc_auc_score`` on the 0/1 predictions, NaN
    for a class whose gold column holds one value (the intent of the published ``except ValueError``), ``np.mean``.

    With a single fitted class the indicator arrays have one column, sklearn reads them as a *binary* problem and
    ``f1_score(average=None)`` returns one F1 per label present (0 and 1); the published loop keeps only the first,
    the F1 of the negative label (class absent). Five gold rows all ``ABNORMAL`` therefore give F1 0.0.
    """
    m = pulse_multilabel(gold, pred)  # the same binariser, F1, AUC and HL (evl_ecg.eval.metrics)
    one_class = len(m.classes) == 1
    return PulseMultilabelNumbers(f1=m.f1, auc=m.auc, hl=m.hl, one_class=one_class, hl_numpy=one_class)


# --------------------------------------------------------------------------------------------------
# Scoring one prediction file
# --------------------------------------------------------------------------------------------------


@dataclass
class ScoreOptions:
    """Options of a scoring run.

    Attributes:
        official_counts: refuse an MCQ file whose line count is not PULSE's (1,611 CSN / 2,026 G12 / 200 MMMU),
            as the published scorer skips it; otherwise any size is scored with a warning.
        ecgqa_rule: ``pulse`` (PULSE's candidate rule) or ``gem`` (GEM/ECG-R1's character-set rule); pulse scorer only.
        max_issues: issues listed in full in a result (all are counted).
    """

    official_counts: bool = False
    ecgqa_rule: str = "pulse"
    max_issues: int = 100

    def __post_init__(self) -> None:
        if self.ecgqa_rule not in ECGQA_RULES:
            raise ValueError(f"ecgqa_rule must be one of {ECGQA_RULES}, got {self.ecgqa_rule!r}")


def new_pulse_rng() -> random.Random:
    """The fallback generator of one scoring run (the published ``random.seed(42)``, set once)."""
    return random.Random(PULSE_SEED)


def score_file(
    bench: Sequence[BenchItem],
    rows: Sequence[PredRow],
    *,
    subset: str,
    scorer: str,
    read_issues: Iterable[Issue] = (),
    rng: random.Random | None = None,
    options: ScoreOptions | None = None,
    source: str = "predictions",
) -> dict[str, Any]:
    """Score one prediction file of ``subset`` with ``scorer`` (``pulse`` or ``strict``); a JSON-ready result.

    ``rng`` is the run's shared fallback generator (pulse MCQ only); a fresh ``Random(42)`` when omitted.
    Raises :class:`EvalInputError` for a file that cannot be scored (wrong subset, official count, no items).

    With ``options.official_counts`` an MCQ file of the wrong size is refused, but the pulse scorer first makes
    its fallback draws from ``rng``, as the published scorer draws while reading a file and checks its length only
    afterwards: a skipped file still moves the draws of every later file of the run.

    A row without a ``text``/``response`` key (``PredRow.has_text`` False) takes the previous scored row's
    prediction in the pulse scorer (the published loop leaves ``predict`` as it was; an MCQ letter is then not
    drawn); at the top of a file it is scored as an empty answer (the published scorer would crash, or carry the
    previous file's last prediction). The strict scorer scores it as an empty answer.
    """
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
    if subset not in TASKS:
        raise EvalInputError(f"unknown subset {subset!r}; known: {', '.join(sorted(TASKS))}")
    options = options or ScoreOptions()
    al = align(bench, rows, subset=subset, source=source, read_issues=read_issues)
    task = TASKS[subset]
    warnings: list[str] = []
    refusal: str | None = None
    if task == "mcq" and al.n_rows != OFFICIAL_COUNTS[subset]:
        msg = (
            f"{source}: {al.n_rows} lines, the published scorer requires exactly {OFFICIAL_COUNTS[subset]} for {subset}"
        )
        if options.official_counts:
            refusal = msg + " (and skips the file); --official-counts is set"
            if scorer != "pulse":
                raise EvalInputError(refusal)
        else:
            warnings.append(msg + "; scored anyway (pass --official-counts to refuse)")
    try:
        if scorer == "pulse":
            # a refused file is scored too, and the result dropped: its fallback draws are made, as published
            body = _score_pulse(al, subset, task, rng if rng is not None else new_pulse_rng(), options)
        else:
            body = _score_strict(al, subset, task)
    except ValueError as exc:  # e.g. no gold label at all: the published scorer cannot fit its classes
        if refusal is not None:
            raise EvalInputError(refusal) from None
        raise EvalInputError(f"{source}: {subset} ({scorer}): {exc}") from None
    if refusal is not None:
        raise EvalInputError(refusal + " (its fallback draws were made, as published)")
    counts = issue_counts(al.issues)
    if counts["missing_prediction"]:
        effect = "N shrinks as in the published scorer" if scorer == "pulse" else "counted wrong"
        warnings.append(f"{counts['missing_prediction']} gold items have no prediction ({effect})")
    for kind in ("malformed", "unknown_id", "duplicate_id", "empty_text", "prompt_mismatch"):
        if counts[kind]:
            text = f"{counts[kind]} rows: {kind} ({_EFFECT[kind]})"
            if kind == "malformed":  # name the lines and what they hold: a row that cannot be read is not scored
                shown = [i.message for i in al.issues if i.kind == kind][:2]
                text += ": " + "; ".join(shown) + ("; ..." if counts[kind] > len(shown) else "")
            warnings.append(text)
    warnings.extend(body.pop("warnings", []))
    return {
        "subset": subset,
        "scorer": scorer,
        "task": task,
        "predictions": source,
        "n_gold": len(bench),
        "n_rows": al.n_rows,
        "n_scored": body.pop("n_scored"),
        **body,
        "input": {
            "counts": counts,
            "issues": [i.to_dict() for i in al.issues[: options.max_issues]],
            "issues_not_listed": max(0, len(al.issues) - options.max_issues),
        },
        "warnings": warnings,
        "options": {"official_counts": options.official_counts, "ecgqa_rule": options.ecgqa_rule},
    }


_EFFECT = {
    "malformed": "not scored",
    "unknown_id": "not scored",
    "duplicate_id": "only the first row of an id is scored",
    "empty_text": "scored as an empty answer; pulse gives a row without a text key the previous row's prediction",
    "prompt_mismatch": "pulse scores them; strict counts them wrong",
}


def _multilabel_body(
    m: MultiLabelMetrics,
    parse: dict[str, Any],
    scorer: str,
    ids: list[str],
    gold: list[list[str]],
    pred: list[list[str]],
) -> dict[str, Any]:
    d = m.to_dict()
    warnings = []
    if d["undefined_auc"]:
        how = "the macro AUC is NaN as published" if scorer == "pulse" else "left out of the macro AUC"
        warnings.append(f"AUC undefined for class(es) {d['undefined_auc']} (one gold value); {how}")
    if d["undefined_f1"]:
        warnings.append(f"F1 undefined for class(es) {d['undefined_f1']} (no gold, no predicted positive); left out")
    if d["dropped_predicted_labels"]:
        warnings.append(f"predicted labels not among the classes were dropped: {d['dropped_predicted_labels']}")
    return {
        "n_scored": d["n"],
        "metrics": {"AUC": d["AUC"], "F1": d["F1"], "HL": d["HL"]},
        "classes": d["classes"],
        "per_class": d["per_class"],
        "undefined": {"auc": d["undefined_auc"], "f1": d["undefined_f1"]},
        "dropped_predicted_labels": d["dropped_predicted_labels"],
        "parse": parse,
        "items": [{"id": i, "gold": g, "pred": p} for i, g, p in zip(ids, gold, pred, strict=True)],
        "warnings": warnings,
    }


def _mcq_body(
    ids: list[str], gold: list[str], pred: list[str | None], rules: list[str], extra: dict[str, Any]
) -> dict[str, Any]:
    acc = accuracy(gold, pred)
    per: dict[str, dict[str, int]] = {}
    for g, p in zip(gold, pred, strict=True):
        d = per.setdefault(g, {"n": 0, "correct": 0, "predicted": 0})
        d["n"] += 1
        d["correct"] += int(g == p)
    for p in pred:
        if p is not None:
            per.setdefault(p, {"n": 0, "correct": 0, "predicted": 0})["predicted"] += 1
    return {
        "n_scored": len(gold),
        "metrics": {"Acc": pct(acc)},
        "per_class": {k: per[k] for k in sorted(per)},
        "parse": {"rules": dict(sorted(Counter(rules).items())), **extra},
        "items": [
            {"id": i, "gold": g, "pred": p, "rule": r} for i, g, p, r in zip(ids, gold, pred, rules, strict=True)
        ],
    }


def _score_pulse(al: Alignment, subset: str, task: str, rng: random.Random, options: ScoreOptions) -> dict[str, Any]:
    pairs = al.pairs
    if not pairs:
        raise EvalInputError(f"{subset}: no prediction row matches a gold item; nothing to score")
    reused = 0  # rows without a text/response key that take the previous row's prediction, as published
    if task == "multilabel":
        vocab = VOCABULARY[subset]
        gold_sets, pred_sets = [], []
        branches: Counter[str] = Counter()
        for item, row in pairs:
            gold_sets.append(
                pulse_code15_gold(item.answer_text)
                if subset == "code15-test"
                else pulse_labels(item.answer_text, vocab)
            )
            if not row.has_text and pred_sets:
                labels = list(pred_sets[-1])  # published: `predict` keeps the previous row's value
                reused += 1
            elif subset == "code15-test":
                labels, branch = pulse_code15_pred(row.text)
                branches[branch] += 1
                branches["answer_split"] += int("Answer:" in row.text)
            else:
                labels = pulse_labels(row.text, vocab)
            pred_sets.append(labels)
        order = ("NORM", "ABNORMAL", *vocab) if subset == "code15-test" else vocab
        m = pulse_multilabel(gold_sets, pred_sets, vocabulary=order)
        published = pulse_compute_f1_auc(gold_sets, pred_sets)
        parse = {"rows_without_label": sum(1 for p in pred_sets if not p), "reused_previous_prediction": reused}
        if branches:
            parse["code15_branches"] = dict(sorted(branches.items()))
        body = _multilabel_body(m, parse, "pulse", [i.id for i, _ in pairs], gold_sets, pred_sets)
        body["metrics"] = published.metrics()
        if published.one_class:
            (cls,) = m.classes
            d = m.per_class[cls]
            denominator = 2 * d["tp"] + d["fp"] + d["fn"]
            body["per_class"][cls]["f1"] = pct(2 * d["tp"] / denominator if denominator else 0.0)
            negative = d["tn"] + d["fp"] + d["fn"] > 0  # a 0 in the gold or predicted column
            parse["one_class_f1_label"] = "negative" if negative else "positive"
            if negative:
                body["warnings"].append(
                    f"one gold class ({cls}): sklearn scores a binary problem and the published scorer keeps the "
                    f"first F1 value, that of the negative label (class absent): F1 {body['metrics']['F1']}; the "
                    f"class's own F1 is per_class.{cls}.f1"
                )
        _warn_reused(body, reused)
        return body
    if task == "mcq":
        choices = MCQ_LETTERS[subset]
        ids, gold, pred, rules = [], [], [], []
        for item, row in pairs:
            ids.append(item.id)
            # CSN/G12: the first character of the gold answer; MMMU: the whole gold string (keyed by id, not "No")
            gold.append(item.answer_text if subset == "mmmu-ecg" else item.answer_text[:1])
            if not row.has_text and pred:
                # published: `predict` keeps the previous row's letter (a drawn one included); no draw is made
                letter, rule = pred[-1], "previous_row"
                reused += 1
            else:
                letter, rule = pulse_extract_letter(row.text)
                if letter is None:
                    letter, rule = rng.choice(list(choices)), "fallback_random"
            rules.append(rule)
            pred.append(letter)
        body = _mcq_body(
            ids,
            gold,
            pred,
            rules,
            {"fallback_random": rules.count("fallback_random"), "reused_previous_prediction": reused},
        )
        _warn_reused(body, reused)
        return body
    # ecgqa
    correct, n_match0, gold_outside, from_gold, padded = 0, 0, 0, 0, 0
    per: dict[str, dict[str, int]] = {}
    rows_out: list[dict[str, Any]] = []
    prev: list[str] | None = None
    for item, row in pairs:
        prompt = row.prompt
        if prompt is None:
            prompt, from_gold = item.prompt, from_gold + 1
        cands = ecgqa_candidates(prompt)
        if not row.has_text and prev is not None:
            pred = list(prev)  # published: `predict` keeps the previous row's candidates
            ok = ecgqa_correct(pred, cands, item.answer, rule=options.ecgqa_rule)
            reused += 1
        else:
            ok, pred = pulse_ecgqa(row.text, cands, item.answer, rule=options.ecgqa_rule)
        prev = pred
        rows_out.append({"id": item.id, "pred": pred, "correct": ok})
        correct += int(ok)
        n_match0 += int(not pred)
        gold_opts = ecgqa_gold_options(item.answer, cands)
        raw_gold = pulse_ecgqa_gold(item.answer, cands)
        padded += int(any(g != g.strip() for g in raw_gold))
        gold_outside += int(not set(raw_gold) <= set(cands))
        key = "1 answer" if len(gold_opts) == 1 else f"{len(gold_opts)} answers"
        d = per.setdefault(key, {"n": 0, "correct": 0})
        d["n"] += 1
        d["correct"] += int(ok)
    body = {
        "n_scored": len(pairs),
        "metrics": {"Acc": pct(correct / len(pairs))},
        "per_class": dict(sorted(per.items())),
        "parse": {
            "rule": options.ecgqa_rule,
            "rows_matching_no_candidate": n_match0,
            "gold_not_among_candidates": gold_outside,
            "gold_with_padded_options": padded,
            "prompt_taken_from_gold": from_gold,
            "reused_previous_prediction": reused,
        },
        "items": rows_out,
        "warnings": [],
    }
    if padded and options.ecgqa_rule == "pulse":
        body["warnings"].append(
            f"{padded} gold answers hold options with leading/trailing spaces; pulse compares them as stored, as "
            "published, so they never equal a (stripped) candidate; strict strips them"
        )
    _warn_reused(body, reused)
    return body


def _warn_reused(body: dict[str, Any], reused: int) -> None:
    if reused:
        body.setdefault("warnings", []).append(
            f"{reused} rows have no text/response key and take the previous row's prediction, as published"
        )


def _score_strict(al: Alignment, subset: str, task: str) -> dict[str, Any]:
    mismatched = al.ids_with("prompt_mismatch")
    # every gold item counts: missing predictions and rows answering another prompt are scored as empty answers
    items: list[tuple[BenchItem, str, str]] = []  # (gold, text, status)
    for item, row in al.pairs:
        items.append((item, "", "prompt_mismatch") if item.id in mismatched else (item, row.text, "scored"))
    items.extend((item, "", "missing") for item in al.missing)
    status = Counter(s for _, _, s in items)
    if task == "multilabel":
        classes = strict_classes(subset)
        gold_sets, pred_sets = [], []
        by_code = by_name = split = 0
        for item, text, _ in items:
            g = strict_labels(item.answer_text, subset)
            gold_sets.append(g.labels)
            p = strict_labels(text, subset)
            pred_sets.append(p.labels)
            by_code += len(p.by_code)
            by_name += len(p.by_name)
            split += int(p.answer_split)
        m = strict_multilabel(gold_sets, pred_sets, classes=classes)
        parse = {
            "rows_without_label": sum(1 for p in pred_sets if not p),
            "label_hits_by_code": by_code,
            "label_hits_by_name": by_name,
            "answer_split": split,
            "counted_wrong": {"missing": status["missing"], "prompt_mismatch": status["prompt_mismatch"]},
        }
        return _multilabel_body(m, parse, "strict", [i.id for i, _, _ in items], gold_sets, pred_sets)
    if task == "mcq":
        letters = MCQ_LETTERS[subset]
        ids, gold, pred, rules = [], [], [], []
        for item, text, st in items:
            ids.append(item.id)
            g, _ = strict_extract_letter(item.answer_text, item.prompt, letters)
            if g is None:
                first = item.answer_text.strip()[:1]
                if first not in letters:
                    raise EvalInputError(f"{subset}: gold answer of {item.id!r} names no option letter")
                g = first
            gold.append(g)
            if st != "scored":
                letter, rule = None, st
            else:
                letter, rule = strict_extract_letter(text, item.prompt, letters)
            rules.append(rule)
            pred.append(letter)
        unparsable = sum(1 for p in pred if p is None)
        return _mcq_body(ids, gold, pred, rules, {"counted_wrong_unparsed": unparsable})
    correct = 0
    per: dict[str, dict[str, int]] = {}
    n_match0 = 0
    rows_out: list[dict[str, Any]] = []
    for item, text, _ in items:
        cands = ecgqa_candidates(item.prompt)
        ok, pred = strict_ecgqa(text, cands, item.answer)
        rows_out.append({"id": item.id, "pred": pred, "correct": ok})
        correct += int(ok)
        n_match0 += int(not pred)
        n_gold = len(ecgqa_gold_options(item.answer, cands))
        key = "1 answer" if n_gold == 1 else f"{n_gold} answers"
        d = per.setdefault(key, {"n": 0, "correct": 0})
        d["n"] += 1
        d["correct"] += int(ok)
    return {
        "n_scored": len(items),
        "metrics": {"Acc": pct(correct / len(items))},
        "per_class": dict(sorted(per.items())),
        "parse": {
            "rows_matching_no_candidate": n_match0,
            "counted_wrong": {"missing": status["missing"], "prompt_mismatch": status["prompt_mismatch"]},
        },
        "items": rows_out,
    }
