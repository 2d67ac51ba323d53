"""The registry of named distillation losses and the one signature they share.

Every loss (EVL-ECG's terms, CE, each baseline) is a :class:`DistillLoss`: an ``nn.Module`` (its trainable
parts, such as MHCA or a projection, belong to it and so to the objective, never to the student) that sees
only :class:`~evl_ecg.outputs.SideOutputs` of both sides and returns a :class:`LossOutput`. Register one with
``@register("name")``; build one by name with :func:`build_loss`.

Normalisation. A token-mean divides by the number of its valid units. Under gradient accumulation or data
parallelism that number must be the *global* count over the accumulated batch (../shared/SPEC.md section 2),
so the trainer passes :class:`Denominators`; a loss that gets ``None`` uses its local count.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from evl_ecg.outputs import IGNORE_INDEX, SideOutputs


@dataclass
class Denominators:
    """Global counts of the units losses average over (summed over accumulation steps and ranks).

    Each is the count for the *whole* accumulated batch; ``None`` means "use the local count".

    Attributes:
        response_tokens: supervised student tokens (CE, logit losses), i.e. the :func:`next_token_targets` mask
            sum (a supervised label at a valid position whose previous position is valid too).
        teacher_response_tokens: supervised teacher tokens (teacher-space logit losses).
        student_positions: student positions taking part in hidden-state losses (MHCA).
        student_pairs: (sample, i, j) pairs of such positions, i != j (relation losses).
        samples: samples (per-sample means such as OT).
    """

    response_tokens: float | Tensor | None = None
    teacher_response_tokens: float | Tensor | None = None
    student_positions: float | Tensor | None = None
    student_pairs: float | Tensor | None = None
    samples: float | Tensor | None = None

    def get(self, unit: str, local: float | Tensor) -> Tensor | float:
        """The global count of ``unit`` if known, else ``local``; never below 1."""
        value = getattr(self, unit)
        value = local if value is None else value
        if isinstance(value, Tensor):
            return value.clamp_min(1)
        return max(float(value), 1.0)


@dataclass
class LossContext:
    """What a loss may need to know of the two models when it is built (sizes, vocabularies), never the models.

    The trainer fills it from the adapters; tests fill it by hand. Fields a loss does not use may stay ``None``.

    Attributes:
        student_hidden / teacher_hidden: hidden sizes D_s, D_t of the language models.
        student_visual / teacher_visual: widths of the visual tokens fed into each language model.
        student_vocab / teacher_vocab: token strings by id (cross-vocabulary maps).
        student_layers / teacher_layers: decoder layer counts (TinyBERT's layer map).
        student_heads / teacher_heads: attention head counts.
    """

    student_hidden: int | None = None
    teacher_hidden: int | None = None
    student_visual: int | None = None
    teacher_visual: int | None = None
    student_vocab: list[str] | None = None
    teacher_vocab: list[str] | None = None
    student_layers: int | None = None
    teacher_layers: int | None = None
    student_heads: int | None = None
    teacher_heads: int | None = None

    def need(self, *names: str, loss: str = "loss") -> None:
        """Raise a clear error if any of ``names`` is unset."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{loss} needs LossContext.{', '.join(missing)}")


@dataclass
class LossOutput:
    """A loss value (scalar tensor) and named figures to log (floats or 0-d tensors).

    ``extras`` carries tensors one loss hands to another inside an objective (e.g. MHCA's aligned teacher
    ``aligned_teacher`` for the relation loss): a loss lists what it produces in ``produces`` and what it reads in
    ``consumes``; the objective passes them as keyword arguments. Not logged.
    """

    loss: Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


#: The units a loss may average over (the fields of :class:`Denominators`), each counted by the trainer over the
#: accumulated batch; those of :data:`POSITION_UNITS` are counted over the hidden-state positions
#: (``hidden_positions``), so a loss of such a unit averages over the same positions.
UNITS: tuple[str, ...] = ("response_tokens", "teacher_response_tokens", "student_positions", "student_pairs", "samples")
POSITION_UNITS: tuple[str, ...] = ("student_positions", "student_pairs")


