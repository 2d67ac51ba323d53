"""The standard 12-lead system: names, order, and the Einthoven/Goldberger identities."""

from __future__ import annotations

import numpy as np

#: The 12 standard leads in standard order (limb leads, augmented limb leads, precordial leads).
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB_LEADS: tuple[str, ...] = LEADS[:6]
PRECORDIAL_LEADS: tuple[str, ...] = LEADS[6:]
LEAD_INDEX: dict[str, int] = {name: i for i, name in enumerate(LEADS)}

_ALIASES = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF", "-AVR": "-aVR"}


def canonical_lead_name(name: str) -> str:
    """Map a lead name as files spell it (``'AVR'``, ``'v1'``, ``'Lead II'``) to the standard name.

    Raises ``KeyError`` naming the lead when it is not one of the 12 standard leads.
    """
    raw = name.strip()
    for prefix in ("Lead ", "lead ", "LEAD "):
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
    upper = raw.upper()
    if upper in _ALIASES:
        return _ALIASES[upper]
    if upper in {"I", "II", "III"}:
        return upper
    if upper in {f"V{k}" for k in range(1, 7)}:
        return upper
    if raw in LEAD_INDEX:
        return raw
    raise KeyError(f"unknown lead name {name!r}; expected one of {', '.join(LEADS)}")


def derived_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> dict[str, np.ndarray]:
    """III, aVR, aVL and aVF from I and II (Einthoven's law and Goldberger's definitions).

    III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.
    """
    return {
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
