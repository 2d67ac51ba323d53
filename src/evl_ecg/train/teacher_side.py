"""The teacher's side of a training batch: one object, whichever source serves it.

A KD batch carries the teacher's view of the same records. Two sources exist, and the dataset, the collator and the
trainer hold either through the one interface below (:class:`TeacherSide`), so that nothing downstream asks which:

- :class:`LiveTeacher`: the teacher's adapter encodes each record's conversation in the dataset (``encodes``), pads
  them in the collator (:meth:`~TeacherSide.batch`: the batch's ``"teacher"``) and runs forward, frozen, in the
  trainer (:meth:`~TeacherSide.outputs`).
- :class:`~evl_ecg.train.teacher_cache.TeacherCache`: the same tensors read from a cache built once, by record index
  (the batch's ``"indices"`` and ``"teacher_cache"``); the teacher's weights are not loaded.

The pool's answers under a label budget are not a third source: :func:`evl_ecg.data.budget.compose` writes the
teacher's answer into each pool record's conversation, so both sources serve those records unchanged (CE on them is
sequence-level distillation, and every registered loss sees the same conversation on both sides).

:func:`teacher_side` turns what a caller holds (an adapter, a side, or nothing) into a side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from evl_ecg.models.base import Adapter
from evl_ecg.outputs import SideOutputs


@runtime_checkable
class TeacherSide(Protocol):
    """What the dataset, the collator and the trainer need of the teacher's side (see the module docstring)."""

    #: the source's name in provenance and messages ("live", "cache")
    kind: str
    #: the adapter that encodes the teacher's conversation per sample in the dataset; ``None``: nothing to encode
    encodes: Adapter | None

    def prepare(self, device: torch.device) -> None:
        """Ready the source for training on ``device`` (the live teacher: frozen, in eval mode, moved there)."""

    def batch(
        self, samples: Sequence[Mapping[str, Any]], ids: Sequence[str], *, padding_side: str = "right"
    ) -> dict[str, Any]:
        """The entries the collator adds to a batch of ``samples`` (record ids ``ids``), padded on ``padding_side``."""

    def outputs(self, batch: Mapping[str, Any], requires: Iterable[str]) -> SideOutputs | None:
        """The teacher's outputs for a collated ``batch`` (``None`` if the batch holds no teacher entries), with
        at least the fields ``requires`` names; detached."""

    def describe(self) -> dict[str, Any]:
        """What ``provenance.json`` records of the source."""

    def loss_context(self) -> dict[str, Any]:
        """The teacher's sizes and vocabulary for the loss terms' modules
        (:meth:`~evl_ecg.models.base.Adapter.loss_context`)."""


class LiveTeacher:
    """The teacher model itself, frozen, run on every batch (see the module docstring).

    Args:
        adapter: the teacher's adapter.
        device: where it runs (default: the training device :meth:`prepare` receives).
    """

    kind = "live"

    def __init__(self, adapter: Adapter, device: str | torch.device | None = None) -> None:
        self.adapter = adapter
        self.device = torch.device(device) if device else None

    @property
    def encodes(self) -> Adapter:
        return self.adapter

    def prepare(self, device: torch.device) -> None:
        self.device = self.device or torch.device(device)
        self.adapter.model.eval()
        self.adapter.model.requires_grad_(False)
        # the Trainer places (and, under DeepSpeed or FSDP, wraps and shards) only its model, the student: the frozen
        # teacher stays a plain inference-only module, whole on its own device
        self.adapter.model.to(self.device)

    def batch(
        self, samples: Sequence[Mapping[str, Any]], ids: Sequence[str], *, padding_side: str = "right"
    ) -> dict[str, Any]:
        encoded = [s.get("teacher") for s in samples]
        if any(t is None for t in encoded):
            raise ValueError("PairedCollator has a teacher but a sample was encoded without one")
        return {"teacher": self.adapter.collate(encoded, padding_side=padding_side)}

    def outputs(self, batch: Mapping[str, Any], requires: Iterable[str]) -> SideOutputs | None:
        inputs = batch.get("teacher")
        if inputs is None:
            return None
        if self.device is not None:
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            self.adapter.model.eval()
            return self.adapter.forward(inputs, requires=set(requires)).detached()

    def describe(self) -> dict[str, Any]:
        return {"source": self.kind, "model": type(self.adapter.model).__name__}

    def loss_context(self) -> dict[str, Any]:
        return self.adapter.loss_context()


def teacher_side(teacher: Adapter | TeacherSide | None) -> TeacherSide | None:
    """``teacher`` as a :class:`TeacherSide`: an adapter becomes a :class:`LiveTeacher`; a side, or ``None``, is
    returned as it is."""
    if teacher is None or isinstance(teacher, LiveTeacher):
        return teacher
    if isinstance(teacher, Adapter):
        return LiveTeacher(teacher)
    if isinstance(teacher, TeacherSide):
        return teacher
    raise TypeError(f"a teacher side is an Adapter or a TeacherSide, got {type(teacher).__name__}")


__all__ = ["LiveTeacher", "TeacherSide", "teacher_side"]
