"""Distillation losses (EVL-ECG's terms and the baselines), their registry and the weighted objective.

Losses see tensors and masks only (:class:`~evl_ecg.outputs.SideOutputs`); no model code. Importing this package
registers the built-in losses: ``ce``, ``mhca``, ``ot``, ``relation``, the elastic-embedding losses ``matryoshka`` and
``mic`` (:mod:`evl_ecg.distill.elastic`, off by default), the label-space loss ``label_kd``
(:mod:`evl_ecg.distill.label_space`) and, when present, the baselines.
"""

import evl_ecg.distill.elastic  # noqa: F401  (registers matryoshka and mic)
import evl_ecg.distill.label_space  # noqa: F401  (registers label_kd)
from evl_ecg.distill.losses import CrossEntropyLoss, MHCALoss, OTLoss, RelationLoss  # registers the built-in losses
from evl_ecg.distill.objective import Objective, ObjectiveConfig
from evl_ecg.distill.presets import get_preset, list_presets
from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    build_loss,
    register,
    registered,
)
from evl_ecg.distill.sinkhorn import SinkhornResult, sinkhorn

try:  # the baselines register themselves on import; the package is optional
    import evl_ecg.distill.baselines  # noqa: F401
except ModuleNotFoundError as _err:  # only a missing package is tolerated, not an error inside it
    if _err.name != "evl_ecg.distill.baselines":
        raise

__all__ = [
    "CrossEntropyLoss",
    "Denominators",
    "DistillLoss",
    "LossContext",
    "LossOutput",
    "MHCALoss",
    "OTLoss",
    "Objective",
    "ObjectiveConfig",
    "RelationLoss",
    "SinkhornResult",
    "build_loss",
    "get_preset",
    "list_presets",
    "register",
    "registered",
    "sinkhorn",
]
