"""The registry of named distillation losses and the one signature they share.

Every loss (EVL-ECG's terms, CE, each baseline) is a :class:`DistillLoss`: an ``nn.Module`` (its trainable
parts, such as MHCA or a projection, belong to it and so to the objective, never to the student) that sees
only :class:`~evl_ecg.outputs.SideOutputs` of both sides and returns a :class:`LossOutput`. Register one with
``@register("name")``; build one by name with :func:`build_loss`.

Normalisation. A token-mean divides by the number of its valid units. Under gradient accumulation or data
parallelism that number must be the *global* count over the accumulated batch (docs/distill.md, "Normalisation
under accumulation"), so the trainer passes :class:`Denominators`; a loss that gets ``None`` uses its local count.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from evl_ecg.outputs import IGNORE_INDEX, SideOutputs


@dataclass(frozen=True)
class Unit:
    """A count a loss's mean may divide by (its ``unit``), counted by the trainer over the whole accumulated batch on
    every rank (:func:`evl_ecg.train.trainer.count_denominators`).

    Attributes:
        name: what losses declare as their ``unit``.
        count: ``(student batch, positions) -> local count``: the batch's ``labels`` / ``attention_mask`` /
            ``input_ids`` (``B x L``) and the hidden-state position mask (``B x L`` bool, ``hidden_positions``).
        positions: counted over the hidden-state positions: a loss of this unit must average over the same set
            (it gets ``hidden_positions`` as its ``positions`` option).
        help: one line for the docs.
    """

    name: str
    count: Callable[[Any, Tensor], Any]
    positions: bool = False
    help: str = ""


def _response_tokens(batch: Any, positions: Tensor) -> Any:
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def _ce_tokens(batch: Any, positions: Tensor) -> Any:
    supervised = batch["labels"][:, 1:] != IGNORE_INDEX
    ce_mask = batch.get("ce_mask")
    return (supervised if ce_mask is None else supervised & ce_mask.view(-1, 1).to(supervised.device)).sum()


def _student_pairs(batch: Any, positions: Tensor) -> Any:
    n = positions.sum(dim=1).to(torch.float64)
    return (n * (n - 1)).sum()


_UNITS: dict[str, Unit] = {}


def register_unit(unit: Unit) -> Unit:
    """Add a unit (a plugin loss that averages over something new brings its count with it)."""
    if unit.name in _UNITS and _UNITS[unit.name] != unit:
        raise ValueError(f"unit {unit.name!r} is already registered")
    _UNITS[unit.name] = unit
    return unit


for _unit in (
    Unit("response_tokens", _response_tokens, help="supervised student tokens (logit losses)"),
    Unit("ce_tokens", _ce_tokens, help="supervised student tokens of answers that are CE targets (CE)"),
    Unit("student_positions", lambda b, pos: pos.sum(), True, "student positions of the hidden-state losses"),
    Unit("student_pairs", _student_pairs, True, "(sample, i, j) pairs of such positions, i != j (relation losses)"),
    Unit("samples", lambda b, pos: b["labels"].shape[0], help="samples (per-sample means such as OT)"),
):
    register_unit(_unit)
_BUILT_IN_UNITS = frozenset(_UNITS)


def unregister_unit(name: str) -> None:
    """Remove a unit a plugin or a test registered (a built-in one stays; a name not registered is ignored)."""
    if name not in _BUILT_IN_UNITS:
        _UNITS.pop(name, None)


def units() -> dict[str, Unit]:
    """The registered units by name."""
    return dict(_UNITS)


class Denominators:
    """Global counts of the units losses average over (summed over accumulation steps and ranks), by unit name:
    ``Denominators(response_tokens=8, samples=2)``; ``denominators.samples``. A unit not given is ``None``: "use
    the local count".
    """

    def __init__(self, **counts: float | Tensor | None) -> None:
        unknown = sorted(set(counts) - set(_UNITS))
        if unknown:
            raise ValueError(f"unknown unit(s) {', '.join(unknown)}; registered: {', '.join(_UNITS)}")
        self.counts = {k: v for k, v in counts.items() if v is not None}

    def __getattr__(self, name: str) -> float | Tensor | None:
        if name != "counts" and name in _UNITS:
            return self.counts.get(name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"Denominators({', '.join(f'{k}={v}' for k, v in self.counts.items())})"

    def get(self, unit: str, local: float | Tensor) -> Tensor | float:
        """The global count of ``unit`` if known, else ``local``; never below 1."""
        value = self.counts.get(unit)
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

    @classmethod
    def from_adapters(cls, student: Any, teacher: Any | None = None) -> LossContext:
        """Filled from the two models' adapters (anything with :meth:`loss_context`, as
        :class:`evl_ecg.models.Adapter` has): ``hidden``, ``visual``, ``vocab``, ``layers`` and ``heads``."""
        s = student.loss_context()
        t = teacher.loss_context() if teacher is not None else {}
        fields = ("hidden", "visual", "vocab", "layers", "heads")
        return cls(**{f"student_{f}": s[f] for f in fields}, **{f"teacher_{f}": t.get(f) for f in fields})

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


class DistillLoss(nn.Module):
    """Base class of every registered loss. A loss declares what the rest of the toolkit needs to know of it:

    * ``requires``: the optional :class:`SideOutputs` fields it reads of either side (e.g. ``{"visual"}``), so that
      adapters compute only what is needed (an instance may narrow it from its options);
    * ``unit``: what its mean divides by, one of :func:`units` (:func:`register_unit` adds one);
    * ``needs_teacher``: whether it reads the teacher side at all (False for CE);
    * ``teacher_fields``: the teacher's output fields a teacher-output cache must hold for it
      (``hidden``, ``logits``, ``visual``, ``all_hidden``, ``attentions``, ``embedding_weight``, ``lm_head_weight``),
      or :meth:`teacher_reads` where they depend on the options; ``None`` (undeclared): the loss runs with the live
      teacher only, and a cache refuses it, naming it;
    * :meth:`option_names`: the options it takes (its constructor's keyword arguments but ``context``).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    #: the unit of the loss's mean: one of :func:`units` (:func:`register_unit` adds one).
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
        if cls.unit not in _UNITS:
            raise ValueError(f"loss {name!r}: unit {cls.unit!r} is not one of {', '.join(_UNITS)} (register_unit)")
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
