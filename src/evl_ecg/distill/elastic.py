r"""Elastic-dimension ECG embeddings from the student: the embedding head and the ``matryoshka`` and ``mic`` losses.

An embedding of one ECG is a small head over the student's last-layer hidden states, pooled over a stated set of
positions (:class:`EmbeddingHead`): ``e = W pool(H_s)``, ``D`` dimensions, read at nested prefixes
``d_1 < ... < d_K = D`` (``e[:, :d_k]``). Unlike the distiller's own modules (MHCA, ``W_p``), the head is part of
what a user keeps: :meth:`EmbeddingHead.save` writes it beside the student as its own pair of files
(:data:`HEAD_WEIGHTS`, :data:`HEAD_CONFIG`). During training it belongs to the loss that trains it, so it sits in the
objective's parameters (projector learning-rate group, ``objective.safetensors``); :func:`embedding_head_of` finds it.

Registered names (off by default: no preset lists them; add them as extra terms of a phase-2 objective):

* ``matryoshka`` (:class:`MatryoshkaLoss`): the task loss on every prefix, summed with weights
  (Kusupati et al., 2022): supervised contrastive over the records' findings (``task="supcon"``, default) or
  multi-label classification (``task="bce"``).
* ``mic`` (:class:`MICLoss`): ``matryoshka`` plus SCR (cross-correlation between each prefix and the dimensions
  after it, driven to zero), SIR (hyperspherical uniformity, or a flat covariance spectrum, of the low-dimensional
  prefixes) and self-distillation (the full embedding's batch-similarity rows teach each prefix's). Only the MIC
  abstract is at hand (docs/elastic.md, "The losses"): every equation here is our reading of it
  (docs/distill.md, "Elastic embeddings"; docs/elastic.md).

The findings: a ``B x C`` multi-hot float tensor (1 where record ``b`` carries finding ``c``;
:func:`findings_multi_hot` builds it from the records' ``labels["findings"]``). The collator does not put it in the
batch yet, so the losses take it as ``findings=`` or read ``student.findings`` when :class:`SideOutputs` has that
field.

Batch splitting (SPEC section 2). The classification task (``bce``) is a sum over samples divided by
``Denominators.samples``: micro-batches with the global count sum to the full-batch loss exactly. The other parts
(supervised contrastive, SCR, SIR, self-distillation) compare the samples *of one forward pass* with each other and
cannot be split that way: each is computed over its micro-batch and weighted by ``n / N`` (``n`` the micro-batch's
samples, ``N`` = ``Denominators.samples``, local ``n``), so that under accumulation or data parallelism the total is
the sample-weighted mean of the micro-batch values (never a sum that grows with the number of micro-batches), but
its value depends on the micro-batch size. Below ``min_batch`` samples (default 4) such a loss refuses to run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.ecg.labels import FINDINGS, findings_multi_hot  # noqa: F401  (re-exported)
from evl_ecg.models.embedding_head import (
    DEFAULT_PREFIXES,
    FINDING_CODES,
    TINY,
    EmbeddingHead,
    check_choice,
)
from evl_ecg.outputs import SideOutputs, compute_dtype

TASKS = ("supcon", "bce")
POSITIVES = ("exact", "jaccard")
SIR_FORMS = ("uniformity", "spectral")

# ---------------------------------------------------------------------------------------------------------------
# The pieces, as functions of tensors (each documented with its equation in docs/distill.md, "Elastic embeddings").


def positive_weights(labels: Tensor, how: str = "exact") -> Tensor:
    """``B x B`` weights ``w_ij`` of the pairs a supervised-contrastive anchor ``i`` pulls towards (diagonal 0).

    ``labels``: ``B x C`` multi-hot. ``"exact"``: ``w_ij = 1`` when the two finding sets are identical, else 0.
    ``"jaccard"``: ``w_ij = |y_i ∩ y_j| / |y_i ∪ y_j|`` (1 for two empty sets).
    """
    check_choice("positives", how, POSITIVES)
    y = labels.to(torch.float64 if labels.dtype == torch.float64 else torch.float32)
    if how == "exact":
        w = (labels[:, None, :] == labels[None, :, :]).all(-1).to(y.dtype)
    else:
        inter = y @ y.t()
        size = y.sum(-1)
        union = size[:, None] + size[None, :] - inter
        w = torch.where(union > 0, inter / union.clamp_min(1), torch.ones((), dtype=y.dtype, device=y.device))
    return w.masked_fill(torch.eye(w.shape[0], dtype=torch.bool, device=w.device), 0.0)


def supcon_sums(z: Tensor, labels: Tensor, temperature: float = 0.1, positives: str = "exact") -> tuple[Tensor, Tensor]:
    r"""Supervised contrastive loss (Khosla et al., 2020, :math:`\mathcal{L}^{sup}_{out}`), weighted positives.

    .. math::  u_i = z_i / \|z_i\|, \quad s_{ij} = u_i^\top u_j / \tau, \qquad
               \ell_i = -\frac{\sum_{j \ne i} w_{ij} \big(s_{ij} - \log \sum_{a \ne i} e^{s_{ia}}\big)}
                             {\sum_{j \ne i} w_{ij}}

    ``z``: ``B x d``; ``w``: :func:`positive_weights`. Returns ``(sum of l_i over anchors with sum_j w_ij > 0,
    number of such anchors)``; an anchor without a positive takes no part.
    """
    b = z.shape[0]
    u = F.normalize(z, dim=-1, eps=TINY)
    s = u @ u.t() / temperature
    eye = torch.eye(b, dtype=torch.bool, device=z.device)
    log_prob = s - torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    w = positive_weights(labels, positives).to(s.dtype)
    w_sum = w.sum(dim=1)
    has = w_sum > 0
    per_anchor = -(w * log_prob.masked_fill(eye, 0.0)).sum(dim=1) / w_sum.clamp_min(TINY)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return torch.where(has, per_anchor, zero).sum(), has.sum().to(s.dtype)


def bce_sum(logits: Tensor, labels: Tensor) -> Tensor:
    r"""``sum_b (1/C) sum_c BCE(logits_bc, y_bc)``: multi-label classification, a mean over the ``C`` findings and a
    sum over samples (``logits``, ``labels``: ``B x C``)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1).sum()


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    r"""``(z - mean_b z) / sqrt(var_b z + eps)`` per dimension over the batch (biased variance): ``B x D``."""
    centred = z - z.mean(dim=0, keepdim=True)
    return centred / (centred.pow(2).mean(dim=0, keepdim=True) + eps).sqrt()


