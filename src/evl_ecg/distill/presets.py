"""Named objectives: one per row of the paper's tables (:class:`~evl_ecg.distill.objective.ObjectiveConfig` dicts).

=================  ======  =========================================================  ===========================
preset             alpha   terms (lambda_k)                                           paper
=================  ======  =========================================================  ===========================
``sft``            0       CE only                                                    Table 1 "SFT", Table 6 row 1
``ot``             0.3     ot 0.1                                                     Table 6 row 2 (+OT)
``ot+mhca``        0.3     ot 0.1, mhca 1.0                                           Table 6 row 3 (+MHCA)
``ot+mhca+rel``    0.3     ot 0.1, mhca 1.0, relation 0.03                            Table 6 row 4 (= evl-ecg)
``evl-ecg``        0.3     mhca 1.0 (h = 8), relation 0.03, ot 0.1 (eps = 0.1)        Table 4, Table 1
``label-kd``       1.0     CE 1.0 + label_kd 1.0 (tau = 1)                            not in the paper
=================  ======  =========================================================  ===========================

The ablation rows keep Table 4's weights (the paper does not re-tune them per row). The baselines (vanilla-kl,
tinybert, uld, multilevel-ot, dskd, emkd, rkd) come from ``evl_ecg.distill.baselines.BASELINE_PRESETS`` when that
package is installed; :func:`list_presets` shows them all.
"""

from __future__ import annotations

import copy
from typing import Any

#: EVL-ECG defaults (paper Table 4, SPEC section 2).
ALPHA = 0.3
LAMBDA_MHCA = 1.0
LAMBDA_REL = 0.03
LAMBDA_OT = 0.1
HEADS = 8
EPSILON = 0.1

_OT = {"weight": LAMBDA_OT, "epsilon": EPSILON}
_MHCA = {"weight": LAMBDA_MHCA, "heads": HEADS}
_REL = {"weight": LAMBDA_REL}

EVL_PRESETS: dict[str, dict[str, Any]] = {
    "sft": {"alpha": 0.0, "terms": {}},
    "ot": {"alpha": ALPHA, "terms": {"ot": dict(_OT)}},
    "ot+mhca": {"alpha": ALPHA, "terms": {"ot": dict(_OT), "mhca": dict(_MHCA)}},
    "ot+mhca+rel": {"alpha": ALPHA, "terms": {"ot": dict(_OT), "mhca": dict(_MHCA), "relation": dict(_REL)}},
    "evl-ecg": {"alpha": ALPHA, "terms": {"mhca": dict(_MHCA), "relation": dict(_REL), "ot": dict(_OT)}},
    # not in the paper: the teacher's distribution over a label-set question's answers (distill.label_space)
    "label-kd": {"alpha": 1.0, "ce_weight": 1.0, "terms": {"label_kd": {"weight": 1.0, "temperature": 1.0}}},
}


def _baseline_presets() -> dict[str, dict[str, Any]]:
    try:
        from evl_ecg.distill.baselines import BASELINE_PRESETS
    except ImportError as err:  # the baselines package (or its table) is optional
        if getattr(err, "name", None) in {"evl_ecg.distill.baselines", None}:
            return {}
        raise
    return dict(BASELINE_PRESETS)


#: presets added at run time (:func:`register_preset`: a plugin's method, a test's)
_ADDED: dict[str, dict[str, Any]] = {}


def register_preset(name: str, spec: dict[str, Any]) -> None:
    """Add the objective preset ``name`` (``{"alpha", "terms": {loss name: options}}``): every command and the
    study then accept it as a method. A name that is already a preset is refused."""
    if name in list_presets():
        raise ValueError(f"preset {name!r} already exists")
    if not isinstance(spec, dict) or not isinstance(spec.get("terms"), dict):
        raise ValueError(f"preset {name!r}: expected {{'alpha': ..., 'terms': {{loss: options}}}}")
    _ADDED[name] = copy.deepcopy(spec)


def unregister_preset(name: str) -> None:
    """Remove a preset :func:`register_preset` added (a built-in one stays)."""
    _ADDED.pop(name, None)


def list_presets() -> dict[str, dict[str, Any]]:
    """Every preset by name (copies): EVL-ECG's rows, then the baselines' (EVL-ECG's win a name clash), then those
    added by :func:`register_preset`."""
    table = {**_ADDED, **_baseline_presets(), **EVL_PRESETS}
    return {name: copy.deepcopy(table[name]) for name in [*EVL_PRESETS, *sorted(set(table) - set(EVL_PRESETS))]}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The preset ``name`` as an objective dict, with ``overrides`` merged in (nested dicts merge key by key).

    Example: ``get_preset("evl-ecg", alpha=0.5, terms={"mhca": {"heads": 4}})``. A term set to ``None`` in
    ``overrides["terms"]`` is removed.
    """
    table = list_presets()
    if name not in table:
        raise KeyError(f"no preset {name!r}; presets: {', '.join(table)}")
    config = _merge(table[name], overrides)
    config["terms"] = {k: v for k, v in config.get("terms", {}).items() if v is not None}
    return config
