r"""RKD: Relational Knowledge Distillation (Park et al., CVPR 2019, arXiv 1904.05068), over the samples of a batch.

Official code: ``lenscloth/RKD`` ``metric/loss.py`` (``RkdDistance``, ``RKdAngle``); torchdistill ``RKDLoss``
(``reference/kd-baselines.md`` section 1.7). With ``e_b`` the pooled hidden state of sample ``b`` (``B x D``; the
teacher's under ``no_grad``):

.. math::

    d_{ij} = \|e_i - e_j\|_2, \quad \hat d_{ij} = \frac{d_{ij}}{\mathrm{mean}\{d_{kl} > 0\}}, \qquad
    L_D = \frac{1}{B^2} \sum_{i,j} \mathrm{SmoothL1}(\hat d^s_{ij}, \hat d^t_{ij})

    \psi_{ijk} = \Big\langle \frac{e_j - e_i}{\|e_j - e_i\|}, \frac{e_k - e_i}{\|e_k - e_i\|} \Big\rangle, \qquad
    L_A = \frac{1}{B^3} \sum_{i,j,k} \mathrm{SmoothL1}(\psi^s_{ijk}, \psi^t_{ijk})

    L_{RKD} = w_D L_D + w_A L_A

``d`` is computed as the code does (``sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, 1e-12))``, diagonal 0); SmoothL1 with beta 1
(Huber), element means. Relations are dimension-free, so no projection is learned. Needs ``B >= 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evl_ecg.distill.baselines._common import check_choice, need_teacher, no_autocast
from evl_ecg.distill.registry import Denominators, DistillLoss, LossContext, LossOutput, register
from evl_ecg.outputs import SideOutputs, compute_dtype

POOLINGS = ("mean", "last")


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """``B x D``: the mean of ``hidden`` (``B x L x D``) over ``mask`` (``B x L``), or its last masked position."""
    if how == "mean":
        h = torch.where(mask[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        return h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(hidden.dtype)
    idx = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    """``B x B`` Euclidean distances as RKD's code computes them (clamped squared form, zero diagonal)."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device))


def normalized_distances(e: Tensor) -> Tensor:
    d = pdist(e)
    pos = d > 0
    return d / (d.sum() / pos.sum().clamp_min(1).to(d.dtype)).clamp_min(1e-12)


def angles(e: Tensor) -> Tensor:
    """``B x B x B``: ``psi[i, j, k] = <normalize(e_j - e_i), normalize(e_k - e_i)>``."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = e_j - e_i
    return diff @ diff.transpose(1, 2)


@register("rkd")
class RKDLoss(DistillLoss):
    """RKD distance and angle losses between the batch's pooled student and teacher hidden states.

    Options:
        dist_weight (1.0) / angle_weight (2.0): the official code's ``--dist_ratio 1 --angle_ratio 2``.
        pooling: ``"mean"`` over the positions (default) or ``"last"`` (the last of them).
        positions: ``"all"`` (default), ``"response"`` or ``"text"`` (:meth:`SideOutputs.position_mask`).

    Logs: ``loss``, ``distance``, ``angle``.
    """

    unit = "samples"
    teacher_fields = frozenset({"hidden"})

    def __init__(
        self,
        *,
        context: LossContext,
        dist_weight: float = 1.0,
        angle_weight: float = 2.0,
        pooling: str = "mean",
        positions: str = "all",
    ) -> None:
        super().__init__()
        self.dist_weight = float(dist_weight)
        self.angle_weight = float(angle_weight)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.positions = check_choice("positions", positions, ("all", "response", "text"))

    def extra_repr(self) -> str:
        return (
            f"w_D={self.dist_weight}, w_A={self.angle_weight}, pooling={self.pooling!r}, positions={self.positions!r}"
        )

    def forward(
        self, student: SideOutputs, teacher: SideOutputs | None, denominators: Denominators | None = None
    ) -> LossOutput:
        teacher = need_teacher(teacher, self.name)
        if student.batch_size < 2:
            raise ValueError(f"rkd relates the samples of a batch and needs batch size >= 2, got {student.batch_size}")
        dtype = compute_dtype(student.hidden)
        with no_autocast(student.hidden):
            e_s = pool(student.hidden.to(dtype), student.position_mask(self.positions), self.pooling)
            with torch.no_grad():
                e_t = pool(teacher.hidden.detach().to(dtype), teacher.position_mask(self.positions), self.pooling)
                d_t, a_t = normalized_distances(e_t), angles(e_t)
            dist = F.smooth_l1_loss(normalized_distances(e_s), d_t, beta=1.0)
            angle = F.smooth_l1_loss(angles(e_s), a_t, beta=1.0)
            loss = self.dist_weight * dist + self.angle_weight * angle
        return LossOutput(loss=loss, logs={"loss": loss.detach(), "distance": dist.detach(), "angle": angle.detach()})