def scr_penalty(z: Tensor, prefixes: Sequence[int], eps: float = 1e-5) -> Tensor:
    r"""Soft Collapse Regularization: the off-block cross-correlation between each prefix and its residual.

    .. math::  \hat z = \mathrm{standardize}(z), \quad C = \tfrac{1}{B} \hat z^\top \hat z \;(D \times D), \qquad
               L_{SCR} = \frac{1}{K-1} \sum_{k<K} \frac{1}{d_k (D - d_k)} \sum_{i \le d_k < j} C_{ij}^2

    ``z``: ``B x D`` (raw, not L2-normalised); the full prefix ``d_K = D`` has no residual and takes no part.
    """
    zs = standardize(z, eps)
    c = zs.t() @ zs / z.shape[0]
    blocks = [c[:d, d:].pow(2).mean() for d in prefixes[:-1]]
    if not blocks:
        raise ValueError("scr needs at least two prefixes (a prefix and a residual)")
    return torch.stack(blocks).mean()


def uniformity(u: Tensor, t: float = 2.0) -> Tensor:
    r"""Wang and Isola's (2020) uniformity: the log of the mean Gaussian potential over pairs ``i != j``.

    .. math::  L_{unif} = \log \frac{1}{B(B-1)} \sum_{i \ne j} e^{-t \|u_i - u_j\|^2}

    ``u``: ``B x d`` rows on the unit sphere. Squared distances from the Gram matrix (clamped at 0), a log-sum-exp.
    """
    b = u.shape[0]
    sq = u.pow(2).sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * u @ u.t()).clamp_min(0.0)
    off = ~torch.eye(b, dtype=torch.bool, device=u.device)
    return torch.logsumexp(-t * d2[off], dim=0) - math.log(b * (b - 1))


