r"""TinyBERT (Jiao et al., Findings of EMNLP 2020, arXiv 1909.10351): hidden-state, attention and prediction losses.

Official code: ``huawei-noah/Pretrained-Language-Model`` ``TinyBERT/task_distill.py`` (``reference/kd-baselines.md``
section 1.2). Student layers ``m = 0..M`` (0 = embedding output), teacher layers ``0..N``:

.. math::

    g(m) = \lfloor m N / M + 1/2 \rfloor \quad (= m \cdot N/M \text{ when } M \mid N)

    L_{hidn} = \sum_{m=0}^{M} \frac{1}{n D_t} \sum \big(W_h H_s^m - \mathcal R(H_t^{g(m)})\big)^2, \qquad
    L_{att} = \sum_{m=1}^{M} \frac{1}{B} \sum_b \mathrm{MSE}\big(\bar A_s^{m}, \mathcal R(\bar A_t^{g(m)})\big)

    L_{pred} = \frac{1}{N_{tok}} \sum_{(i, j)} -\sum_{v \in \mathcal V} \tilde p_t^{(j)}(v) \log \tilde p_s^{(i)}(v)
        \quad (\text{at } T, \text{ no } T^2), \qquad L = L_{att} + L_{hidn} + w_{pred} L_{pred}

``W_h``: one learned ``Linear(D_s -> D_t)`` shared by every layer (TinyBERT's ``fit_dense``); ``Ā``: the attention
maps averaged over heads (student and teacher head counts differ); ``R``: the length alignment:

* ``hidden_align="interpolate"`` (default): per sample, the teacher's valid positions are resampled onto the student's
  valid positions by area interpolation (``adaptive_avg_pool1d``); ``n`` = ``Denominators.student_positions``
  (local: valid student positions).
* ``hidden_align="response"``: the response-token positions of both sides, index-aligned and truncated to the shorter;
  ``n`` = ``Denominators.response_tokens``.
* ``attention_align="pool"`` (default): per sample, the teacher's ``n_t x n_t`` map over its valid positions is
  resampled to the student's ``n_s x n_s`` by 2-D adaptive average pooling (``attention_size=S`` pools both to
  ``S x S`` instead). ``attention_align="response"``: the sub-maps between index-aligned response tokens.

Attention scores (``attention_kind="scores"``) have their masked entries (``<= -100``) set to 0 as the code does;
our adapters give probabilities (eager attention), on which the MSE runs as is. ``V``: the shared string vocabulary
(:mod:`.vocab_map`) for the prediction layer, rows index-aligned.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evl_ecg.distill.baselines._common import (
    align,
    check_choice,
    denominator,
    need_fields,
    need_teacher,
    no_autocast,
    student_rows,
)
from evl_ecg.distill.baselines.vocab_map import VocabMapCache
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """``g(m) = floor(m N / M + 1/2)`` for ``m = 0..M`` (TinyBERT's ``m * k`` when ``M`` divides ``N``)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("layer counts must be >= 1")
    return [(2 * m * teacher_layers + student_layers) // (2 * student_layers) for m in range(student_layers + 1)]


def _resample_rows(x: Tensor, n: int) -> Tensor:
    """``x`` (``L x D``) resampled to ``n x D`` by area interpolation."""
    if x.shape[0] == n:
        return x
    return F.adaptive_avg_pool1d(x.t()[None], n)[0].t()


def _resample_map(a: Tensor, n: int) -> Tensor:
    """``a`` (``L x L``) resampled to ``n x n`` by 2-D adaptive average pooling."""
    if a.shape[0] == n:
        return a
    return F.adaptive_avg_pool2d(a[None, None], n)[0, 0]


def _head_mean(att: Tensor, kind: str, dtype: torch.dtype) -> Tensor:
    att = att.to(dtype)
    if kind == "scores":
        att = torch.where(att <= -100, torch.zeros((), dtype=dtype, device=att.device), att)
    return att.mean(1)  # B x L x L


@register("tinybert")
class TinyBERTLoss(DistillLoss):
    """Hidden-state MSE through ``W_h`` + head-averaged attention-map MSE (+ optional prediction-layer soft CE).

    Options:
        hidden_align: ``"interpolate"`` (default) or ``"response"``; attention_align: ``"pool"`` (default) or
            ``"response"``; attention_size: ``S`` for ``"pool"`` (None: the student's valid length).
        layer_map: explicit teacher layer for each student layer ``0..M`` (None: :func:`uniform_layer_map`).
        hidden_weight (1.0), attention_weight (1.0), pred_weight (0.0: off), temperature (1.0, the code's default).
        normalize / special_pairs: the vocabulary map of the prediction layer.

    Logs: ``loss``, ``hidden``, ``attention``, ``pred``.
    """

    requires = frozenset({"all_hidden", "attentions"})
    unit = "student_positions"

    @classmethod
    def teacher_reads(cls, options: dict[str, Any]) -> frozenset[str]:
        """Every layer's states and attention maps; the logits too when the prediction layer is on."""
        return frozenset({"all_hidden", "attentions"} | ({"logits"} if options.get("pred_weight", 0) else set()))

    def __init__(
        self,
        *,
        context: LossContext,
        hidden_align: str = "interpolate",
        attention_align: str = "pool",
        attention_size: int | None = None,
        layer_map: list[int] | None = None,
        hidden_weight: float = 1.0,
        attention_weight: float = 1.0,
        pred_weight: float = 0.0,
        temperature: float = 1.0,
        normalize: str = "space",
        special_pairs: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        context.need("student_hidden", "teacher_hidden", loss="tinybert")
        self.hidden_align = check_choice("hidden_align", hidden_align, ("interpolate", "response"))
        # the hidden-state term's count: every valid student position, or the response tokens it aligns
        self.unit = "student_positions" if self.hidden_align == "interpolate" else "response_tokens"
        self.attention_align = check_choice("attention_align", attention_align, ("pool", "response"))
        self.attention_size = attention_size
        self.layer_map = list(layer_map) if layer_map is not None else None
        if self.layer_map is None and context.student_layers and context.teacher_layers:
            self.layer_map = uniform_layer_map(int(context.student_layers), int(context.teacher_layers))
        self.hidden_weight = float(hidden_weight)
        self.attention_weight = float(attention_weight)
        self.pred_weight = float(pred_weight)
        self.temperature = float(temperature)
        self.fit_dense = nn.Linear(int(context.student_hidden), int(context.teacher_hidden))
        uses_vocab = self.pred_weight != 0
        self.vocab = VocabMapCache(
            context.student_vocab if uses_vocab else None,
            context.teacher_vocab if uses_vocab else None,
            normalize,
            special_pairs,
        )

    def extra_repr(self) -> str:
        return (
            f"hidden_align={self.hidden_align!r}, attention_align={self.attention_align!r}, layer_map={self.layer_map}"
        )

    def _layer_map(self, m: int, n: int) -> list[int]:
        g = self.layer_map if self.layer_map is not None else uniform_layer_map(m, n)
        if len(g) != m + 1 or any(not 0 <= x <= n for x in g):
            raise ValueError(f"tinybert: layer map {g} does not fit {m} student / {n} teacher layers")
        return g

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        need_fields(student, ("all_hidden", "attentions"), self.name, "student")
        need_fields(teacher, ("all_hidden", "attentions"), self.name, "teacher")
        m_layers, n_layers = len(student.all_hidden) - 1, len(teacher.all_hidden) - 1
        g = self._layer_map(m_layers, n_layers)
        if len(student.attentions) != m_layers or len(teacher.attentions) != n_layers:
            raise ValueError("tinybert: expected one attention map per decoder layer on each side")
        dtype = compute_dtype(student.hidden)
        zero = student.hidden.flatten()[:0].sum().to(dtype)
        bsz = student.batch_size
        valid_s, valid_t = student.attention_mask, teacher.attention_mask
        tokens = align(student, teacher, "index", kind="tokens")
        with no_autocast(student.hidden):
            # hidden states
            hidden = zero
            if self.hidden_align == "interpolate":
                count = valid_s.sum().to(torch.float32)
                n_hid = denominator(denominators, "student_positions", count)
            else:
                count = student_rows(student, "tokens").sum().to(torch.float32)
                n_hid = denominator(denominators, "response_tokens", count)
            d_t = self.fit_dense.out_features
            for m, gm in enumerate(g):
                h_s = student.all_hidden[m].to(dtype)
                h_t = teacher.all_hidden[gm].detach().to(dtype)
                sq = zero
                if self.hidden_align == "interpolate":
                    for b in range(bsz):
                        x = h_s[b, valid_s[b]]
                        y = h_t[b, valid_t[b]]
                        if x.shape[0] == 0 or y.shape[0] == 0:
                            continue
                        sq = sq + (self._fit(x) - _resample_rows(y, x.shape[0])).pow(2).sum()
                else:
                    x = h_s[tokens.batch, tokens.student]
                    y = h_t[tokens.batch, tokens.teacher]
                    sq = sq + (self._fit(x) - y).pow(2).sum()
                hidden = hidden + sq / (n_hid * d_t)
            # attention maps
            attention = zero
            samples = 0
            for m in range(1, m_layers + 1):
                a_s = _head_mean(student.attentions[m - 1], student.attention_kind, dtype)
                a_t = _head_mean(teacher.attentions[g[m] - 1], teacher.attention_kind, dtype).detach() if g[m] else None
                if a_t is None:
                    raise ValueError("tinybert: a student layer maps to the teacher's embedding layer (no attention)")
                per_layer, samples = zero, 0
                for b in range(bsz):
                    if self.attention_align == "pool":
                        x = a_s[b][valid_s[b]][:, valid_s[b]]
                        y = a_t[b][valid_t[b]][:, valid_t[b]]
                        if x.shape[0] == 0 or y.shape[0] == 0:
                            continue
                        size = self.attention_size or x.shape[0]
                        x, y = _resample_map(x, size), _resample_map(y, size)
                    else:
                        sel = tokens.batch == b
                        if not bool(sel.any()):
                            continue
                        ps, pt = tokens.student[sel], tokens.teacher[sel]
                        x, y = a_s[b][ps][:, ps], a_t[b][pt][:, pt]
                    per_layer = per_layer + (x - y).pow(2).mean()
                    samples += 1
                attention = attention + per_layer / denominator(denominators, "samples", float(max(samples, 1)))
            # prediction layer
            pred = zero
            if self.pred_weight != 0:
                vmap = self.vocab.get(student.vocab, teacher.vocab, student.logits.device)
                rows = align(student, teacher, "index", kind="rows")
                t = self.temperature
                z_s = student.logits[rows.batch, rows.student].to(dtype).index_select(-1, vmap.student_ids)
                z_t = teacher.logits.detach()[rows.batch, rows.teacher].to(dtype).index_select(-1, vmap.teacher_ids)
                soft_ce = -(F.softmax(z_t / t, dim=-1) * F.log_softmax(z_s / t, dim=-1)).sum()
                local = student_rows(student, "rows").sum().to(torch.float32)
                pred = soft_ce / denominator(denominators, "response_tokens", local)
            loss = self.hidden_weight * hidden + self.attention_weight * attention + self.pred_weight * pred
        logs = {"loss": loss.detach(), "hidden": hidden.detach(), "attention": attention.detach()}
        logs["pred"] = pred.detach()
        return LossOutput(loss=loss, logs=logs)

    def _fit(self, x: Tensor) -> Tensor:
        return self.fit_dense(x.to(self.fit_dense.weight.dtype)).to(x.dtype)
