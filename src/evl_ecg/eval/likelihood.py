r"""Label probabilities from teacher-forced answer likelihoods: a scored ROC-AUC and a calibration error.

ECGBench's "AUC" is computed on hard 0/1 labels parsed from generated text (``reference/ecgbench-scoring.md``
§2.3.1), which makes it a balanced accuracy at one operating point and says nothing about calibration (the paper's
stated limitation, SPEC §5). Here every label of a multi-label subset gets a *score* from the model itself.

For record ``x`` (image and question) and each label ``c`` of the vocabulary, the candidate answer ``y_c`` names
``c`` alone, in the subset's own gold format (``"AF"`` for CPSC, ``"AF(atrial fibrillation)"`` for CODE-15% /
PTB-XL style; :func:`infer_answer_style`). The null answer ``y_0`` is the subset's "nothing applies" gold text
(the most frequent gold answer of records without labels; :func:`infer_null_answer`). With the length-normalised
teacher-forced log-likelihood over the supervised answer tokens (the answer and its end token)

.. math::

    \bar\ell(y \mid x) = \frac{1}{|y|} \sum_{k=1}^{|y|} \log p_\theta(y_k \mid x, y_{<k}),

the label probability is the sigmoid of the log-likelihood ratio against the null answer,

.. math::

    p_c(x) = \sigma\big(\bar\ell(y_c \mid x) - \bar\ell(y_0 \mid x)\big),

i.e. a per-label two-way softmax over {"the answer is c", "nothing applies"}: 0.5 when the model finds naming
``c`` as likely (per token) as naming nothing (``normalization="null"``, the default). The ROC-AUC is invariant to
the sigmoid; the expected calibration error (ECE) is not, and measures how far this reading of the model is from the
observed frequencies.

Each label is compared with the null answer alone, never with the other labels, so a model that finds the null answer
unlikely (an answer it was rarely or never trained to give, such as :data:`DEFAULT_NULL_ANSWER` when no record of the
subset is empty) gives *every* label a probability near 1 on every record: the per-label ROC-AUC then ranks records
by tiny differences, and the ECE measures only the base rate. ``normalization="softmax"`` normalises over the
candidate set instead: with the summed (not length-normalised) log-likelihood :math:`\ell(y \mid x)` of each
candidate, the label answers and the no-label answers :math:`N` (the null answer; on CODE-15% both ``NORM`` and
``ABNORMAL``),

.. math::

    p_c(x) = \frac{\exp \ell(y_c \mid x)}{\sum_{c'} \exp \ell(y_{c'} \mid x) + \sum_{y \in N} \exp \ell(y \mid x)},

the model's own probability of answering "c" given that it gives one of these answers (a record's probabilities sum
to at most 1, so a record with two gold labels cannot have both above 0.5). :func:`degeneracy` flags probabilities
that say nothing (docs/eval.md, "Label likelihood").

* :func:`label_scores`: ``(ids, probs N x C, gold N x C)``; ``C + 1`` teacher-forced candidates per record
  (``C + 2`` on CODE-15% with ``softmax``), their shared prompt and image run once.
* :func:`label_probabilities`: the probabilities from the candidates' summed log-likelihoods and token counts.
* :func:`degeneracy`: whether any class's probabilities are all above 0.99, all below 0.01, or all equal.
* :func:`roc_auc_macro`: mean over classes of sklearn's ``roc_auc_score`` (a class whose gold column is constant
  has no AUC and is left out: a nan-safe mean; all-constant -> nan).
* :func:`expected_calibration_error`: ``sum_b n_b / n |acc_b - conf_b|`` over 10 equal-width bins of all
  ``N x C`` (record, class) probabilities.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from evl_ecg.data.label_sets import (  # noqa: F401 - re-exported: evaluation's names for them
    CODE15_WHOLE_ANSWERS,
    DEFAULT_NULL_ANSWER,
    candidate_answers,
    candidate_conversation,
    format_answer,
    gold_labels,
    gold_text,
    infer_answer_style,
    infer_null_answer,
    no_label_answers,
)
from evl_ecg.ecg.labels import VOCABULARIES
from evl_ecg.eval.generate import question_id
from evl_ecg.models.base import shared_prompt, summed_logliks

logger = logging.getLogger(__name__)

#: ECGBench's multi-label subsets and their label vocabularies (``evl_ecg.ecg.labels.VOCABULARIES``).
MULTI_LABEL_SUBSETS: dict[str, str] = {"ptb-test": "ptbxl", "code15-test": "code15", "cpsc-test": "cpsc"}
#: How :func:`label_probabilities` reads the candidates' log-likelihoods (module docstring), as ``scores.json`` says.
METHODS = {
    "null": "sigmoid(mean log p(answer naming the label) - mean log p(null answer)); see docs/eval.md",
    "softmax": "softmax of the summed log p over the label answers and the no-label answers; see docs/eval.md",
}
NORMALIZATIONS = tuple(METHODS)
#: :func:`degeneracy`: a class whose probabilities all lie above ``DEGENERATE_HIGH`` or all below ``DEGENERATE_LOW``,
#: or spread over less than ``DEGENERATE_SPREAD`` (max - min, two records or more), says nothing about the records.
DEGENERATE_HIGH = 0.99
DEGENERATE_LOW = 0.01
DEGENERATE_SPREAD = 1e-4


@torch.no_grad()
def answer_logliks(adapter: Any, samples: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total, count)``, each ``B``: summed log-probability of the supervised tokens of each encoded sample and
    their number (teacher forcing, one batch).

    Uses :meth:`SideOutputs.next_token_targets`: the logits at ``l`` score the token at ``l + 1``
    (:func:`~evl_ecg.models.base.summed_logliks`, which training's label-space loss also runs).
    """
    total, count = summed_logliks(adapter, samples)
    return total.cpu(), count.cpu()


