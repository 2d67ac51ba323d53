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


class TrainingDone(Exception):
    """Raised by :class:`StopAtMaxSteps` before a step past ``max_steps``: the run has nothing left to train."""


class StopAtMaxSteps(TrainerCallback):
    """Stop before an optimiser step past ``max_steps``. transformers' Trainer, resumed from a checkpoint written at
    ``max_steps`` (a run killed between its last checkpoint and its export), runs one more step before it checks
    the limit; this raises :class:`TrainingDone` at that step's start, before its forward pass, with the
    checkpoint's weights and state loaded (:func:`evl_ecg.train.pipeline.run` catches it and exports them)."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise TrainingDone(f"step {state.global_step} of {state.max_steps}: nothing left to train")


__all__ = ["ObjectiveStep", "StopAtMaxSteps", "TrainingDone"]
