r"""ULD, Universal Logit Distillation (Boizard et al., TMLR 2025, arXiv 2402.12030): sorted-probability L1.

Official code: ``Nicolas-BZRD/llm-recipes`` ``models/distillation_model.py::DistillationLoss``
(``reference/kd-baselines.md`` section 1.3).

.. math::

    \ell_b = \frac{1}{|A_b|} \sum_{(i, j) \in A_b} \sum_{k=1}^{\max(V_s, V_t)}
        \big| \mathrm{sort}_\downarrow(p_s^{(b,i)})_k - \mathrm{sort}_\downarrow(p_t^{(b,j)})_k \big|,
    \qquad L_{ULD} = \frac{1}{N} \sum_b \ell_b

``p_s = softmax(z_s / T_s)`` and ``p_t = softmax(z_t / T_t)`` over each side's full vocabulary (fp32), each row sorted
in descending order and the smaller vocabulary zero-padded to the larger; ``A_b``: the aligned response rows of sample
``b`` (``align="index"``: the official truncation of both answers to the shorter, no token alignment;
``align="offsets"``: GOLD-like byte alignment, rows whose predicted tokens start at the same answer byte);
``N``: ``Denominators.samples`` (local: samples with at least one aligned row). Sorting makes the loss invariant
under any permutation of either vocabulary, so no vocabulary map is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evl_ecg.distill.baselines._common import (
    ALIGNMENTS,
    align,
    check_choice,
    denominator,
    need_teacher,
    no_autocast,
)
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype


def sorted_l1(p_s: Tensor, p_t: Tensor) -> Tensor:
    """``sum_k |sort(p_s)_k - sort(p_t)_k|`` per row (``P x V_s``, ``P x V_t``), the shorter zero-padded: ``P``."""
    s = p_s.sort(dim=-1, descending=True).values
    t = p_t.sort(dim=-1, descending=True).values
    v = max(s.shape[-1], t.shape[-1])
    s = F.pad(s, (0, v - s.shape[-1]))
    t = F.pad(t, (0, v - t.shape[-1]))
    return (s - t).abs().sum(-1)


@register("uld")
class ULDLoss(DistillLoss):
    """Sorted-probability L1 between aligned student and teacher response rows (per-sample mean, batch mean).

    Options:
        student_temperature / teacher_temperature: ``T_s``, ``T_t`` (1.0, 1.0 as the official defaults).
        skip_student_eos: drop the student's row predicting the end token of each answer (True, as the official
            training script ``train/train_utils.py``); the teacher's is kept.
        skip_teacher_eos: drop the teacher's (False, official).
        align: ``"index"`` (official truncation) or ``"offsets"`` (GOLD-like byte alignment: rows are paired, not
            merged; unpaired rows are left out).

    Rows are the next-token rows of the supervised tokens (the official ``start = leading -100 count - 1``; for a
    multi-turn conversation only the supervised rows, where the official code takes one contiguous span).
    Logs: ``loss``, ``pairs``, ``samples``.
    """

    unit = "samples"
    teacher_fields = frozenset({"logits"})

    def __init__(
        self,
        *,
        context: LossContext,
        student_temperature: float = 1.0,
        teacher_temperature: float = 1.0,
        skip_student_eos: bool = True,
        skip_teacher_eos: bool = False,
        align: str = "index",
    ) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.skip_student_eos = bool(skip_student_eos)
        self.skip_teacher_eos = bool(skip_teacher_eos)
        self.align = check_choice("align", align, ALIGNMENTS)
        self.requires = frozenset({"token_offsets"}) if align == "offsets" else frozenset()

    def extra_repr(self) -> str:
        return (
            f"T_s={self.student_temperature}, T_t={self.teacher_temperature}, align={self.align!r}, "
            f"skip_student_eos={self.skip_student_eos}"
        )

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        pairs = align(student, teacher, self.align, "rows", self.skip_student_eos, self.skip_teacher_eos)
        b = student.batch_size
        z_s = student.logits[pairs.batch, pairs.student]
        z_t = teacher.logits.detach()[pairs.batch, pairs.teacher]
        dtype = compute_dtype(z_s)
        with no_autocast(z_s):
            p_s = F.softmax(z_s.to(dtype) / self.student_temperature, dim=-1)
            p_t = F.softmax(z_t.to(dtype) / self.teacher_temperature, dim=-1)
            rows = sorted_l1(p_s, p_t)  # P
            counts = pairs.per_sample_counts(b).to(dtype)
            per_sample = torch.zeros(b, dtype=dtype, device=rows.device).index_add(0, pairs.batch, rows)
            per_sample = per_sample / counts.clamp_min(1)
            present = (counts > 0).sum().to(torch.float32)
            loss = per_sample.sum() / denominator(denominators, self.unit, present)
        return LossOutput(loss=loss, logs={"loss": loss.detach(), "pairs": float(len(pairs)), "samples": present})