def spectral_gap(u: Tensor) -> Tensor:
    r"""The distance of the covariance spectrum of ``u`` (``B x d``) from a flat one.

    .. math::  \Sigma = \tfrac{1}{B} \sum_i (u_i - \bar u)(u_i - \bar u)^\top, \qquad
               L_{spec} = \Big\| \frac{\Sigma}{\mathrm{tr}\,\Sigma} - \frac{I_d}{d} \Big\|_F^2
               = \sum_j \Big(\frac{\lambda_j}{\sum_l \lambda_l} - \frac{1}{d}\Big)^2

    (no eigendecomposition needed: the matrix is symmetric). In ``[0, 1 - 1/d]``; 0 only when ``B > d`` can make the
    spectrum flat (rank ``Σ <= B - 1``).
    """
    centred = u - u.mean(dim=0, keepdim=True)
    cov = centred.t() @ centred / u.shape[0]
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return (cov / torch.diagonal(cov).sum().clamp_min(TINY) - eye / d).pow(2).sum()


def similarity_log_probs(u: Tensor, temperature: float) -> Tensor:
    """``B x B`` row log-softmax of ``u u^T / temperature`` over ``j != i`` (``-inf`` on the diagonal)."""
    eye = torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
    return F.log_softmax((u @ u.t() / temperature).masked_fill(eye, float("-inf")), dim=1)


def self_distillation(prefix: Tensor, full: Tensor, temperature: float = 0.1) -> Tensor:
    r"""The full embedding's batch-similarity rows teach a prefix's: a mean over anchors of a KL divergence.

    .. math::  q_i = \mathrm{softmax}_{j \ne i}\big(\mathrm{sg}(u^{(K)}_i)^\top \mathrm{sg}(u^{(K)}_j) / \tau\big),
               \quad p^{(k)}_i = \mathrm{softmax}_{j \ne i}\big(u^{(k)\top}_i u^{(k)}_j / \tau\big), \qquad
               L_{SD}^{(k)} = \frac{1}{B} \sum_i \mathrm{KL}(q_i \,\|\, p^{(k)}_i)

    ``prefix``: ``B x d_k``, ``full``: ``B x D`` (both raw; normalised here). ``full`` is **detached**: no gradient
    reaches the full embedding through its target role.
    """
    log_p = similarity_log_probs(F.normalize(prefix, dim=-1, eps=TINY), temperature)
    log_q = similarity_log_probs(F.normalize(full.detach(), dim=-1, eps=TINY), temperature)
    off = ~torch.eye(prefix.shape[0], dtype=torch.bool, device=prefix.device)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    kl = torch.where(off, log_q.exp() * (log_q - log_p), zero).sum(dim=1)
    return kl.mean()


