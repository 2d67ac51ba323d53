r"""Label-space distillation: the teacher's distribution over a label-set question's answers, no vocabulary map.

For a sample whose question is a label-set question (:mod:`evl_ecg.data.label_sets`: the PTB-XL superclass,
CODE-15% and CPSC-2018 questions, about 38 % of the training mix, and every pool question of a label budget), each
model scores the same ``K`` candidate answers in its own tokenizer: one answer naming each label alone, then the
answers naming none. With :math:`\ell(y_k \mid x)` the summed teacher-forced log-probability of candidate
:math:`y_k` (:meth:`~evl_ecg.models.base.Adapter.candidate_logliks`), each model's distribution over the set is

.. math::

    p_k(x) = \frac{\exp(\ell(y_k \mid x) / \tau)}{\sum_{k'} \exp(\ell(y_{k'} \mid x) / \tau)},

the model's own probability of giving answer :math:`k` among these (at :math:`\tau = 1`, exactly what evaluation's
``--likelihood-normalization softmax`` reads as label probabilities). The loss is

.. math::

    \mathcal{L}_{\text{label}} = \frac{\tau^2}{|S|} \sum_{x \in S} \mathrm{KL}\big(p^T(x) \,\|\, p^S(x)\big),

over the samples :math:`S` that have a label set (unit ``label_sets``: counted over the whole accumulated batch);
samples without one add nothing. Gradients reach the student through every candidate's tokens.

Why a KL over the normalised set and not a per-label binary KL: a per-label probability needs a reference answer
to compare each label's answer with (the null answer: evaluation's default ``null`` reading), and a model that
rarely gives the null answer puts every label near 1 (docs/eval.md, "Label likelihood"), so a binary KL between
two such readings would carry the null answer's likelihood rather than the teacher's ranking of the labels. The
set's softmax needs no reference, sums to one, and keeps what the teacher's greedy answer throws away: how much
mass it puts on each alternative. A multi-label answer ("MI; CD") is not a candidate, so a teacher sure of two
labels splits its mass between them; the loss transfers that split, as evaluation reads it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    Unit,
    register,
    register_unit,
)
from evl_ecg.outputs import SideOutputs


def _label_samples(batch: Any, positions: Tensor) -> int:
    return sum(entry is not None for entry in (batch.get("label_sets") or []))


register_unit(Unit("label_sets", _label_samples, help="samples whose question has a label set (label-space losses)"))


@register("label_kd")
class LabelSpaceKD(DistillLoss):
    """KL(teacher || student) over the candidate answers of each sample's label-set question (module docstring).

    Args:
        temperature: :math:`\\tau` (both sides' log-likelihoods are divided by it; the loss is scaled by
            :math:`\\tau^2`, as Hinton et al. 2015).
    """

    requires = frozenset({"label_logliks"})
    unit = "label_sets"
    teacher_fields = frozenset({"label_logliks"})

    def __init__(self, context: LossContext | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"label_kd: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        if teacher is None:
            raise ValueError("label_kd needs the teacher's outputs")
        for name, side in (("student", student), ("teacher", teacher)):
            if side.label_logliks is None or side.label_mask is None:
                raise ValueError(f"label_kd needs the {name}'s label_logliks (a batch with label sets)")
        mask = student.label_mask
        if tuple(teacher.label_mask.shape) != tuple(mask.shape) or not torch.equal(teacher.label_mask.to(mask), mask):
            raise ValueError(
                f"label_kd: the teacher scored other candidates than the student ({tuple(teacher.label_mask.shape)} "
                f"against {tuple(mask.shape)}): both sides must encode the same label sets"
            )
        rows = mask.any(dim=1)
        if not bool(rows.any()):  # no sample of this batch asks a label-set question: zero, kept in the graph
            zero = student.label_logliks.sum() * 0.0
            return LossOutput(loss=zero, logs={"samples": zero.detach(), "agreement": zero.detach()})
        s = student.label_logliks.float() / self.temperature
        t = teacher.label_logliks.to(s).detach() / self.temperature
        absent = ~mask & rows.unsqueeze(-1)  # a sample without a label set stays finite (and is masked below)
        log_q = F.log_softmax(s.masked_fill(absent, float("-inf")), dim=-1)
        log_p = F.log_softmax(t.masked_fill(absent, float("-inf")), dim=-1)
        terms = (log_p.exp() * (log_p - log_q)).masked_fill(~mask, 0.0)
        kl = terms.sum(dim=-1).masked_fill(~rows, 0.0)
        local = rows.sum()
        n = denominators.get(self.unit, local) if denominators is not None else local.clamp_min(1)
        loss = self.temperature**2 * kl.sum() / n
        agree = (log_p.argmax(-1) == log_q.argmax(-1)) & rows
        logs = {"samples": local.float(), "agreement": agree.sum().float() / local.clamp_min(1).float()}
        return LossOutput(loss=loss, logs=logs)


__all__ = ["LabelSpaceKD"]
