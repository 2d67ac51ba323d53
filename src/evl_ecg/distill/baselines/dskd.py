r"""DSKD with cross-model attention (Zhang et al., EMNLP 2024, arXiv 2406.17328), the cross-tokenizer variant.

Official code: ``songmzhang/DSKD`` ``code/criterions/dual_space_kd_with_cross_model_attention.py``
(``reference/kd-baselines.md`` section 1.5).

.. math::

    Q = W_q [e_s(x); e_s(y)], \quad K = \frac{[e_t(x); e_t(y)]}{\mathrm{std}}, \quad
    A = \frac{Q K^\top}{\sqrt{2 D_t}} + \log(m_s m_t^\top)

    \tilde H_{t \to s} = \mathrm{softmax}_{row}(A)\, W_{t2s}\Big(\frac{H_t}{\mathrm{std}(H_t)}
        + \frac{e_t(y)}{\mathrm{std}(e_t(y))}\Big), \qquad z_{t2s} = \tilde H_{t \to s}\, \mathrm{sg}(W^{lm}_s)^\top

    \tilde H_{s \to t} = \mathrm{softmax}_{col}(A)^\top W_{s2t} H_s, \qquad z_{s2t} = \tilde H_{s \to t}\,
        \mathrm{sg}(W^{lm}_t)^\top

    KD = \sum_{i \in M_s} \mathrm{CE}(z_{t2s,i}, y_i)
       + \sum_{i \in M_s} 1[\arg\max z_{t2s,i} = y_i]\, \mathrm{KL}\big(p(\mathrm{sg}(z_{t2s,i}) / (T T_{tea}))
            \,\|\, p(z_{s,i} / T)\big)
       + \sum_{j \in M_t} \mathrm{KL}\big(p(z_{t,j} / T) \,\|\, p(z_{s2t,j} / T)\big)

``x``: input ids, ``y``: next-token targets (ids outside the vocabulary, ignored targets and padding -> id 0, as the
code), ``e``: each side's input-embedding table (detached); ``m_s``, ``m_t``: the next-token (label) masks, so only
response rows take part; ``W_q: 2 D_s -> 2 D_t``, ``W_t2s: D_t -> D_s``, ``W_s2t: D_s -> D_t`` (with bias) are this
loss's submodules (projector learning-rate group). Forward KL with temperature and **no T²** (DSKD). The sum is divided
by ``Denominators.response_tokens`` (the code divides the whole ``KD`` by the student's label-token count). Stds are
scalars over the teacher's valid (non-padding) positions (the code: over the whole padded tensor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evl_ecg.distill.baselines._common import (
    denominator,
    kl_rows,
    masked_std,
    need_fields,
    need_teacher,
    no_autocast,
)
from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    next_token_targets,
    register,
)
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs, compute_dtype

_FIELDS = ("input_ids", "embedding_weight", "lm_head_weight")


def _index_embeddings(side: SideOutputs, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(e(x), e(y), row mask)``: detached input embeddings of the input ids and next-token targets, ``B x L x D``."""
    weight = side.embedding_weight.detach().to(dtype)
    v = weight.shape[0]
    targets, mask = next_token_targets(side)
    ids = torch.where(side.attention_mask & (side.input_ids >= 0) & (side.input_ids < v), side.input_ids, 0)
    tgt = torch.where(mask & (targets != IGNORE_INDEX) & (targets < v), targets, 0)
    return F.embedding(ids, weight), F.embedding(tgt, weight), mask


