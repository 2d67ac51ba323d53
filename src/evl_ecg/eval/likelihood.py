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
``c`` as likely (per token) as naming nothing. The ROC-AUC is invariant to the sigmoid; the expected calibration
error (ECE) is not, and measures how far this reading of the model is from the observed frequencies.

* :func:`label_scores`: ``(ids, probs N x C, gold N x C)``; ``C + 1`` teacher-forced forwards per record, batched.
* :func:`roc_auc_macro`: mean over classes of sklearn's ``roc_auc_score`` (a class whose gold column is constant
  has no AUC and is left out: a nan-safe mean; all-constant -> nan).
* :func:`expected_calibration_error`: ``sum_b n_b / n |acc_b - conf_b|`` over 10 equal-width bins of all
  ``N x C`` (record, class) probabilities.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evl_ecg.ecg.labels import LONG_NAMES, VOCABULARIES
from evl_ecg.eval.generate import _to_device, question_id

logger = logging.getLogger(__name__)

#: ECGBench's multi-label subsets and their label vocabularies (``evl_ecg.ecg.labels.VOCABULARIES``).
MULTI_LABEL_SUBSETS: dict[str, str] = {"ptb-test": "ptbxl", "code15-test": "code15", "cpsc-test": "cpsc"}
#: The null answer used when no record of the subset has an empty gold label set.
DEFAULT_NULL_ANSWER = "None of the listed options apply."
#: CODE-15%'s whole-answer classes (the gold answer is exactly one of them; no label of the six is present).
CODE15_WHOLE_ANSWERS = ("NORM", "ABNORMAL")


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _turn_value(turn: Any) -> Any:
    return turn.get("value") if isinstance(turn, Mapping) else getattr(turn, "value", None)


def gold_text(record: Any) -> str:
    """The first gpt turn's value as one string (lists joined with ``"; "``)."""
    convs = _get(record, "conversations") or []
    if len(convs) < 2:
        raise ValueError(f"record {question_id(record)!r} has no gold answer")
    value = _turn_value(convs[1])
    return "; ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


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


def _with_answer(record: Any, answer: str) -> dict[str, Any]:
    """A two-turn conversation: the record's first human turn and ``answer``."""
    convs = _get(record, "conversations")
    first = convs[0]
    value = _turn_value(first)
    if isinstance(value, (list, tuple)):
        value = "".join(map(str, value))
    return {
        "id": question_id(record),
        "image": _get(record, "image"),
        "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": answer}],
    }


@torch.no_grad()
def answer_loglik(adapter: Any, samples: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``B``: mean log-probability per supervised token of each encoded sample (teacher forcing, one batch).

    Uses :meth:`SideOutputs.next_token_targets`: the logits at ``l`` score the token at ``l + 1``.
    """
    device = next(adapter.model.parameters()).device
    batch = _to_device(adapter.collate(list(samples), padding_side="right"), device)
    out = adapter.forward(batch)
    targets, mask = out.next_token_targets()
    rows, cols = mask.nonzero(as_tuple=True)
    logp = F.log_softmax(out.logits[rows, cols].float(), dim=-1)
    tok = logp.gather(-1, targets[rows, cols].unsqueeze(-1)).squeeze(-1)
    total = torch.zeros(mask.shape[0], dtype=torch.float32, device=tok.device).index_add_(0, rows, tok)
    count = mask.sum(1).to(torch.float32)
    if bool((count == 0).any()):
        raise ValueError("a candidate answer has no supervised token")
    return (total / count).cpu()


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

    Returns:
        ``(ids, probs, gold)``: ``probs`` ``N x C`` float64 in (0, 1), ``gold`` ``N x C`` int 0/1.
    """
    classes = VOCABULARIES[vocabulary]
    style = answer_style or infer_answer_style(records, vocabulary)
    null = null_answer if null_answer is not None else infer_null_answer(records, vocabulary)
    candidates = [format_answer([c], vocabulary, style) for c in classes] + [null]
    n_cand = len(candidates)
    adapter.model.eval()
    ids: list[str] = []
    gold_rows: list[list[int]] = []
    lls: list[torch.Tensor] = []
    pending: list[dict[str, torch.Tensor]] = []
    pending_scores: list[torch.Tensor] = []
    failures = failed if failed is not None else []

    def flush() -> None:
        if pending:
            pending_scores.append(answer_loglik(adapter, pending))
            pending.clear()

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
            samples = [adapter.encode(_with_answer(record, answer), image, train=True) for answer in candidates]
        except Exception as exc:
            failures.append((qid, f"encode: {exc}"))
            logger.warning("record %r not scored: encode: %s", qid, exc)
            continue
        ids.append(qid)
        gold_rows.append([int(c in gold) for c in classes])
        for sample in samples:
            pending.append(sample)
            if len(pending) >= batch_size:
                flush()
    flush()
    if pending_scores:
        lls = torch.cat(pending_scores).double().reshape(len(ids), n_cand)
        probs = torch.sigmoid(lls[:, :-1] - lls[:, -1:]).numpy()
    else:
        probs = np.zeros((0, len(classes)))
    gold_arr = np.asarray(gold_rows, dtype=np.int64).reshape(len(ids), len(classes))
    return ids, probs, gold_arr


def roc_auc_per_class(gold: np.ndarray, scores: np.ndarray) -> list[float]:
    """sklearn ``roc_auc_score`` per class column; ``nan`` where the gold column has a single value."""
    from sklearn.metrics import roc_auc_score

    gold, scores = np.asarray(gold), np.asarray(scores, dtype=np.float64)
    if gold.shape != scores.shape or gold.ndim != 2:
        raise ValueError(f"gold and scores must both be N x C, got {gold.shape} and {scores.shape}")
    out = []
    for c in range(gold.shape[1]):
        col = gold[:, c]
        out.append(float(roc_auc_score(col, scores[:, c])) if len(np.unique(col)) == 2 else math.nan)
    return out


def roc_auc_macro(gold: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC: nan-safe mean of :func:`roc_auc_per_class` (``nan`` if no class has both gold values)."""
    per = [a for a in roc_auc_per_class(gold, scores) if not math.isnan(a)]
    return float(np.mean(per)) if per else math.nan


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


def vocabulary_of(subset: str) -> str | None:
    """The label vocabulary of a multi-label ECGBench subset name, ``None`` for other subsets."""
    return MULTI_LABEL_SUBSETS.get(subset)
