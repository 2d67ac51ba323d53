r"""The weighted distillation objective, built from configuration (paper section 2.4, SPEC section 2).

.. math::

    L = w_{ce} L_{CE} + \alpha \sum_k \lambda_k L_k, \qquad w_{ce} = 1 - \alpha \text{ unless set}

EVL-ECG: ``0.7*ce + 0.3*(1.0*mhca + 0.03*relation + 0.1*ot)`` (paper Table 4). The objective is data
(:class:`ObjectiveConfig`, or a preset from :mod:`evl_ecg.distill.presets`), its terms are registered losses, and
its own parameters (MHCA, ``W_p``, baseline projectors) belong to it, not to the student: the trainer puts
:meth:`Objective.parameters` in the projector learning-rate group and checkpoints them beside the student.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from evl_ecg.distill.registry import Denominators, LossContext, LossOutput, build_loss, registered
from evl_ecg.outputs import SideOutputs


@dataclass
class ObjectiveConfig:
    """An objective as data.

    Attributes:
        alpha: weight of the distillation block; CE gets ``1 - alpha`` unless ``ce_weight`` is set. ``alpha = 0``
            (or no terms) is plain SFT: no teacher needed, no distillation term built.
        terms: ``{loss name: {"weight": lambda_k, **options of that loss}}``, in any order (producers such as
            ``mhca`` run before the terms that consume their extras, such as ``relation``).
        ce: options of the ``ce`` term (always present).
        ce_weight: explicit CE weight (baselines whose authors write ``CE + w * KD``); None: ``1 - alpha``.
        alpha_warmup: optimiser steps over which the distillation block's weight rises linearly from 0 to
            ``alpha`` (0, the paper's: ``alpha`` from the first step). The CE weight does not change. The step comes
            from the trainer (:meth:`Objective.set_step`), so a resumed run continues the same schedule. The
            distiller's own modules (MHCA, ``W_p``) still learn during the warm-up (AdamW normalises the gradient
            scale), so the target they give is fitted before it pulls the student (a departure, docs/deviations.md).
        balance: ``None`` (the paper's: fixed ``lambda_k``) or ``"ce"``: adaptive weighting, each term enters as
            ``lambda_k * sg(L_CE / L_k) * L_k``, i.e. with the magnitude ``lambda_k * L_CE`` of this batch whatever
            its own scale, so a term that its projections drive towards 0 keeps pulling, and one that starts 100
            times above CE does not swamp it (gradients still come from ``L_k`` alone; the ratio is a constant
            of the (micro-)batch, so under gradient accumulation it is that micro-batch's; a departure,
            docs/deviations.md).
    """

    alpha: float = 0.0
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    ce: dict[str, Any] = field(default_factory=dict)
    ce_weight: float | None = None
    alpha_warmup: int = 0
    balance: str | None = None

    def __post_init__(self) -> None:
        if self.balance not in (None, "ce"):
            raise ValueError(f"balance must be null or 'ce', got {self.balance!r}")
        if int(self.alpha_warmup) < 0:
            raise ValueError(f"alpha_warmup must be >= 0 steps, got {self.alpha_warmup}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if "ce" in self.terms:
            raise ValueError("'ce' is always present: set its options with ObjectiveConfig.ce, not in terms")
        for name, spec in self.terms.items():
            if not isinstance(spec, dict) or "weight" not in spec:
                raise ValueError(f"term {name!r} needs a dict with a 'weight' (lambda_k), got {spec!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectiveConfig:
        unknown = set(data) - {"alpha", "terms", "ce", "ce_weight", "alpha_warmup", "balance"}
        if unknown:
            raise ValueError(f"unknown objective keys: {sorted(unknown)}")
        return cls(**copy.deepcopy(data))

    @property
    def distills(self) -> bool:
        """Whether any distillation term is active (``alpha > 0`` and at least one term)."""
        return self.alpha > 0 and bool(self.terms)


def _fmt(x: float) -> str:
    return repr(round(float(x), 10))


class Objective(nn.Module):
    """``L = w_ce * CE + alpha * sum_k lambda_k * L_k``, every term a registered :class:`DistillLoss`.

    ``forward(student, teacher, denominators)`` returns a :class:`LossOutput` whose ``loss`` is the total and whose
    ``logs`` hold ``loss/total``, ``loss/<term>`` (unweighted) for every term, and each term's own figures as
    ``<term>/<figure>`` (``mhca/norm_student``, ``mhca/norm_aligned``, ``ot/iterations``, ...). ``extras`` holds
    every term's extras (e.g. ``aligned_teacher``, ``ot_plan``).
    """

    def __init__(self, config: ObjectiveConfig | dict[str, Any], context: LossContext | None = None) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ObjectiveConfig.from_dict(config)
        self.config = config
        context = context or LossContext()
        self.alpha = float(config.alpha)
        self.alpha_warmup = int(config.alpha_warmup)
        self.balance = config.balance
        self.step = 0
        self.ce_weight = 1.0 - self.alpha if config.ce_weight is None else float(config.ce_weight)
        self.ce = build_loss("ce", context, **config.ce)
        self.weights: dict[str, float] = {}
        terms: dict[str, nn.Module] = {}
        if config.distills:
            for name, spec in config.terms.items():
                options = {k: v for k, v in spec.items() if k != "weight"}
                if name not in registered():
                    raise KeyError(f"no loss registered as {name!r}; registered: {', '.join(sorted(registered()))}")
                terms[name] = build_loss(name, context, **options)
                self.weights[name] = float(spec["weight"])
        self.order = _dependency_order(terms)
        self.terms = nn.ModuleDict({name: terms[name] for name in self.order})

    # ---- description -----------------------------------------------------------------------------------------
    @property
    def requires(self) -> frozenset[str]:
        """The optional :class:`SideOutputs` fields any term reads."""
        out = set(self.ce.requires)
        for term in self.terms.values():
            out |= set(term.requires)
        return frozenset(out)

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(term, "needs_teacher", True) for term in self.terms.values())

    def formula(self) -> str:
        text = f"{_fmt(self.ce_weight)}*ce"
        if self.terms:
            inner = " + ".join(f"{_fmt(self.weights[n])}*{n}" for n in self.config.terms)
            text += f" + {_fmt(self.alpha)}*({inner})"
        return text

    def __str__(self) -> str:
        return self.formula()

    def set_step(self, step: int) -> None:
        """The optimiser step about to run (the trainer calls this before every step; it drives ``alpha_warmup``)."""
        self.step = int(step)

    @property
    def current_alpha(self) -> float:
        """``alpha``, scaled by the warm-up ``min(1, (step + 1) / alpha_warmup)`` while it lasts."""
        if self.alpha_warmup <= 0:
            return self.alpha
        return self.alpha * min(1.0, (self.step + 1) / self.alpha_warmup)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The objective's own trainable parameters, as one optimizer group (``[]`` if it has none)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "name": "distill"}] if params else []

    # ---- computation -----------------------------------------------------------------------------------------
    def forward(
        self,
        student: SideOutputs,
        teacher: SideOutputs | None = None,
        denominators: Denominators | None = None,
    ) -> LossOutput:
        if teacher is None and self.needs_teacher:
            raise ValueError(f"objective {self} needs the teacher's outputs")
        logs: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        ce = self.ce(student, None, denominators)
        _collect(logs, "ce", ce)
        total: Tensor = self.ce_weight * ce.loss
        block: Tensor | None = None
        for name in self.order:
            term = self.terms[name]
            kwargs = {key: extras[key] for key in sorted(getattr(term, "consumes", ()))}
            kwargs.update({key: extras[key] for key in sorted(getattr(term, "accepts", ())) if key in extras})
            out = term(student, teacher, denominators, **kwargs)
            extras.update(out.extras)
            _collect(logs, name, out)
            weighted = self.weights[name] * out.loss
            if self.balance == "ce":
                ratio = (ce.loss.detach() / out.loss.detach().abs().clamp_min(1e-8)).clamp(max=1e4)
                weighted = weighted * ratio
                logs[f"objective/scale_{name}"] = ratio
            block = weighted if block is None else block + weighted
        if block is not None:
            alpha = self.current_alpha
            total = total + alpha * block
            if self.alpha_warmup > 0:
                logs["objective/alpha"] = alpha
        logs["loss/total"] = total.detach()
        return LossOutput(loss=total, logs=logs, extras=extras)

    @classmethod
    def from_preset(cls, name: str, context: LossContext | None = None, **overrides: Any) -> Objective:
        """Build a preset (:func:`evl_ecg.distill.presets.get_preset`) with ``overrides`` applied."""
        from evl_ecg.distill.presets import get_preset

        return cls(get_preset(name, **overrides), context)


def _collect(logs: dict[str, Any], name: str, out: LossOutput) -> None:
    logs[f"loss/{name}"] = out.loss.detach()
    for key, value in out.logs.items():
        if key != "loss":
            logs[f"{name}/{key}"] = value


def _dependency_order(terms: dict[str, nn.Module]) -> list[str]:
    """Terms ordered so that each runs after the terms producing what it consumes (stable otherwise)."""
    producers: dict[str, str] = {}
    for name, term in terms.items():
        for key in getattr(term, "produces", ()):
            producers.setdefault(key, name)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"cyclic extras dependency at term {name!r}")
        visiting.add(name)
        for key in sorted(getattr(terms[name], "consumes", ())):
            if key not in producers:
                raise ValueError(
                    f"term {name!r} needs {key!r}, which no term of this objective produces (e.g. add 'mhca')"
                )
            visit(producers[key])
        visiting.discard(name)
        order.append(name)

    for name in terms:
        visit(name)
    return order