@register("dskd")
class DSKDLoss(DistillLoss):
    """DSKD-CMA: dual-space KD through cross-model attention over response tokens.

    Options:
        temperature: ``T`` (2.0, the scripts' ``KD_TEMP``); teacher_temperature: ``T_tea`` (1.0, ``use_tea_temp``).
        bias: biases of the three projectors (True, ``nn.Linear``'s default as in ``projector_config.json``).

    Logs: ``loss``, ``t2s_ce``, ``t2s_kd``, ``s2t_kd`` (each divided like the loss), ``t2s_acc``, ``s2t_acc``
    (fraction of supervised rows where the projected logits' argmax is the target).
    """

    unit = "response_tokens"
    teacher_fields = frozenset({"hidden", "logits", "embedding_weight", "lm_head_weight"})
    requires = frozenset(_FIELDS)

    def __init__(
        self, *, context: LossContext, temperature: float = 2.0, teacher_temperature: float = 1.0, bias: bool = True
    ) -> None:
        super().__init__()
        context.need("student_hidden", "teacher_hidden", loss="dskd")
        d_s, d_t = int(context.student_hidden), int(context.teacher_hidden)
        self.temperature = float(temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.query = nn.Linear(2 * d_s, 2 * d_t, bias=bias)
        self.t2s = nn.Linear(d_t, d_s, bias=bias)
        self.s2t = nn.Linear(d_s, d_t, bias=bias)
        self.d_t = d_t

    def extra_repr(self) -> str:
        return f"T={self.temperature}, T_tea={self.teacher_temperature}"

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        need_fields(student, _FIELDS, self.name, "student")
        need_fields(teacher, _FIELDS, self.name, "teacher")
        dtype = compute_dtype(student.hidden)
        with no_autocast(student.hidden):
            ex_s, ey_s, m_s = _index_embeddings(student, dtype)
            ex_t, ey_t, m_t = _index_embeddings(teacher, dtype)
            valid_t = teacher.attention_mask
            idx_t = torch.cat([ex_t, ey_t], dim=-1)
            idx_t = idx_t / masked_std(idx_t, valid_t)
            ey_t = ey_t / masked_std(ey_t, valid_t)
            h_t = teacher.hidden.detach().to(dtype)
            h_t = torch.where(valid_t[..., None], h_t, torch.zeros((), dtype=dtype, device=h_t.device))
            h_t = h_t / masked_std(h_t, valid_t)
            h_s = student.hidden.to(dtype)
            h_s = torch.where(student.attention_mask[..., None], h_s, torch.zeros((), dtype=dtype, device=h_s.device))

            q = self.query(torch.cat([ex_s, ey_s], dim=-1).to(self.query.weight.dtype)).to(dtype)
            scores = q @ idx_t.transpose(1, 2) / math.sqrt(2 * self.d_t)  # B x L_s x L_t
            pair = m_s[:, :, None] & m_t[:, None, :]
            neg = torch.tensor(torch.finfo(dtype).min / 2, dtype=dtype, device=scores.device)
            scores = torch.where(pair, scores, neg)

            # teacher -> student space
            v_t = self.t2s((h_t + ey_t).to(self.t2s.weight.dtype)).to(dtype)
            t2s_h = F.softmax(scores, dim=-1) @ v_t  # B x L_s x D_s
            t2s_logits = t2s_h[m_s] @ student.lm_head_weight.detach().to(dtype).t()  # P_s x V_s
            targets_s, _ = next_token_targets(student)
            y_s = targets_s[m_s]
            t2s_ce = F.cross_entropy(t2s_logits, y_s, reduction="sum")
            t2s_hit = t2s_logits.argmax(-1) == y_s
            t = self.temperature
            log_p_tea = F.log_softmax(t2s_logits.detach() / (t * self.teacher_temperature), dim=-1)
            log_p_stu = F.log_softmax(student.logits[m_s].to(dtype) / t, dim=-1)
            t2s_kd = torch.where(t2s_hit, kl_rows(log_p_tea, log_p_stu), neg.new_zeros(())).sum()

            # student -> teacher space
            v_s = self.s2t(h_s.to(self.s2t.weight.dtype)).to(dtype)
            s2t_h = F.softmax(scores, dim=1).transpose(1, 2) @ v_s  # B x L_t x D_t
            s2t_logits = s2t_h[m_t] @ teacher.lm_head_weight.detach().to(dtype).t()  # P_t x V_t
            log_z_t = F.log_softmax(teacher.logits.detach()[m_t].to(dtype) / t, dim=-1)
            log_s2t = F.log_softmax(s2t_logits / t, dim=-1)
            s2t_kd = kl_rows(log_z_t, log_s2t).sum()
            targets_t, _ = next_token_targets(teacher)
            s2t_hit = s2t_logits.argmax(-1) == targets_t[m_t]

            denom = denominator(denominators, self.unit, m_s.sum().to(torch.float32))
            loss = (t2s_ce + t2s_kd + s2t_kd) / denom
        logs = {
            "loss": loss.detach(),
            "t2s_ce": (t2s_ce / denom).detach(),
            "t2s_kd": (t2s_kd / denom).detach(),
            "s2t_kd": (s2t_kd / denom).detach(),
            "t2s_acc": t2s_hit.float().mean().detach() if t2s_hit.numel() else torch.zeros(()),
            "s2t_acc": s2t_hit.float().mean().detach() if s2t_hit.numel() else torch.zeros(()),
        }
        return LossOutput(loss=loss, logs=logs)
