"""Trainer callbacks that tell the objective where training stands.

:class:`ObjectiveStep` hands the optimiser step about to run to the objective (``Objective.set_step``) before every
step, so that step-dependent settings (``alpha_warmup``) follow ``TrainerState.global_step``: the same on every rank,
under gradient accumulation, and after a resume.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class ObjectiveStep(TrainerCallback):
    """Call ``objective.set_step(state.global_step)`` at the start of training and of every optimiser step."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective

    def _set(self, state: Any) -> None:
        if hasattr(self.objective, "set_step"):
            self.objective.set_step(state.global_step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._set(state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._set(state)


__all__ = ["ObjectiveStep"]