class DistillLoss(nn.Module):
    """Base class of every registered loss. A loss declares what the rest of the toolkit needs to know of it:

    * ``requires``: the optional :class:`SideOutputs` fields it reads of either side (e.g. ``{"visual"}``), so that
      adapters compute only what is needed (an instance may narrow it from its options);
    * ``unit``: what its mean divides by, one of :data:`UNITS`;
    * ``needs_teacher``: whether it reads the teacher side at all (False for CE);
    * ``teacher_fields``: the teacher's output fields a teacher-output cache must hold for it
      (``hidden``, ``logits``, ``visual``, ``all_hidden``, ``attentions``, ``embedding_weight``, ``lm_head_weight``),
      or :meth:`teacher_reads` where they depend on the options; ``None`` (undeclared): the loss runs with the live
      teacher only, and a cache refuses it, naming it;
    * :meth:`option_names`: the options it takes (its constructor's keyword arguments but ``context``).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    #: the unit of the loss's mean: one of :data:`UNITS`.
    unit: ClassVar[str] = "response_tokens"
    #: whether the loss reads the teacher side (False for CE: an objective of such terms needs no teacher).
    needs_teacher: ClassVar[bool] = True
    #: the teacher output fields a cache stores for this loss (``None``: undeclared, live teacher only).
    teacher_fields: ClassVar[frozenset[str] | None] = None
    #: names of :attr:`LossOutput.extras` this loss produces / reads (as keyword arguments of ``forward``).
    produces: ClassVar[frozenset[str]] = frozenset()
    consumes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this loss takes: its constructor's keyword arguments but ``context``."""
        params = inspect.signature(cls.__init__).parameters.values()
        return frozenset(p.name for p in params if p.name not in ("self", "context") and p.kind is not p.VAR_KEYWORD)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default value of each option that has one."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.name in cls.option_names() and p.default is not p.empty}

    @classmethod
    def teacher_reads(cls, options: dict[str, Any]) -> frozenset[str] | None:
        """The teacher fields a cache must hold for this loss with ``options`` (its defaults merged with the
        config's): :attr:`teacher_fields` unless a loss's options change them. ``None``: undeclared."""
        return cls.teacher_fields

    def forward(
        self,
        student: SideOutputs,
        teacher: SideOutputs | None,
        denominators: Denominators | None = None,
    ) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.name


_REGISTRY: dict[str, type[DistillLoss]] = {}


def register(name: str) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    """Class decorator: register a :class:`DistillLoss` subclass under ``name``."""

    def deco(cls: type[DistillLoss]) -> type[DistillLoss]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        if cls.unit not in UNITS:
            raise ValueError(f"loss {name!r}: unit {cls.unit!r} is not one of {', '.join(UNITS)}")
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove the loss registered as ``name`` (a plugin's or a test's; a name not registered is ignored)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, type[DistillLoss]]:
    """All registered losses, by name (importing :mod:`evl_ecg.distill` registers the built-in ones)."""
    return dict(_REGISTRY)


def build_loss(name: str, context: LossContext | None = None, **kwargs: Any) -> DistillLoss:
    """Instantiate the loss registered as ``name``: ``cls(context=context, **kwargs)``.

    Every registered class takes ``context`` (a :class:`LossContext`) as a keyword argument, plus its own options.
    """
    if name not in _REGISTRY:
        raise KeyError(f"no loss registered as {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](context=context or LossContext(), **kwargs)


def next_token_targets(side: SideOutputs) -> tuple[Tensor, Tensor]:
    """``(targets, mask)`` (``B x L``): :meth:`SideOutputs.next_token_targets` with both ends of the shift valid.

    ``targets[:, l] = labels[:, l + 1]``; ``mask[:, l]`` needs positions ``l`` *and* ``l + 1`` valid
    (``attention_mask``) and a supervised target, so that the label of the first padded position after a
    right-padded sample (or anything else under padding) never counts, whatever value the caller left there.
    Where ``mask`` is False the target is ``-100``.
    """
    targets, mask = side.next_token_targets()
    next_valid = torch.zeros_like(side.attention_mask)
    next_valid[:, :-1] = side.attention_mask[:, 1:]
    mask = mask & next_valid
    return torch.where(mask, targets, torch.full_like(targets, IGNORE_INDEX)), mask


def masked_mean_denominator(mask: Tensor) -> Tensor:
    """The local count of ``True`` entries as a float tensor (for :meth:`Denominators.get`)."""
    return mask.sum().to(torch.float32)
