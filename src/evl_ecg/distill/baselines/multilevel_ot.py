r"""MultiLevelOT (Cui et al., AAAI 2025, arXiv 2412.14528), as its code does it.

Official code: ``2018cx/Multi-Level-OT`` ``models/distillation_model.py::DistillationLoss`` at 712cfb49, fast variant
``--f 1`` (``reference/kd-baselines.md`` section 1.4). Per batch:

1. ``z <- z / (std_v(z) + 1e-4)`` (unbiased std over the vocabulary; the mean is not subtracted).
2. ``p = softmax(z / T)`` on each sample's answer rows, left-aligned, zero rows after each answer, ``R`` = the longest
   answer of the batch on either side.
3. "improved_sort": one permutation of each side's vocabulary for the whole batch, by ``sum_{b,r} p[b, r, v]``
   descending, keep the top ``k = 50`` columns: ``p~``.
4. Token level: ``l_b = mean_{r < n_b} sum_v |p~_s - p~_t|``, ``n_b = min(answer lengths of b)``.
5. "KL_wo": ``-mean_{b, r} sum_v softmax(p~_s) log softmax(p~_t)`` (a second softmax of probabilities; over all ``R``
   rows, padded zero rows included).
6. "Sinkhorn_seq" per sample: ``q = softmax(p~ / 2)``, ``C = cdist(q_t, q_s, p=1)`` (``R x R``), ``K = exp(-C / 0.1)``,
   10 times (divide by row sums, then by column sums), ``S_b = 0.001 sum P * C`` (plan not detached), summed over b.

.. math::  L = \frac{1}{N} \sum_b \ell_b + 0.1\, \mathrm{KL_{wo}} + 0.1 \sum_b S_b

``N``: ``Denominators.samples`` (local: samples with answer rows on both sides). The code's total is
``CE + 1.5 * (...)``; see ``BASELINE_PRESETS["multilevel-ot"]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evl_ecg.distill.baselines._common import (
    denominator,
    need_teacher,
    no_autocast,
    rank_positions,
    student_rows,
)
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype


def answer_probs(logits: Tensor, rows: Tensor, temperature: float, std_normalize: bool, dtype: torch.dtype) -> Tensor:
    """``B x R x V`` probabilities of the answer rows ``rows`` (``B x R``, ``-1`` = none; those rows are 0).

    Empty slots gather position 0 (padding under left padding, where junk or NaN logits are possible); they are
    zeroed *before* the normalisation and softmax, so that neither their values nor their gradients (0 there) can
    carry junk: a ``where`` after the softmax keeps the value but lets ``NaN * 0`` into the backward pass.
    """
    valid = rows >= 0
    b = torch.arange(rows.shape[0], device=rows.device)[:, None].expand_as(rows)
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    z = torch.where(valid[..., None], logits[b, rows.clamp_min(0)].to(dtype), zero)
    if std_normalize:
        z = z / (z.std(dim=-1, keepdim=True) + 1e-4)
    p = F.softmax(z / temperature, dim=-1)
    return torch.where(valid[..., None], p, torch.zeros((), dtype=dtype, device=p.device))


def improved_sort(p: Tensor, top_k: int) -> Tensor:
    """The columns of ``p`` (``B x R x V``) in descending order of their batch sums, the first ``top_k`` kept."""
    with torch.no_grad():
        order = torch.argsort(p.sum(dim=(0, 1)), descending=True, stable=True)[:top_k]
    return p.index_select(-1, order)


def sinkhorn_seq(q_t: Tensor, q_s: Tensor, epsilon: float = 0.1, n_iters: int = 10) -> Tensor:
    """The code's plain-domain Sinkhorn value ``sum P * C`` for one sample (``n_t x k``, ``n_s x k``), unscaled."""
    cost = torch.cdist(q_t, q_s, p=1)
    plan = torch.exp(-cost / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(dim=1, keepdim=True)
        plan = plan / plan.sum(dim=0, keepdim=True)
    return (plan * cost).sum()


@register("multilevel_ot")
class MultiLevelOTLoss(DistillLoss):
    """Token-level sorted L1 + double-softmax CE + sequence-level Sinkhorn on the top-50 batch-sorted probabilities.

    Options:
        faithful: True (default) reproduces the code's quirks: padded zero rows stay in ``KL_wo`` and the Sinkhorn
            (``masked=False``), and the Sinkhorn is summed over the batch (``sinkhorn_reduction="sum"``).
            False switches both fixes on (``masked=True``, ``sinkhorn_reduction="mean"``).
        masked: override: only real answer rows in ``KL_wo`` (rows ``r < n_b``) and in the Sinkhorn (each sample's
            own ``n_t x n_s`` cost matrix).
        sinkhorn_reduction: override: ``"sum"`` over samples (code) or ``"mean"``.
        student_temperature / teacher_temperature: the answer softmax temperatures (1.0).
        sinkhorn_temperature: the code hard-codes 2 (overriding its constructor's argument); kept as its own option.
        top_k (50), kl_weight (0.1), sinkhorn_weight (0.1), sinkhorn_epsilon (0.1), sinkhorn_iters (10).
        std_normalize: step 1 (True).
        skip_student_eos / skip_teacher_eos: as ULD (True / False).

    Rows are the next-token rows of the supervised tokens (the code's ``start = leading -100 count - 1``).
    Logs: ``loss``, ``token_l1``, ``kl_wo``, ``sinkhorn``.
    """

    unit = "samples"
    teacher_fields = frozenset({"logits"})

    def __init__(
        self,
        *,
        context: LossContext,
        faithful: bool = True,
        masked: bool | None = None,
        sinkhorn_reduction: str | None = None,
        student_temperature: float = 1.0,
        teacher_temperature: float = 1.0,
        sinkhorn_temperature: float = 2.0,
        top_k: int = 50,
        kl_weight: float = 0.1,
        sinkhorn_weight: float = 0.1,
        sinkhorn_epsilon: float = 0.1,
        sinkhorn_iters: int = 10,
        std_normalize: bool = True,
        skip_student_eos: bool = True,
        skip_teacher_eos: bool = False,
    ) -> None:
        super().__init__()
        self.faithful = bool(faithful)
        self.masked = (not self.faithful) if masked is None else bool(masked)
        reduction = ("sum" if self.faithful else "mean") if sinkhorn_reduction is None else sinkhorn_reduction
        if reduction not in ("sum", "mean"):
            raise ValueError(f"sinkhorn_reduction must be 'sum' or 'mean', got {reduction!r}")
        self.sinkhorn_reduction = reduction
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.sinkhorn_temperature = float(sinkhorn_temperature)
        self.top_k = int(top_k)
        self.kl_weight = float(kl_weight)
        self.sinkhorn_weight = float(sinkhorn_weight)
        self.sinkhorn_epsilon = float(sinkhorn_epsilon)
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.std_normalize = bool(std_normalize)
        self.skip_student_eos = bool(skip_student_eos)
        self.skip_teacher_eos = bool(skip_teacher_eos)

    def extra_repr(self) -> str:
        return f"faithful={self.faithful}, masked={self.masked}, sinkhorn_reduction={self.sinkhorn_reduction!r}"

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        rows_s = rank_positions(student_rows(student, "rows", self.skip_student_eos))
        rows_t = rank_positions(student_rows(teacher, "rows", self.skip_teacher_eos))
        r = max(rows_s.shape[1], rows_t.shape[1])
        rows_s = F.pad(rows_s, (0, r - rows_s.shape[1]), value=-1)
        rows_t = F.pad(rows_t, (0, r - rows_t.shape[1]), value=-1)
        n_s, n_t = (rows_s >= 0).sum(1), (rows_t >= 0).sum(1)
        n = torch.minimum(n_s, n_t)
        dtype = compute_dtype(student.logits)
        zero = torch.zeros((), dtype=dtype, device=student.logits.device)
        with no_autocast(student.logits):
            p_s = answer_probs(student.logits, rows_s, self.student_temperature, self.std_normalize, dtype)
            p_t = answer_probs(teacher.logits.detach(), rows_t, self.teacher_temperature, self.std_normalize, dtype)
            p_s, p_t = improved_sort(p_s, self.top_k), improved_sort(p_t, self.top_k)
            k = max(p_s.shape[-1], p_t.shape[-1])
            p_s, p_t = F.pad(p_s, (0, k - p_s.shape[-1])), F.pad(p_t, (0, k - p_t.shape[-1]))
            row_idx = torch.arange(r, device=n.device)
            both = row_idx[None, :] < n[:, None]  # B x R: rows compared token by token
            present = n > 0
            # 4. token level
            l1 = (p_s - p_t).abs().sum(-1)  # B x R
            per_sample = torch.where(both, l1, zero).sum(1) / n.clamp_min(1).to(dtype)
            count = present.sum().to(torch.float32)
            samples = denominator(denominators, self.unit, count)
            token = per_sample.sum() / samples
            # 5. KL_wo: a mean over each sample's rows, then a sum over samples divided by the global sample count
            # (the code's mean over B x R rows is that on one batch; a local mean would grow with accumulation)
            ce = -(F.softmax(p_s, dim=-1) * F.log_softmax(p_t, dim=-1)).sum(-1)  # B x R
            if self.masked:
                kl_per_sample = torch.where(both, ce, zero).sum(1) / n.clamp_min(1).to(dtype)
                kl_wo = kl_per_sample.sum() / samples
            else:
                kl_per_sample = ce.mean(1) if r else ce.sum(1)
                kl_wo = kl_per_sample.sum() / denominator(denominators, self.unit, float(ce.shape[0]))
            # 6. Sinkhorn_seq
            q_s = F.softmax(p_s / self.sinkhorn_temperature, dim=-1)
            q_t = F.softmax(p_t / self.sinkhorn_temperature, dim=-1)
            values = []
            for b in range(q_s.shape[0]):
                if not bool(present[b]):
                    continue
                if self.masked:
                    x, y = q_t[b, : int(n_t[b])], q_s[b, : int(n_s[b])]
                else:
                    x, y = q_t[b], q_s[b]
                values.append(0.001 * sinkhorn_seq(x, y, self.sinkhorn_epsilon, self.sinkhorn_iters))
            sink = torch.stack(values).sum() if values else zero
            if self.sinkhorn_reduction == "mean":
                sink = sink / samples
            loss = token + self.kl_weight * kl_wo + self.sinkhorn_weight * sink
        logs = {"loss": loss.detach(), "token_l1": token.detach(), "kl_wo": kl_wo.detach(), "sinkhorn": sink.detach()}
        return LossOutput(loss=loss, logs=logs)