# ---------------------------------------------------------------------------------------------------------------
@register("matryoshka")
class MatryoshkaLoss(DistillLoss):
    r"""Matryoshka representation learning over the student's ECG embedding: the task loss at every prefix.

    .. math::  L_M = \sum_{k=1}^{K} c_k\, L_{task}\big(e^{(k)}, y\big)

    ``e = EmbeddingHead(H_s)`` (``B x D``, the head belongs to this loss and is saved beside the student),
    ``e^{(k)} = e[:, :d_k]``, ``y``: ``B x C`` multi-hot findings; ``c_k``: ``prefix_weights`` (default all 1, as
    MRL). ``L_task``:

    * ``"supcon"`` (default): :func:`supcon_sums` on ``e^{(k)}``, divided by the micro-batch's anchors with a
      positive (0 when there is none): a batch-level term, weighted ``n / N`` (module docstring).
    * ``"bce"``: a linear classifier ``A_k: d_k -> C`` per prefix (the distiller's, not exported), :func:`bce_sum`
      divided by ``N`` = ``Denominators.samples``: exact under batch splitting.

    Options:
        prefixes: ``d_1 < ... < d_K`` (default 8, 16, 32, 64, 128; ``D = d_K``).
        positions: the head's pooled positions, ``"visual"`` (default), ``"prompt"``, ``"all"``.
        bias: a bias in the head (False).
        task: ``"supcon"`` (default) or ``"bce"``.
        num_labels: ``C`` (default: the 13 canonical findings, :data:`FINDING_CODES`).
        temperature: ``tau`` of the supervised contrastive loss (0.1).
        positives: ``"exact"`` (default: identical finding sets) or ``"jaccard"`` (weights ``|y_i ∩ y_j| /
            |y_i ∪ y_j|``).
        prefix_weights: ``c_k`` (K non-negative floats; default all 1).
        min_batch: the smallest micro-batch a batch-level part runs on (4; at least 2); smaller is refused.

    ``forward(student, teacher=None, denominators=None, *, findings=None)``: ``findings`` (``B x C`` multi-hot,
    0/1) or ``student.findings`` when the side carries it. Needs no teacher. Logs ``loss``, ``task``,
    ``task_<d_k>`` (each as it enters the loss, before ``c_k``), ``anchors`` (supcon: the micro-batch's anchors
    with a positive; the same for every prefix), ``norm`` (mean ``||e||``). Produces
    ``extras["elastic_embedding"]`` (``B x D``, with its graph).
    """

    unit = "samples"
    needs_teacher = False
    produces = frozenset({"elastic_embedding"})

    def __init__(
        self,
        *,
        context: LossContext | None = None,
        prefixes: Sequence[int] = DEFAULT_PREFIXES,
        positions: str = "visual",
        bias: bool = False,
        task: str = "supcon",
        num_labels: int | None = None,
        temperature: float = 0.1,
        positives: str = "exact",
        prefix_weights: Sequence[float] | None = None,
        min_batch: int = 4,
    ) -> None:
        super().__init__()
        context = context or LossContext()
        context.need("student_hidden", loss=self.name)
        self.head = EmbeddingHead(context.student_hidden, prefixes=prefixes, positions=positions, bias=bias)
        self.prefixes = self.head.prefixes
        self.task = check_choice("task", task, TASKS)
        self.num_labels = len(FINDING_CODES) if num_labels is None else int(num_labels)
        if self.num_labels < 1:
            raise ValueError(f"{self.name}: num_labels must be >= 1, got {num_labels}")
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.positives = check_choice("positives", positives, POSITIVES)
        weights = [1.0] * len(self.prefixes) if prefix_weights is None else [float(w) for w in prefix_weights]
        if len(weights) != len(self.prefixes) or any(w < 0 for w in weights):
            raise ValueError(
                f"{self.name}: prefix_weights must be {len(self.prefixes)} non-negative floats, got {prefix_weights}"
            )
        self.prefix_weights = tuple(weights)
        if int(min_batch) < 2:
            raise ValueError(f"{self.name}: min_batch must be >= 2 (a batch-level term compares samples)")
        self.min_batch = int(min_batch)
        self.classifiers = (
            nn.ModuleList(nn.Linear(d, self.num_labels) for d in self.prefixes) if self.task == "bce" else None
        )

    # ---- description -----------------------------------------------------------------------------------------
    @property
    def batch_level(self) -> bool:
        """Whether any part compares the samples of a micro-batch (then ``min_batch`` applies)."""
        return self.task == "supcon"

    def extra_repr(self) -> str:
        return (
            f"prefixes={list(self.prefixes)}, positions={self.head.config.positions!r}, task={self.task!r}, "
            f"temperature={self.temperature}, positives={self.positives!r}, weights={list(self.prefix_weights)}, "
            f"min_batch={self.min_batch}"
        )

    # ---- computation -----------------------------------------------------------------------------------------
    def _findings(self, student: SideOutputs, findings: Tensor | None) -> Tensor:
        y = findings if findings is not None else getattr(student, "findings", None)
        if y is None:
            raise ValueError(
                f"{self.name} needs the records' findings: pass findings= (B x C multi-hot) or fill "
                "SideOutputs.findings (evl_ecg.distill.elastic.findings_multi_hot)"
            )
        if y.ndim != 2 or y.shape[0] != student.batch_size:
            raise ValueError(f"{self.name}: findings must be B x C with B={student.batch_size}, got {tuple(y.shape)}")
        if self.task == "bce" and y.shape[1] != self.num_labels:
            raise ValueError(f"{self.name}: findings have {y.shape[1]} columns, the classifiers {self.num_labels}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"{self.name}: findings must be multi-hot (0/1)")
        return y.to(student.hidden.device)

    def _check_batch(self, b: int) -> None:
        if self.batch_level and b < self.min_batch:
            parts = ", ".join(self._batch_level_names())
            raise ValueError(
                f"{self.name}: {parts} compare the samples of one micro-batch and need at least {self.min_batch} of "
                f"them (min_batch), got {b}; raise per_device_train_batch_size or drop the last, smaller batch"
            )

    def _batch_level_names(self) -> list[str]:
        return ["the supervised contrastive task"] if self.task == "supcon" else []

    def _task(self, z: Tensor, y: Tensor, den: Tensor | float, scale: Tensor | float) -> tuple[Tensor, dict]:
        """``sum_k c_k L_task(e^(k))`` as it enters the loss, and its logs."""
        logs: dict[str, Any] = {}
        total = z.new_zeros(())
        anchors = None
        for k, d in enumerate(self.prefixes):
            if self.task == "supcon":
                s, n = supcon_sums(z[:, :d], y, self.temperature, self.positives)
                term = scale * s / n.clamp_min(1)
                anchors = n.detach() if anchors is None else anchors
            else:
                logits = self.classifiers[k](z[:, :d].to(self.classifiers[k].weight.dtype)).to(z.dtype)
                term = bce_sum(logits, y) / den
            logs[f"task_{d}"] = term.detach()
            total = total + self.prefix_weights[k] * term
        logs["task"] = total.detach()
        if anchors is not None:
            logs["anchors"] = anchors
        return total, logs

    def _extra(self, z: Tensor, scale: Tensor | float) -> tuple[Tensor | None, dict]:
        """The parts a subclass adds (``mic``): their weighted sum as it enters the loss, and logs."""
        return None, {}

    def forward(
        self,
        student: SideOutputs,
        teacher: SideOutputs | None = None,
        denominators: Denominators | None = None,
        *,
        findings: Tensor | None = None,
    ) -> LossOutput:
        y = self._findings(student, findings)
        b = student.batch_size
        self._check_batch(b)
        embedding = self.head.embed(student)  # B x D, under the ambient autocast
        dtype = compute_dtype(student.hidden)
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            z = embedding.to(dtype)
            den = (denominators or Denominators()).get(self.unit, float(b))
            scale = b / den  # a micro-batch value's share of the global mean
            loss, logs = self._task(z, y, den, scale)
            extra, extra_logs = self._extra(z, scale)
            if extra is not None:
                loss = loss + extra
            with torch.no_grad():
                norm = z.norm(dim=-1).mean()
        logs.update(extra_logs)
        return LossOutput(
            loss=loss,
            logs={"loss": loss.detach(), **logs, "norm": norm},
            extras={"elastic_embedding": embedding},
        )


@register("mic")
class MICLoss(MatryoshkaLoss):
    r"""MIC: Matryoshka plus SCR, SIR and self-distillation (our reading of the MIC abstract; docs/elastic.md).

    .. math::  L_{MIC} = L_M + w_{scr} L_{SCR} + w_{sir} L_{SIR} + w_{sd} L_{SD}

    * ``L_SCR``: :func:`scr_penalty` (every prefix ``k < K`` against the dimensions after it).
    * ``L_SIR`` = mean over the low-dimensional prefixes (``d_k <= sir_max_dim``, default ``D // 4``) of
      :func:`uniformity` of ``u^{(k)} = e^{(k)} / ||e^{(k)}||`` (``sir="uniformity"``, default) or of
      :func:`spectral_gap` (``sir="spectral"``).
    * ``L_SD`` = mean over prefixes ``k < K`` of :func:`self_distillation` (the full embedding's rows, detached,
      teach the prefix's).

    All three are batch-level: computed over the micro-batch and weighted ``n / N`` (module docstring). A weight of
    0 switches its part off (not computed, not logged), for ablations; with all three at 0 this is ``matryoshka``.

    Options (beyond :class:`MatryoshkaLoss`'s): ``scr_weight`` (1.0), ``sir_weight`` (1.0), ``sd_weight`` (1.0),
    ``sir`` (``"uniformity"`` | ``"spectral"``), ``sir_max_dim`` (None: ``D // 4``), ``uniformity_t`` (2.0, Wang and
    Isola's ``t``), ``sd_temperature`` (0.1), ``eps`` (1e-5, the variance floor of SCR's standardisation). The
    defaults are untuned. Logs, beyond ``matryoshka``'s: ``scr``, ``sir``, ``sd`` (unweighted, as scaled by
    ``n / N``).
    """

    def __init__(
        self,
        *,
        context: LossContext | None = None,
        prefixes: Sequence[int] = DEFAULT_PREFIXES,
        positions: str = "visual",
        bias: bool = False,
        task: str = "supcon",
        num_labels: int | None = None,
        temperature: float = 0.1,
        positives: str = "exact",
        prefix_weights: Sequence[float] | None = None,
        min_batch: int = 4,
        scr_weight: float = 1.0,
        sir_weight: float = 1.0,
        sd_weight: float = 1.0,
        sir: str = "uniformity",
        sir_max_dim: int | None = None,
        uniformity_t: float = 2.0,
        sd_temperature: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        # every option spelled out (not **options), so that the training config's checker names a mistyped one
        super().__init__(
            context=context,
            prefixes=prefixes,
            positions=positions,
            bias=bias,
            task=task,
            num_labels=num_labels,
            temperature=temperature,
            positives=positives,
            prefix_weights=prefix_weights,
            min_batch=min_batch,
        )
        self.scr_weight, self.sir_weight, self.sd_weight = float(scr_weight), float(sir_weight), float(sd_weight)
        if min(self.scr_weight, self.sir_weight, self.sd_weight) < 0:
            raise ValueError("mic: scr_weight, sir_weight and sd_weight must be >= 0")
        if len(self.prefixes) < 2 and (self.scr_weight > 0 or self.sd_weight > 0):
            raise ValueError("mic: SCR and self-distillation need at least two prefixes")
        self.sir = check_choice("sir", sir, SIR_FORMS)
        self.sir_max_dim = self.head.dim // 4 if sir_max_dim is None else int(sir_max_dim)
        self.sir_prefixes = tuple(d for d in self.prefixes if d <= self.sir_max_dim)
        if self.sir_weight > 0 and not self.sir_prefixes:
            raise ValueError(
                f"mic: no prefix of {list(self.prefixes)} is at most sir_max_dim={self.sir_max_dim}; "
                "raise sir_max_dim or set sir_weight: 0"
            )
        if uniformity_t <= 0 or sd_temperature <= 0 or eps <= 0:
            raise ValueError("mic: uniformity_t, sd_temperature and eps must be > 0")
        self.uniformity_t, self.sd_temperature, self.eps = float(uniformity_t), float(sd_temperature), float(eps)

    @property
    def batch_level(self) -> bool:
        return super().batch_level or self.scr_weight > 0 or self.sir_weight > 0 or self.sd_weight > 0

    def _batch_level_names(self) -> list[str]:
        names = super()._batch_level_names()
        names += [n for n, w in (("SCR", self.scr_weight), ("SIR", self.sir_weight), ("SD", self.sd_weight)) if w > 0]
        return names

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", w_scr={self.scr_weight}, w_sir={self.sir_weight} ({self.sir!r}, "
            f"prefixes {list(self.sir_prefixes)}), w_sd={self.sd_weight}, sd_temperature={self.sd_temperature}"
        )

    def _extra(self, z: Tensor, scale: Tensor | float) -> tuple[Tensor | None, dict]:
        logs: dict[str, Any] = {}
        total: Tensor | None = None

        def add(name: str, weight: float, value: Tensor) -> None:
            nonlocal total
            value = scale * value
            logs[name] = value.detach()
            total = weight * value if total is None else total + weight * value

        if self.scr_weight > 0:
            add("scr", self.scr_weight, scr_penalty(z, self.prefixes, self.eps))
        if self.sir_weight > 0:
            if self.sir == "uniformity":
                parts = [uniformity(EmbeddingHead.truncate(z, d), self.uniformity_t) for d in self.sir_prefixes]
            else:
                parts = [spectral_gap(EmbeddingHead.truncate(z, d)) for d in self.sir_prefixes]
            add("sir", self.sir_weight, torch.stack(parts).mean())
        if self.sd_weight > 0:
            parts = [self_distillation(z[:, :d], z, self.sd_temperature) for d in self.prefixes[:-1]]
            add("sd", self.sd_weight, torch.stack(parts).mean())
        return total, logs


def embedding_head_of(objective: nn.Module) -> EmbeddingHead | None:
    """The :class:`EmbeddingHead` an objective trains (through ``matryoshka`` or ``mic``), or ``None``.

    Two terms with a head each (``matryoshka`` and ``mic`` in one objective) train two heads: refused here, since
    only one can be saved beside the student.
    """
    heads = [m for m in objective.modules() if isinstance(m, EmbeddingHead)]
    if len(heads) > 1:
        raise ValueError(f"the objective trains {len(heads)} embedding heads; use one of 'matryoshka' or 'mic'")
    return heads[0] if heads else None


__all__ = [
    "MICLoss",
    "MatryoshkaLoss",
    "bce_sum",
    "embedding_head_of",
    "findings_multi_hot",
    "positive_weights",
    "scr_penalty",
    "self_distillation",
    "spectral_gap",
    "standardize",
    "supcon_sums",
    "uniformity",
]
