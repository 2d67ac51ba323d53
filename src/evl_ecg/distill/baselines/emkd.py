r"""EM-KD (Feng, Yang, Duan, Yang, Wang; arXiv 2511.21106): matched vision tokens, VSD and VLAD.

No official code (``reference/kd-baselines.md`` section 1.6); this follows the paper as reported. Per sample ``b``,
with ``v_s`` (``n_s``) and ``v_t`` (``n_t``) the last-layer hidden states at each side's image positions
(``hidden[b, image_positions[b, n]]``):

1. **Vision token matching** (no gradient): a Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a
   ``n_s x n_t`` cost gives ``min(n_s, n_t)`` pairs ``(i, pi(i))``.
   ``match="hidden"`` (default): ``C_ij = || norm(W_v v_s,i) - norm(v_t,j) ||_p`` (``p=1`` default, the paper's
   Manhattan; ``W_v: D_s -> D_t`` is this loss's learned projection). ``match="logits"`` (the paper's choice):
   each side decodes its vision states through its own LM head, restricted to the shared string vocabulary
   (:mod:`.vocab_map`) and softmaxed there; ``C_ij = || p_s,i - p_t,j ||_1``.
2. **VSD**: reverse KL between the matched vision-token distributions,
   ``L_vsd = (1/N) sum_b (1/|pi_b|) sum_i KL(q_s,i || q_t,pi(i))``, ``N`` = ``Denominators.samples`` (local ``B``).
   ``vsd_space="teacher_head"`` (default): ``q_s = softmax(W_t^{lm} W_v v_s / T)``, ``q_t = softmax(W_t^{lm} v_t / T)``
   over the teacher's vocabulary (teacher head detached; DSKD-style projection into the teacher's space).
   ``vsd_space="mapped"``: each side's own head on the shared vocabulary.
3. **VLAD**: ``A_s[k, j] = cos(v_s,k, h_s,j)`` and ``A_t[k, j] = cos(v_t,pi(k), h_t,j)`` between each matched vision
   token and each response token ``j`` (response tokens aligned by index, truncated to the shorter), for each side in
   its own space (cosine needs no projection); ``L_vlad = (1/N) sum_b mean SmoothL1(A_s, A_t)`` (beta 1, element
   mean per sample). A sample without vision tokens (or response pairs) adds 0 to VSD (VLAD) and counts in ``N``.
4. Optional ``L_rld``: reverse KL ``KL(p_s || p_t)`` at ``T`` on index-aligned response rows over the shared vocabulary,
   divided by ``Denominators.response_tokens``.

.. math::  L_{EMKD} = \beta L_{vsd} + \gamma L_{vlad} + w_{rld} L_{rld}, \qquad \beta = 0.25,\ \gamma = 25

The paper's total ``alpha L_sup + (1 - alpha) L_rld + beta L_vsd + gamma L_vlad`` (alpha 0.5) is
``BASELINE_PRESETS["emkd"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from evl_ecg.distill.baselines._common import (
    align,
    check_choice,
    denominator,
    kl_rows,
    need_fields,
    need_teacher,
    no_autocast,
    student_rows,
)
from evl_ecg.distill.baselines.vocab_map import VocabMapCache
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype


def hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one pairs ``(rows, cols)`` of a ``n x m`` cost (``min(n, m)`` pairs; no gradient)."""
    r, c = linear_sum_assignment(cost.detach().to(torch.float64).cpu().numpy())
    return (
        torch.as_tensor(np.asarray(r), dtype=torch.long, device=cost.device),
        torch.as_tensor(np.asarray(c), dtype=torch.long, device=cost.device),
    )


def _vision_states(side: SideOutputs, b: int, dtype: torch.dtype) -> Tensor:
    pos = side.image_positions[b]
    ok = pos >= 0
    if side.visual_mask is not None and side.visual_mask.shape == side.image_positions.shape:
        ok = ok & side.visual_mask[b]
    pos = pos[ok]
    pos = pos[side.attention_mask[b, pos]]
    return side.hidden[b, pos].to(dtype)


