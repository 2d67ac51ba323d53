"""Distillation losses (EVL-ECG's terms and the baselines), their registry and the weighted objective.

Losses see tensors and masks only (:class:`~evl_ecg.outputs.SideOutputs`); no model code.
"""

from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    build_loss,
    register,
    registered,
)

__all__ = ["Denominators", "DistillLoss", "LossContext", "LossOutput", "build_loss", "register", "registered"]
