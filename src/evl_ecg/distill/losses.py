r"""EVL-ECG's loss terms (paper section 2; docs/distill.md, "The terms") and the student's CE.

Registered names: ``ce`` (:class:`CrossEntropyLoss`), ``mhca`` (:class:`MHCALoss`), ``ot`` (:class:`OTLoss`),
``relation`` (:class:`RelationLoss`). Shapes: ``B`` batch, ``L_s``/``L_t`` student/teacher positions,
``D_s``/``D_t`` hidden sizes, ``V_s``/``V_t`` (here ``N_s``/``N_t``) visual-token counts, ``D'`` visual widths.

Every loss is a **sum over its valid units divided by a count** (:class:`~evl_ecg.distill.registry.Denominators`,
global under gradient accumulation / data parallelism; the local count when ``None``), so splitting a batch into
micro-batches that share the full batch's denominators and summing reproduces the full-batch loss exactly.
Padding never takes part: padded entries are replaced by zeros (``torch.where``, so junk or NaN in padding cannot
leak) and masked out of every sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    masked_mean_denominator,
    next_token_targets,
    register,
)
from evl_ecg.distill.sinkhorn import SOLVERS, sinkhorn, uniform_marginals
from evl_ecg.outputs import SideOutputs, compute_dtype

POSITION_SETS = ("all", "response", "text")


def _denominator(denominators: Denominators | None, unit: str, local: Tensor | float) -> Tensor | float:
    return (denominators or Denominators()).get(unit, local)


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with entries outside ``mask`` (``B x L``) set to 0 (out of place)."""
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of ``x`` (``B x L x D``) selected by ``mask`` moved to the front of each sample, in order, and cut to
    the largest count: ``(B x K x D, B x K mask)``. Needs one host synchronisation (``K``)."""
    keep = max(int(mask.sum(dim=1).max()), 1) if mask.numel() else 1
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :keep]
    return torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1])), torch.gather(mask, 1, order)


def _check_positions(positions: str) -> str:
    if positions not in POSITION_SETS:
        raise ValueError(f"positions must be one of {POSITION_SETS}, got {positions!r}")
    return positions


# ---------------------------------------------------------------------------------------------------------------
@register("ce")
class CrossEntropyLoss(DistillLoss):
    r"""The student's next-token cross-entropy on response tokens (SPEC section 2, ``L_CE``).

    .. math::  L_{CE} = \frac{1}{N} \sum_{(b, l) \in M} -\log \mathrm{softmax}(z_{b,l})_{y_{b,l+1}}

    ``z``: student logits ``B x L_s x V_s``; ``M``: positions whose next token is supervised, both positions valid
    (:func:`~evl_ecg.distill.registry.next_token_targets`: a label left on a padded position never counts);
    ``N``: ``Denominators.ce_tokens`` (local ``|M|``). Samples whose answer is context only
    (``SideOutputs.ce_mask`` False: a record with ``meta`` ``"ce": false``) are left out of ``M``, and out of
    ``ce_tokens``; without such samples ``ce_tokens`` is ``response_tokens``.
    The log-softmax runs in float32 on the supervised rows only. Needs no teacher.

    ``label_smoothing`` (``epsilon``, default 0): the target is ``(1 - epsilon)`` on the next token plus
    ``epsilon / V_s`` on every token (Szegedy et al. 2016; PyTorch's ``cross_entropy(label_smoothing=)``), the
    teacher-free control of a distillation gain (Yuan et al. 2020).
    """

    unit = "ce_tokens"
    needs_teacher = False

    def __init__(self, *, label_smoothing: float = 0.0, context: LossContext | None = None) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"ce: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None = None, denominators: Denominators | None = None
    ) -> LossOutput:
        targets, mask = next_token_targets(student)
        if student.ce_mask is not None:
            mask = mask & student.ce_mask.view(-1, 1).to(mask.device)
        logits = student.logits[mask]  # N x V_s
        with torch.autocast(device_type=logits.device.type, enabled=False):
            total = F.cross_entropy(
                logits.to(compute_dtype(logits)),
                targets[mask],
                reduction="sum",
                label_smoothing=self.label_smoothing,
            )
        loss = total / _denominator(denominators, self.unit, masked_mean_denominator(mask))
        return LossOutput(loss=loss, logs={"loss": loss.detach(), "tokens": mask.sum().detach()})


# ---------------------------------------------------------------------------------------------------------------
@register("mhca")
class MHCALoss(DistillLoss):
    r"""Multi-head cross-attention alignment (paper section 2.2, SPEC section 2, ``L_mhca``).

    .. math::

        \mathrm{head}_i = \mathrm{softmax}\Big(\frac{(H_s W_i^Q)(H_t W_i^K)^\top}{\sqrt{d_k}} + \log m_t\Big)
            (H_t W_i^V), \qquad \hat H_t = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h) W^O

        L_{mhca} = \frac{1}{N} \sum_{b} \sum_{l \in S_b} \| H_s^{(b,l)} - \hat H_t^{(b,l)} \|_2^2

    ``H_s``: ``B x L_s x D_s`` (queries), ``H_t``: ``B x L_t x D_t`` (keys and values, detached: the teacher is
    frozen); ``W^Q: D_s -> D_s``, ``W^K, W^V: D_t -> D_s``, ``W^O: D_s -> D_s``, ``h`` heads of ``d_k = D_s / h``;
    ``m_t``: the teacher position mask (padding, and positions outside ``positions``, get zero attention);
    ``S_b``: the student positions of sample ``b`` in ``positions``; ``N``: ``Denominators.student_positions``
    (local ``sum_b |S_b|``). The squared norm is summed over features (SPEC), in float32.

    Options:
        heads: ``h`` (paper Table 4: 8).
        positions: ``"all"`` (default), ``"response"`` or ``"text"``, applied to both sides.
        teacher_positions: the teacher's (key) position set, if it should differ from ``positions``. ``"text"``
            leaves the teacher's visual positions out of the keys: at the paper's multi-tile shape that removes
            2,880 of 3,400 keys and about 4 of MHCA's 6.6 % of the student's FLOPs (``benchmarks/objective.py``);
            a departure from the paper (docs/deviations.md), off by default.
        bias: add biases to the four projections (default False, as the paper's equations).
        reduction: ``"sum"`` (default, the paper's: squared norm summed over the ``D_s`` features) or ``"mean"``
            (divided by ``D_s``: the mean squared error per feature, so that the term's scale does not grow with
            the hidden size; a departure, docs/deviations.md).
        normalize: False (default, the paper's) or True: ``H_s`` and ``H_t`` are layer-normalised per position (no
            affine: zero mean, unit variance over the features) before the projections and the squared error, so
            the term can fall neither by shrinking the student's states nor by scaling ``W^O`` (a departure,
            docs/deviations.md).

    When the teacher's key set is not ``"all"``, its selected positions are gathered to the front of each row
    first (one host synchronisation for the longest count), so that the K/V projections run on them only. A sample
    whose teacher has no key position (say, its response cut off by truncation) takes no part: its queries do not
    count, and it attends to a single zero key so that nothing from its padding can reach a product.

    Gradients reach ``H_s`` and the MHCA weights. Logs ``norm_student`` / ``norm_aligned``: mean per-token L2 norm
    of ``H_s`` and ``Ĥ_t`` over ``S``. Produces ``extras["aligned_teacher"]`` = ``Ĥ_t`` (``B x L_s x D_s``, with
    its graph) for :class:`RelationLoss`.
    """

    unit = "student_positions"
    teacher_fields = frozenset({"hidden"})
    produces = frozenset({"aligned_teacher"})

    def __init__(
        self,
        *,
        context: LossContext,
        heads: int = 8,
        positions: str = "all",
        teacher_positions: str | None = None,
        bias: bool = False,
        reduction: str = "sum",
        normalize: bool = False,
    ) -> None:
        super().__init__()
        context.need("student_hidden", "teacher_hidden", loss="mhca")
        self.normalize = bool(normalize)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"mhca: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        d_s, d_t = int(context.student_hidden), int(context.teacher_hidden)
        if heads < 1 or d_s % heads:
            raise ValueError(f"mhca: D_s={d_s} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = d_s // heads
        self.positions = _check_positions(positions)
        self.teacher_positions = _check_positions(positions if teacher_positions is None else teacher_positions)
        self.q_proj = nn.Linear(d_s, d_s, bias=bias)
        self.k_proj = nn.Linear(d_t, d_s, bias=bias)
        self.v_proj = nn.Linear(d_t, d_s, bias=bias)
        self.o_proj = nn.Linear(d_s, d_s, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, d_k={self.head_dim}, positions={self.positions!r}, "
            f"teacher_positions={self.teacher_positions!r}, reduction={self.reduction!r}"
            + (", normalize=True" if self.normalize else "")
        )

    def align(self, h_s: Tensor, h_t: Tensor, key_mask: Tensor) -> Tensor:
        """``Ĥ_t`` (``B x L_s x D_s``) from ``h_s`` (``B x L_s x D_s``) and ``h_t`` (``B x L_t x D_t``).

        ``key_mask`` (``B x L_t``): keys taking part; every row must hold at least one True.
        """
        b, l_s, _ = h_s.shape
        l_t = h_t.shape[1]
        q = self.q_proj(h_s).view(b, l_s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h_t).view(b, l_t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h_t).view(b, l_t, self.heads, self.head_dim).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])  # B x h x L_s x d_k
        return self.o_proj(ctx.transpose(1, 2).reshape(b, l_s, self.heads * self.head_dim))

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        if teacher is None:
            raise ValueError("mhca needs the teacher's outputs")
        q_mask = student.position_mask(self.positions)
        selected = teacher.position_mask(self.teacher_positions)
        has_keys = selected.any(dim=1)  # a sample without teacher positions takes no part
        q_mask = q_mask & has_keys[:, None]
        # ... but attends to one zero key (position 0), so that its softmax stays finite; its queries do not count
        dummy = ~has_keys[:, None] & (torch.arange(selected.shape[1], device=selected.device) == 0)[None]
        k_mask = selected | dummy
        h_s = _masked(student.hidden, student.attention_mask)
        raw_s = h_s
        h_t = _masked(teacher.hidden.detach(), selected)  # junk (even NaN) off the keys never reaches a product
        if self.normalize:  # per position over the features; masked rows (all zeros) stay zeros
            h_s = _masked(F.layer_norm(h_s.float(), h_s.shape[-1:]).to(h_s.dtype), student.attention_mask)
            h_t = _masked(F.layer_norm(h_t.float(), h_t.shape[-1:]).to(h_t.dtype), selected)
        if self.teacher_positions != "all":
            h_t, k_mask = _compact(h_t, k_mask)
        aligned = self.align(h_s, h_t, k_mask)
        dtype = compute_dtype(h_s)
        with torch.autocast(device_type=h_s.device.type, enabled=False):
            hs32, al32 = h_s.to(dtype), aligned.to(dtype)
            per_token = (hs32 - al32).pow(2).sum(-1)  # B x L_s
            if self.reduction == "mean":
                per_token = per_token / hs32.shape[-1]
            total = torch.where(q_mask, per_token, torch.zeros((), dtype=dtype, device=h_s.device)).sum()
            count = masked_mean_denominator(q_mask)
            loss = total / _denominator(denominators, self.unit, count)
            with torch.no_grad():  # the raw states' norm (the collapse monitor), normalised or not
                norm_s = (raw_s.to(dtype).norm(dim=-1) * q_mask).sum() / count.clamp_min(1)
                norm_a = (al32.norm(dim=-1) * q_mask).sum() / count.clamp_min(1)
        return LossOutput(
            loss=loss,
            logs={"loss": loss.detach(), "norm_student": norm_s, "norm_aligned": norm_a},
            # with normalize, relation compares Ĥ_t with the states it was fitted to: the normalised H_s
            extras={"aligned_teacher": aligned, **({"aligned_student": h_s} if self.normalize else {})},
        )


# ---------------------------------------------------------------------------------------------------------------
@register("ot")
class OTLoss(DistillLoss):
    r"""Entropic optimal-transport matching of visual tokens (paper section 2.1, SPEC section 2, ``L_ot``).

    .. math::

        t_i = \frac{W_p v_{t,i}}{\|W_p v_{t,i}\|}, \quad s_j = \frac{v_{s,j}}{\|v_{s,j}\|}, \quad
        C_{ij} = \|t_i - s_j\|_2^2, \quad
        P^*_\varepsilon = \arg\min_{P \in \Pi(\mu, \nu)} \langle P, C \rangle - \varepsilon \mathcal{H}(P)

        L_{ot} = \frac{1}{N} \sum_b \sum_{i,j} \mathrm{sg}(P^*_{\varepsilon})^{(b)}_{ij} C^{(b)}_{ij}

    ``v_t``: teacher visual tokens ``B x N_t x D_t'`` (detached), ``v_s``: student visual tokens ``B x N_s x D_s'``;
    ``W_p``: trainable ``Linear(D_t' -> D_s')`` owned by this loss; ``mu``, ``nu``: uniform over each sample's valid
    visual tokens (zero mass on padding); ``sg``: stop-gradient (envelope theorem): gradients reach ``v_s`` and
    ``W_p`` through ``C`` only; ``N``: ``Denominators.samples`` (local ``B``; a sample without visual tokens on
    either side contributes 0). The projection runs under the ambient autocast; normalisation, cost and Sinkhorn run
    in float32 with autocast disabled (:func:`evl_ecg.distill.sinkhorn.sinkhorn`).

    Options: ``epsilon`` (0.1), ``max_iter`` (1000), ``tol`` (1e-6 L1 marginal error; None = exactly ``max_iter``
    iterations), ``solver`` (``"torch"`` default | ``"pot"``), ``check_every`` (5), ``bias`` (False: ``W_p v``),
    ``train_proj`` (True, the paper's: ``W_p`` learns with the student; False: ``W_p`` stays at its seeded
    initialisation, so the plan can only fall by moving the student's tokens, not by fitting ``W_p`` to them; a
    departure, docs/deviations.md).
    Logs: ``loss``, ``iterations``, ``marginal_error`` (max over samples). Produces ``extras["ot_plan"]``
    (``B x N_t x N_s``, detached; paper Figure 2).
    """

    unit = "samples"
    teacher_fields = frozenset({"visual"})
    requires = frozenset({"visual"})
    produces = frozenset({"ot_plan"})

    def __init__(
        self,
        *,
        context: LossContext,
        epsilon: float = 0.1,
        max_iter: int = 1000,
        tol: float | None = 1e-6,
        solver: str = "torch",
        check_every: int = 5,
        bias: bool = False,
        train_proj: bool = True,
    ) -> None:
        super().__init__()
        d_s = context.student_visual or context.student_hidden
        d_t = context.teacher_visual or context.teacher_hidden
        if d_s is None or d_t is None:
            raise ValueError("ot needs LossContext.student_visual/teacher_visual (or the hidden sizes)")
        if solver not in SOLVERS:
            raise ValueError(f"ot: unknown solver {solver!r}; expected one of {SOLVERS}")
        if epsilon <= 0:
            raise ValueError("ot: epsilon must be > 0")
        self.epsilon, self.max_iter, self.tol = float(epsilon), int(max_iter), tol
        self.solver, self.check_every = solver, int(check_every)
        self.proj = nn.Linear(int(d_t), int(d_s), bias=bias)
        self.train_proj = bool(train_proj)
        self.proj.requires_grad_(self.train_proj)

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, solver={self.solver!r}, tol={self.tol}, max_iter={self.max_iter}, "
            f"train_proj={self.train_proj}"
        )

    def cost(self, v_s: Tensor, v_t: Tensor, mask_s: Tensor, mask_t: Tensor) -> Tensor:
        """``B x N_t x N_s`` cost ``C_ij = ||t_i - s_j||^2`` (float32, or float64 for float64 inputs)."""
        t = self.proj(_masked(v_t, mask_t))
        dtype = compute_dtype(t)
        with torch.autocast(device_type=t.device.type, enabled=False):
            t = F.normalize(t.to(dtype), dim=-1)
            s = F.normalize(_masked(v_s, mask_s).to(dtype), dim=-1)
            sq_t = t.pow(2).sum(-1)
            sq_s = s.pow(2).sum(-1)
            return (sq_t[:, :, None] + sq_s[:, None, :] - 2.0 * torch.bmm(t, s.transpose(1, 2))).clamp_min(0.0)

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        if teacher is None:
            raise ValueError("ot needs the teacher's outputs")
        if student.visual is None or teacher.visual is None:
            raise ValueError("ot needs SideOutputs.visual on both sides")
        mask_s, mask_t = student.visual_mask, teacher.visual_mask
        cost = self.cost(student.visual, teacher.visual.detach(), mask_s, mask_t)
        result = sinkhorn(
            cost,
            uniform_marginals(mask_t, cost.dtype),
            uniform_marginals(mask_s, cost.dtype),
            epsilon=self.epsilon,
            max_iter=self.max_iter,
            tol=self.tol,
            solver=self.solver,
            check_every=self.check_every,
        )
        loss = result.value.sum() / _denominator(denominators, self.unit, float(cost.shape[0]))
        logs: dict[str, Any] = {
            "loss": loss.detach(),
            "iterations": result.iterations,
            "marginal_error": result.marginal_error.max(),
        }
        return LossOutput(loss=loss, logs=logs, extras={"ot_plan": result.plan})


# ---------------------------------------------------------------------------------------------------------------
#: default :class:`RelationLoss` ``direct_below`` (relative squared distance under which pairs are recomputed).
DIRECT_BELOW = 1e-3


@register("relation")
class RelationLoss(DistillLoss):
    r"""Geometric intra-architecture relation matching (paper section 2.3, Eq. 1; SPEC section 2, ``L_rel``).

    For each sample ``b``, over its student positions ``S_b`` (``positions``) and ``h`` rows of ``H`` = ``H_s`` or
    ``Ĥ_t`` (both ``B x L_s x D_s``; ``Ĥ_t`` from :class:`MHCALoss`):

    .. math::

        \psi_D(h_i, h_j) = \frac{\|h_i - h_j\|}{\frac{1}{|S|(|S|-1)} \sum_{k \ne l \in S} \|h_k - h_l\|}, \qquad
        \psi_A(h_i, h_j) = \frac{\langle h_i, h_j \rangle}{\|h_i\| \|h_j\|}

        L_k = \frac{1}{N} \sum_b \sum_{i \ne j \in S_b} \big(\psi_k(\hat H_t^{(b,i)}, \hat H_t^{(b,j)})
              - \psi_k(H_s^{(b,i)}, H_s^{(b,j)})\big)^2, \qquad L_{rel} = \tfrac{1}{2}(L_D + L_A)

    ``N``: ``Denominators.student_pairs`` (local ``sum_b |S_b|(|S_b|-1)``). The diagonal ``i = j`` is left out of
    both the sum (where it is 0 anyway: ``psi_D = 0``, ``psi_A = 1`` on both sides) and the count; the paper's
    Eq. 1 divides by ``L_s^2`` instead, a factor ``|S|/(|S|-1)`` apart (docs/distill.md, Deviations).
    Computed in float32 with autocast disabled; distances from the Gram matrix of per-sample centred features
    (translation invariant, and centring limits cancellation), except for near-duplicate pairs, where the Gram form
    cancels catastrophically in float32 (gradient error 0.26-0.28 at relative distances 1e-4 to 1e-5): those are
    recomputed from their differences ``h_i - h_j`` (``direct_below``), gathered sparsely, so that no
    ``B x L x L x D`` tensor is ever built.

    Options:
        positions: ``"all"`` (default), ``"response"``, ``"text"`` (student side).
        detach_target: treat ``Ĥ_t`` as a constant target (default True).
        chunk_size: None (default) builds the ``B x L_s x L_s`` relation matrices at once; an int processes rows
            in chunks of that size under activation checkpointing, so memory is ``O(B * chunk_size * L_s)``.
        direct_below: pairs whose squared Gram distance is below ``direct_below * (|c_i|^2 + |c_j|^2)`` (``c``
            the centred features; 1e-3: closer than about 4.5 % of their norms, where the float32 Gram distance
            is still within about 1e-4 of the exact one) get their distance from the difference itself; costs
            ``K x D`` for ``K`` such pairs (in blocks of bounded size) and one host synchronisation per side and
            chunk. 0 turns it off (Gram only, no synchronisation).

    ``forward`` takes ``aligned_teacher=`` (``Ĥ_t``), passed by the objective from MHCA's ``extras``, and, when MHCA
    runs with ``normalize: true``, ``aligned_student=`` (the layer-normalised ``H_s`` it fitted ``Ĥ_t`` to), which then
    stands for ``H_s`` in the potentials, so that both sides live in the same space.
    """

    unit = "student_pairs"
    teacher_fields = frozenset()  # reads MHCA's output only
    consumes = frozenset({"aligned_teacher"})
    accepts = frozenset({"aligned_student"})  # optional: MHCA's normalised H_s (``normalize: true``)

    def __init__(
        self,
        *,
        context: LossContext | None = None,
        positions: str = "all",
        detach_target: bool = True,
        chunk_size: int | None = None,
        direct_below: float = DIRECT_BELOW,
    ) -> None:
        super().__init__()
        self.positions = _check_positions(positions)
        self.detach_target = bool(detach_target)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("relation: chunk_size must be a positive int or None")
        self.chunk_size = chunk_size
        if not 0.0 <= float(direct_below) < 1.0:
            raise ValueError("relation: direct_below must be in [0, 1)")
        self.direct_below = float(direct_below)

    def extra_repr(self) -> str:
        return (
            f"positions={self.positions!r}, detach_target={self.detach_target}, chunk_size={self.chunk_size}, "
            f"direct_below={self.direct_below}"
        )

    def forward(
        self,
        student: SideOutputs,
        teacher: SideOutputs | None = None,
        denominators: Denominators | None = None,
        *,
        aligned_teacher: Tensor | None = None,
        aligned_student: Tensor | None = None,
    ) -> LossOutput:
        if aligned_teacher is None:
            raise ValueError(
                "relation needs aligned_teacher= (the MHCA output Ĥ_t): use it in an Objective with 'mhca', "
                "or pass it explicitly"
            )
        if aligned_teacher.shape != student.hidden.shape:
            shape = tuple(aligned_teacher.shape)
            raise ValueError(f"aligned_teacher has shape {shape}, expected {tuple(student.hidden.shape)}")
        mask = student.position_mask(self.positions)
        target = aligned_teacher.detach() if self.detach_target else aligned_teacher
        h_s = student.hidden if aligned_student is None else aligned_student
        dtype = compute_dtype(student.hidden)
        with torch.autocast(device_type=student.hidden.device.type, enabled=False):
            sum_d, sum_a = relation_sums(
                _masked(h_s, mask).to(dtype),
                _masked(target, mask).to(dtype),
                mask,
                self.chunk_size,
                self.direct_below,
            )
            n = mask.sum(dim=1).to(dtype)
            pairs = (n * (n - 1)).sum()
            denom = _denominator(denominators, self.unit, pairs)
            loss_d, loss_a = sum_d / denom, sum_a / denom
            loss = 0.5 * (loss_d + loss_a)
        return LossOutput(
            loss=loss, logs={"loss": loss.detach(), "distance": loss_d.detach(), "angle": loss_a.detach()}
        )


_TINY = 1e-12
#: elements (pairs x features) of one block of directly recomputed distances (memory bound of that step).
_DIRECT_BLOCK = 1 << 22


def _centre(h: Tensor, mask: Tensor) -> Tensor:
    m = mask[..., None].to(h.dtype)
    mean = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return (h - mean) * m


def _pair_distances(h: Tensor, b: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``||h[b, i] - h[b, j]||`` from the differences themselves (``K`` pairs, ``K x D`` temporary)."""
    return (h[b, i] - h[b, j]).pow(2).sum(-1).clamp_min(_TINY).sqrt()


def _direct_distances(h: Tensor, b: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """:func:`_pair_distances` in blocks of at most ``_DIRECT_BLOCK`` elements, each under activation checkpointing
    when gradients are on, so that memory stays ``O(_DIRECT_BLOCK)`` however many pairs there are."""
    step = max(1, _DIRECT_BLOCK // max(h.shape[-1], 1))
    if b.numel() <= step:
        return _pair_distances(h, b, i, j)
    parts = []
    for k in range(0, b.numel(), step):
        idx = (b[k : k + step], i[k : k + step], j[k : k + step])
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_pair_distances, h, *idx, use_reentrant=False))
        else:
            parts.append(_pair_distances(h, *idx))
    return torch.cat(parts)


def _row_distances(h: Tensor, c: Tensor, sq: Tensor, rows: slice, pair: Tensor, direct_below: float) -> Tensor:
    """``B x r x L`` distances ``||h_i - h_j||`` for rows ``i`` in ``rows`` (0 outside ``pair``).

    From the Gram matrix of the centred features ``c`` (``sq`` their squared norms). In float32 the Gram form
    ``|c_i|^2 + |c_j|^2 - 2 c_i.c_j`` cancels for near-duplicate pairs (its error is about ``1e-7 (|c_i|^2 +
    |c_j|^2)`` at ``D = 2048``): pairs with ``d^2 < direct_below * (|c_i|^2 + |c_j|^2)`` are recomputed from the
    differences ``h_i - h_j`` (gathered sparsely: ``K x D`` for ``K`` such pairs, in bounded blocks; one host
    synchronisation for ``K``). ``direct_below = 0``: Gram only.
    """
    sq_pair = sq[:, rows, None] + sq[:, None, :]
    d2 = sq_pair - 2.0 * torch.bmm(c[:, rows], c.transpose(1, 2))
    d = torch.where(pair, d2.clamp_min(_TINY).sqrt(), torch.zeros((), dtype=c.dtype, device=c.device))
    if direct_below > 0:
        with torch.no_grad():
            close = pair & (d2 < direct_below * sq_pair)
        b, i, j = close.nonzero(as_tuple=True)
        if b.numel():
            d = d.index_put((b, i, j), _direct_distances(h, b, i + rows.start, j))
    return d


def _pair_mask(mask: Tensor, rows: slice) -> Tensor:
    """``B x r x L`` valid pairs ``(i, j)``, ``i`` in ``rows``, ``i != j``."""
    length = mask.shape[1]
    idx = torch.arange(length, device=mask.device)
    off_diag = idx[rows, None] != idx[None, :]
    return mask[:, rows, None] & mask[:, None, :] & off_diag


def _distance_sum(h: Tensor, c: Tensor, mask: Tensor, start: int, stop: int, direct_below: float) -> Tensor:
    rows = slice(start, stop)
    return _row_distances(h, c, c.pow(2).sum(-1), rows, _pair_mask(mask, rows), direct_below).sum(dim=(1, 2))


def _chunk_terms(
    h_s: Tensor,
    h_t: Tensor,
    c_s: Tensor,
    c_t: Tensor,
    u_s: Tensor,
    u_t: Tensor,
    mu_s: Tensor,
    mu_t: Tensor,
    mask: Tensor,
    start: int,
    stop: int,
    direct_below: float,
) -> tuple[Tensor, Tensor]:
    """Sums over rows ``start:stop`` of ``(psi_D^t - psi_D^s)^2`` and ``(psi_A^t - psi_A^s)^2`` (valid pairs)."""
    rows = slice(start, stop)
    pair = _pair_mask(mask, rows)
    zero = torch.zeros((), dtype=c_s.dtype, device=c_s.device)
    psi_d_s = _row_distances(h_s, c_s, c_s.pow(2).sum(-1), rows, pair, direct_below) / mu_s[:, None, None]
    psi_d_t = _row_distances(h_t, c_t, c_t.pow(2).sum(-1), rows, pair, direct_below) / mu_t[:, None, None]
    psi_a_s = torch.bmm(u_s[:, rows], u_s.transpose(1, 2))
    psi_a_t = torch.bmm(u_t[:, rows], u_t.transpose(1, 2))
    sum_d = torch.where(pair, (psi_d_t - psi_d_s).pow(2), zero).sum()
    sum_a = torch.where(pair, (psi_a_t - psi_a_s).pow(2), zero).sum()
    return sum_d, sum_a


def relation_sums(
    h_s: Tensor, h_t: Tensor, mask: Tensor, chunk_size: int | None = None, direct_below: float = DIRECT_BELOW
) -> tuple[Tensor, Tensor]:
    """Unnormalised ``(sum L_D, sum L_A)`` over samples and valid pairs ``i != j`` (see :class:`RelationLoss`).

    Args:
        h_s, h_t: ``B x L x D`` student features and target features (zero outside ``mask``).
        mask: ``B x L`` valid positions.
        chunk_size: rows per chunk under activation checkpointing (None: all rows at once, no checkpointing).
        direct_below: relative squared distance under which a pair's distance is recomputed from its difference
            (:func:`_row_distances`); 0: Gram matrix only.
    """
    length = h_s.shape[1]
    c_s, c_t = _centre(h_s, mask), _centre(h_t, mask)
    u_s = F.normalize(h_s, dim=-1, eps=_TINY)
    u_t = F.normalize(h_t, dim=-1, eps=_TINY)
    n = mask.sum(dim=1).to(h_s.dtype)
    pairs = (n * (n - 1)).clamp_min(1)
    step = length if chunk_size is None else chunk_size
    bounds = [(i, min(i + step, length)) for i in range(0, length, step)]

    def run(fn: Any, *args: Any) -> Any:
        if chunk_size is None or not torch.is_grad_enabled():
            return fn(*args)
        return checkpoint(fn, *args, use_reentrant=False)

    dist_s = sum(run(_distance_sum, h_s, c_s, mask, a, b, direct_below) for a, b in bounds)
    dist_t = sum(run(_distance_sum, h_t, c_t, mask, a, b, direct_below) for a, b in bounds)
    mu_s = (dist_s / pairs).clamp_min(_TINY)
    mu_t = (dist_t / pairs).clamp_min(_TINY)
    sum_d = h_s.new_zeros(())
    sum_a = h_s.new_zeros(())
    for a, b in bounds:
        d, ang = run(_chunk_terms, h_s, h_t, c_s, c_t, u_s, u_t, mu_s, mu_t, mask, a, b, direct_below)
        sum_d = sum_d + d
        sum_a = sum_a + ang
    return sum_d, sum_a
