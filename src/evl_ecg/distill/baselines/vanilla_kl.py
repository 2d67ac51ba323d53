r"""Vanilla KD (Hinton et al., 2015, arXiv 1503.02531): forward KL at temperature ``T`` with ``T²``, across tokenizers.

.. math::

    L_{KD} = \frac{T^2}{N} \sum_{(b, i, j) \in A} \mathrm{KL}\big(\tilde p_t^{(b,j)} \,\|\, \tilde p_s^{(b,i)}\big),
    \qquad \tilde p^{(b,l)} = \mathrm{softmax}\big(z^{(b,l)}_{[\mathcal V]} / T\big)

``z_s``, ``z_t``: student/teacher logits; ``V``: the shared sub-vocabulary (:mod:`.vocab_map`, string intersection),
each side's logits restricted to its ids of ``V`` and renormalised there; ``A``: aligned pairs of logit rows (student
row ``i``, teacher row ``j`` of sample ``b``; :func:`._common.align`); ``N``: ``Denominators.response_tokens`` (local:
the student's supervised rows, so rows left unpaired by the alignment contribute 0). fp32 softmax, teacher detached.

Convention (docs/baselines.md, "Vanilla KL"): forward KL(p_t || p_s), T² (torchdistill ``KDLoss``, DistillKit; DSKD and
TRL GKD omit T², see ``reference/kd-baselines.md`` section 1.1), global token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evl_ecg.distill.baselines._common import (
    ALIGNMENTS,
    align,
    check_choice,
    denominator,
    kl_rows,
    need_teacher,
    no_autocast,
    student_rows,
)
from evl_ecg.distill.baselines.vocab_map import VocabMapCache
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype


@register("vanilla_kl")
class VanillaKLLoss(DistillLoss):
    """Forward KL(p_t || p_s) at temperature ``T`` times ``T²`` on aligned response rows over the shared vocabulary.

    Options:
        temperature: ``T`` (default 2.0, DSKD's scripts' ``KD_TEMP``).
        align: ``"index"`` (i-th response row with i-th, truncated to the shorter) or ``"offsets"`` (rows whose
            predicted tokens start at the same answer byte; needs ``token_offsets``).
        normalize: vocabulary-string normalisation (``"none"``, ``"space"`` default, ``"bytes"``).
        special_pairs: extra ``{teacher string: student string}`` pairs (e.g. ``{"</s>": "<|im_end|>"}``).

    Logs: ``loss``, ``pairs`` (aligned rows), ``paired_fraction`` (of the student's supervised rows),
    ``coverage_mass`` (mean teacher probability at ``T`` on the mapped ids, before renormalisation),
    ``coverage_teacher_vocab`` / ``coverage_student_vocab`` (fractions of vocabulary entries mapped).
    """

    unit = "response_tokens"
    teacher_fields = frozenset({"logits"})

    def __init__(
        self,
        *,
        context: LossContext,
        temperature: float = 2.0,
        align: str = "index",
        normalize: str = "space",
        special_pairs: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.align = check_choice("align", align, ALIGNMENTS)
        self.requires = frozenset({"token_offsets"}) if align == "offsets" else frozenset()
        self.vocab = VocabMapCache(context.student_vocab, context.teacher_vocab, normalize, special_pairs)

    def extra_repr(self) -> str:
        return f"T={self.temperature}, align={self.align!r}, normalize={self.vocab.normalize!r}"

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        vmap = self.vocab.get(student.vocab, teacher.vocab, student.logits.device)
        vmap.check(student.logits.shape[-1], teacher.logits.shape[-1])
        pairs = align(student, teacher, self.align, kind="rows")
        local = student_rows(student, "rows").sum().to(torch.float32)
        z_s = student.logits[pairs.batch, pairs.student]  # P x V_s
        z_t = teacher.logits.detach()[pairs.batch, pairs.teacher]  # P x V_t
        dtype = compute_dtype(z_s)
        t = self.temperature
        with no_autocast(z_s):
            zt = z_t.to(dtype) / t
            log_pt = F.log_softmax(zt.index_select(-1, vmap.teacher_ids), dim=-1)
            log_ps = F.log_softmax(z_s.to(dtype).index_select(-1, vmap.student_ids) / t, dim=-1)
            total = (t * t) * kl_rows(log_pt, log_ps).sum()
            with torch.no_grad():
                mass = (torch.logsumexp(zt.index_select(-1, vmap.teacher_ids), -1) - torch.logsumexp(zt, -1)).exp()
        loss = total / denominator(denominators, self.unit, local)
        n = len(pairs)
        logs = {
            "loss": loss.detach(),
            "pairs": float(n),
            "paired_fraction": n / max(float(local), 1.0),
            "coverage_mass": mass.mean().detach() if n else torch.zeros(()),
            "coverage_teacher_vocab": vmap.coverage_teacher,
            "coverage_student_vocab": vmap.coverage_student,
        }
        return LossOutput(loss=loss, logs=logs)