def shared_prompt_logliks(
    adapter: Any, splits: Sequence[tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`answer_logliks` of several records' candidates, each record's shared prompt run once
    (:func:`~evl_ecg.models.base.shared_prompt` gives each ``(prompt, continuations, supervised)``), the prompts of one
    length batched (:meth:`~evl_ecg.models.base.Adapter.batch_continuation_logprobs`): ``(total, count)`` per record."""
    logps = adapter.batch_continuation_logprobs([s[0] for s in splits], [s[1] for s in splits])
    out = []
    for logp, (_, _, supervised) in zip(logps, splits, strict=True):
        total = torch.stack([(lp * m).sum() for lp, m in zip(logp, supervised, strict=True)]).float()
        out.append((total, torch.stack([m.sum() for m in supervised]).float()))
    return out


def answer_loglik(adapter: Any, samples: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``B``: mean log-probability per supervised token of each encoded sample (:func:`answer_logliks`)."""
    total, count = answer_logliks(adapter, samples)
    return total / count


def label_probabilities(
    total: np.ndarray | torch.Tensor, count: np.ndarray | torch.Tensor, n_classes: int, normalization: str = "null"
) -> np.ndarray:
    """``N x C`` label probabilities from the candidates' summed log-likelihoods and token counts (module docstring).

    ``total`` and ``count`` are ``N x K``: the ``C = n_classes`` label answers first, then the no-label answers, the
    null answer first. ``"null"``: ``sigmoid(total/count [label] - total/count [null])``; ``"softmax"``: the label
    answers' shares of ``softmax(total)`` over all ``K`` candidates.
    """
    total = torch.as_tensor(total, dtype=torch.float64)
    count = torch.as_tensor(count, dtype=torch.float64)
    if total.shape != count.shape or total.ndim != 2 or total.shape[1] <= n_classes:
        raise ValueError(f"total and count must both be N x K with K > {n_classes}, got {tuple(total.shape)}")
    if normalization == "null":
        mean = total / count
        return torch.sigmoid(mean[:, :n_classes] - mean[:, n_classes : n_classes + 1]).numpy()
    if normalization == "softmax":
        return torch.softmax(total, dim=1)[:, :n_classes].numpy()
    raise ValueError(f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")


def label_scores(
    adapter: Any,
    records: Sequence[Any],
    image_loader: Callable[[Any], Any],
    vocabulary: str,
    *,
    batch_size: int = 8,
    answer_style: str | None = None,
    null_answer: str | None = None,
    progress: bool = False,
    failed: list[tuple[str, str]] | None = None,
    normalization: str = "null",
    share_prompt: bool = True,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Label probabilities ``p_c(x)`` (module docstring) and gold labels of a multi-label subset.

    Args:
        adapter: a model adapter (:meth:`encode` + :meth:`forward`).
        records: the subset's records (gold answers carry label codes, or ``labels[vocabulary]``).
        image_loader: ``record -> PIL image``.
        vocabulary: ``ptbxl``, ``code15`` or ``cpsc`` (class order = ``VOCABULARIES[vocabulary]``).
        batch_size: candidate sequences per forward (each record has ``C + 1``).
        answer_style / null_answer: override :func:`infer_answer_style` / :func:`infer_null_answer`.
        progress: show a tqdm bar over records.
        failed: if given, ``(id, reason)`` of every record that could not be scored is appended (they are also
            logged and left out of the arrays).
        normalization: ``"null"`` (each label against the null answer, per token) or ``"softmax"`` (over the
            candidate answers, summed log-likelihoods); :func:`label_probabilities`.
        share_prompt: run each record's prompt (and image) once and score every candidate from its key/value cache,
            ``batch_size`` records' prompts per forward (:func:`shared_prompt_logliks`: the same numbers to float
            rounding; ``benchmarks/eval_cost.py``); ``False``: each candidate whole, ``batch_size`` per forward.

    Returns:
        ``(ids, probs, gold)``: ``probs`` ``N x C`` float64 in (0, 1), ``gold`` ``N x C`` int 0/1.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")
    classes = VOCABULARIES[vocabulary]
    style = answer_style or infer_answer_style(records, vocabulary)
    null = null_answer if null_answer is not None else infer_null_answer(records, vocabulary)
    candidates = candidate_answers(vocabulary, style, null, normalization)
    n_cand = len(candidates)
    adapter.model.eval()
    ids: list[str] = []
    gold_rows: list[list[int]] = []
    pending: list[dict[str, torch.Tensor]] = []
    pending_scores: list[tuple[torch.Tensor, torch.Tensor]] = []
    failures = failed if failed is not None else []

    shared: list[tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = []

    def flush() -> None:  # in record order: whichever buffer holds records holds the earliest
        if pending:
            pending_scores.append(answer_logliks(adapter, pending))
            pending.clear()
        if shared:
            pending_scores.extend(shared_prompt_logliks(adapter, shared))
            shared.clear()

    from tqdm.auto import tqdm

    for record in tqdm(records, disable=not progress, desc=f"likelihood {vocabulary}", unit="rec"):
        qid = question_id(record)
        try:
            gold = gold_labels(record, vocabulary)
        except ValueError as exc:
            failures.append((qid, f"gold: {exc}"))
            logger.warning("record %r not scored: %s", qid, exc)
            continue
        try:
            image = image_loader(record)
        except Exception as exc:  # a missing / unreadable image: report, never skip silently
            failures.append((qid, f"image: {exc}"))
            logger.warning("record %r not scored: image: %s", qid, exc)
            continue
        try:
            processed = adapter.process_image(image)  # once per record, not once per candidate
            samples = [
                adapter.encode(candidate_conversation(record, answer), image, train=True, processed=processed)
                for answer in candidates
            ]
        except Exception as exc:
            failures.append((qid, f"encode: {exc}"))
            logger.warning("record %r not scored: encode: %s", qid, exc)
            continue
        ids.append(qid)
        gold_rows.append([int(c in gold) for c in classes])
        split = shared_prompt(samples) if share_prompt else None
        if split is not None:  # batched with the next records' prompts; the candidates run whole go first
            if pending:
                flush()
            shared.append(split)
            if len(shared) >= batch_size:
                flush()
            continue
        if shared:
            flush()
        for sample in samples:
            pending.append(sample)
            if len(pending) >= batch_size:
                flush()
    flush()
    if pending_scores:
        total = torch.cat([t for t, _ in pending_scores]).double().reshape(len(ids), n_cand)
        count = torch.cat([n for _, n in pending_scores]).double().reshape(len(ids), n_cand)
        probs = label_probabilities(total, count, len(classes), normalization)
    else:
        probs = np.zeros((0, len(classes)))
    gold_arr = np.asarray(gold_rows, dtype=np.int64).reshape(len(ids), len(classes))
    return ids, probs, gold_arr


def expected_calibration_error(gold: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    r"""ECE over all (record, class) cells: :math:`\sum_b \frac{n_b}{n} |\bar y_b - \bar p_b|`.

    Equal-width bins ``[0, 1/n_bins), ..., [(n_bins-1)/n_bins, 1]`` (``p = 1`` falls in the last bin); ``y`` is
    the gold 0/1, ``p`` the predicted probability of the label being present; empty bins count zero.
    """
    y = np.asarray(gold, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"gold and probs differ in size: {np.shape(gold)} vs {np.shape(probs)}")
    if y.size == 0:
        return math.nan
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("probs must lie in [0, 1]")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.sum() / y.size * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def degeneracy(
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    high: float = DEGENERATE_HIGH,
    low: float = DEGENERATE_LOW,
    min_spread: float = DEGENERATE_SPREAD,
) -> dict[str, Any]:
    """Whether the probabilities of any class say nothing about the records.

    A class is degenerate when all its probabilities lie above ``high``, all below ``low``, or (two records or more)
    within ``min_spread`` of each other (``max - min < min_spread``). Its ROC-AUC then ranks records by rounding-level
    differences and the ECE measures the base rate, not the model. No records: not degenerate (there is no number).

    Returns ``{"degenerate": bool, "degenerate_reason": str | None, "degenerate_classes": {class: why}}`` (the keys of
    ``scores.json``'s ``likelihood`` section).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be N x {len(classes)}, got {probs.shape}")
    why: dict[str, str] = {}
    if probs.shape[0]:
        for c, col in zip(classes, probs.T, strict=True):
            lo, hi = float(col.min()), float(col.max())
            if lo > high:
                why[c] = f"all {col.size} above {high:g} (min {lo:.4f})"
            elif hi < low:
                why[c] = f"all {col.size} below {low:g} (max {hi:.4f})"
            elif col.size >= 2 and hi - lo < min_spread:
                why[c] = f"all {col.size} within {hi - lo:.1e} of each other (at {lo:.4f})"
    reason = None
    if why:
        listed = "; ".join(f"{c}: {w}" for c, w in why.items())
        reason = f"label probabilities are degenerate ({listed}): their ROC-AUC and ECE do not measure the model"
    return {"degenerate": bool(why), "degenerate_reason": reason, "degenerate_classes": why}


DAGGER = "\u2020"


def likelihood_table(likelihood: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of ``scores.json``'s ``likelihood`` section: subset, n, ROC-AUC, ECE, normalization.

    Numbers of a subset flagged ``degenerate`` carry a dagger and a footnote with the reason: they are not valid.
    """

    def fmt(value: Any, mark: str) -> str:
        return f"{value:.3f}{mark}" if isinstance(value, int | float) else "n/a"

    rows = ["| subset | n | ROC-AUC | ECE | normalization |", "|---|---:|---:|---:|---|"]
    notes = []
    for subset, doc in likelihood.items():
        mark = DAGGER if doc.get("degenerate") else ""
        if mark:
            notes.append(f"{DAGGER} {subset}: {doc.get('degenerate_reason') or 'degenerate probabilities'}.")
        auc, ece = fmt(doc.get("auc"), mark), fmt(doc.get("ece"), mark)
        rows.append(f"| {subset} | {doc.get('n')} | {auc} | {ece} | {doc.get('normalization', 'null')} |")
    return "\n".join(rows + ([""] + notes if notes else []))


def vocabulary_of(subset: str) -> str | None:
    """The label vocabulary of a multi-label ECGBench subset name, ``None`` for other subsets."""
    return MULTI_LABEL_SUBSETS.get(subset)