@register("emkd")
class EMKDLoss(DistillLoss):
    """Hungarian-matched vision tokens with reverse-KL VSD and SmoothL1 vision-language affinity (VLAD).

    Options:
        match: ``"hidden"`` (default) or ``"logits"`` (needs the vocabularies); match_metric: ``"l1"`` (default) or
            ``"l2"`` (``match="hidden"`` only).
        vsd_space: ``"teacher_head"`` (default) or ``"mapped"``.
        temperature: ``T`` of VSD and RLD (1.0).
        vsd_weight (0.25), vlad_weight (25.0), rld_weight (0.0: off; the paper's total uses it, see the preset).
        normalize / special_pairs: the vocabulary map (:mod:`.vocab_map`), used by ``match="logits"``,
            ``vsd_space="mapped"`` and RLD.

    Logs: ``loss``, ``vsd``, ``vlad``, ``rld``, ``matched`` (pairs), ``match_cost`` (mean matched cost).
    """

    unit = "samples"
    requires = frozenset({"image_positions", "lm_head_weight"})

    @classmethod
    def teacher_reads(cls, options: dict[str, Any]) -> frozenset[str]:
        """The hidden states and the LM head; the logits too when RLD is on."""
        return frozenset({"hidden", "lm_head_weight"} | ({"logits"} if options.get("rld_weight", 0) else set()))

    def __init__(
        self,
        *,
        context: LossContext,
        match: str = "hidden",
        match_metric: str = "l1",
        vsd_space: str = "teacher_head",
        temperature: float = 1.0,
        vsd_weight: float = 0.25,
        vlad_weight: float = 25.0,
        rld_weight: float = 0.0,
        normalize: str = "space",
        special_pairs: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        context.need("student_hidden", "teacher_hidden", loss="emkd")
        self.match = check_choice("match", match, ("hidden", "logits"))
        self.match_metric = check_choice("match_metric", match_metric, ("l1", "l2"))
        self.vsd_space = check_choice("vsd_space", vsd_space, ("teacher_head", "mapped"))
        self.temperature = float(temperature)
        self.vsd_weight = float(vsd_weight)
        self.vlad_weight = float(vlad_weight)
        self.rld_weight = float(rld_weight)
        self.proj = nn.Linear(int(context.student_hidden), int(context.teacher_hidden), bias=False)
        self.uses_vocab = match == "logits" or vsd_space == "mapped" or rld_weight != 0
        self.vocab = VocabMapCache(
            context.student_vocab if self.uses_vocab else None,
            context.teacher_vocab if self.uses_vocab else None,
            normalize,
            special_pairs,
        )

    def extra_repr(self) -> str:
        return f"match={self.match!r}/{self.match_metric}, vsd_space={self.vsd_space!r}, T={self.temperature}"

    def _project(self, v: Tensor) -> Tensor:
        return self.proj(v.to(self.proj.weight.dtype)).to(v.dtype)

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        need_fields(student, ("image_positions", "lm_head_weight"), self.name, "student")
        need_fields(teacher, ("image_positions", "lm_head_weight"), self.name, "teacher")
        dtype = compute_dtype(student.hidden)
        t = self.temperature
        vmap = self.vocab.get(student.vocab, teacher.vocab, student.hidden.device) if self.uses_vocab else None
        w_s = student.lm_head_weight.detach().to(dtype)
        w_t = teacher.lm_head_weight.detach().to(dtype)
        if vmap is not None:
            w_s_m, w_t_m = w_s.index_select(0, vmap.student_ids), w_t.index_select(0, vmap.teacher_ids)
        text = align(student, teacher, "index", kind="tokens")
        zero = student.hidden.flatten()[:0].sum().to(dtype)  # 0, attached to the graph
        vsd_sum, vlad_sum, n_pairs, cost_sum = zero, zero, 0, 0.0
        with no_autocast(student.hidden):
            for b in range(student.batch_size):
                v_s, v_t = _vision_states(student, b, dtype), _vision_states(teacher, b, dtype).detach()
                if v_s.shape[0] == 0 or v_t.shape[0] == 0:
                    continue
                proj_s = self._project(v_s)
                with torch.no_grad():
                    if self.match == "hidden":
                        p = 1.0 if self.match_metric == "l1" else 2.0
                        cost = torch.cdist(F.normalize(proj_s, dim=-1), F.normalize(v_t, dim=-1), p=p)
                    else:
                        q_s = F.softmax(v_s @ w_s_m.t(), dim=-1)
                        q_t = F.softmax(v_t @ w_t_m.t(), dim=-1)
                        cost = torch.cdist(q_s, q_t, p=1.0)
                    rows, cols = hungarian(cost)
                    cost_sum += float(cost[rows, cols].sum())
                # VSD (reverse KL)
                if self.vsd_space == "teacher_head":
                    log_q_s = F.log_softmax(proj_s[rows] @ w_t.t() / t, dim=-1)
                    log_q_t = F.log_softmax(v_t[cols] @ w_t.t() / t, dim=-1)
                else:
                    log_q_s = F.log_softmax(v_s[rows] @ w_s_m.t() / t, dim=-1)
                    log_q_t = F.log_softmax(v_t[cols] @ w_t_m.t() / t, dim=-1)
                vsd_sum = vsd_sum + kl_rows(log_q_s, log_q_t).sum() / rows.numel()  # mean over b's pairs
                n_pairs += int(rows.numel())
                # VLAD
                sel = text.batch == b
                if bool(sel.any()):
                    h_s = student.hidden[b, text.student[sel]].to(dtype)
                    h_t = teacher.hidden.detach()[b, text.teacher[sel]].to(dtype)
                    a_s = F.normalize(v_s[rows], dim=-1) @ F.normalize(h_s, dim=-1).t()
                    a_t = F.normalize(v_t[cols], dim=-1) @ F.normalize(h_t, dim=-1).t()
                    vlad_sum = vlad_sum + F.smooth_l1_loss(a_s, a_t, reduction="mean", beta=1.0)  # b's mean
            # per-sample means summed over samples, divided by the global sample count (a sample without vision
            # tokens or response pairs adds 0 and counts): a local mean would grow with accumulation and ranks
            samples = denominator(denominators, self.unit, float(student.batch_size))
            vsd = vsd_sum / samples
            vlad = vlad_sum / samples
            rld = zero
            if self.rld_weight != 0:
                rows_pairs = align(student, teacher, "index", kind="rows")
                z_s = student.logits[rows_pairs.batch, rows_pairs.student].to(dtype)
                z_t = teacher.logits.detach()[rows_pairs.batch, rows_pairs.teacher].to(dtype)
                log_p_s = F.log_softmax(z_s.index_select(-1, vmap.student_ids) / t, dim=-1)
                log_p_t = F.log_softmax(z_t.index_select(-1, vmap.teacher_ids) / t, dim=-1)
                local = student_rows(student, "rows").sum().to(torch.float32)
                rld = kl_rows(log_p_s, log_p_t).sum() / denominator(denominators, "response_tokens", local)
            loss = self.vsd_weight * vsd + self.vlad_weight * vlad + self.rld_weight * rld
        logs = {
            "loss": loss.detach(),
            "vsd": vsd.detach(),
            "vlad": vlad.detach(),
            "rld": rld.detach(),
            "matched": float(n_pairs),
            "match_cost": cost_sum / max(n_pairs, 1),
        }
        return LossOutput(loss=loss, logs=logs)
