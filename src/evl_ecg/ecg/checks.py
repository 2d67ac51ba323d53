"""The checks every ECG reader shares: physical units to mV, the 12 leads by name in standard order, finite samples,
sampling rates, and the bounds the export readers (:mod:`evl_ecg.ecg.exports`, :mod:`evl_ecg.ecg.xml_exports`) put on
what a file may make them hold.

Every check raises :class:`~evl_ecg.ecg.signal.EcgError` with one line naming the file (``source``) and the field.
Kept apart from :mod:`evl_ecg.ecg.readers`, which registers every reader (docs/architecture.md, "Adding a file format"),
so that the readers' modules import these checks and ``readers`` imports the readers, without a circle.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import numpy as np

from evl_ecg.ecg.leads import LEADS, canonical_lead_name, derived_limb_leads
from evl_ecg.ecg.signal import EcgError

__all__ = [
    "ECG_FS_RANGE",
    "FORMATS_EXTRA",
    "MAX_ABS_MV",
    "MAX_CHANNELS",
    "MAX_SAMPLES",
    "MAX_TEXT_BYTES",
    "MV_PER_UNIT",
    "assemble_leads",
    "check_amplitude",
    "check_file_size",
    "check_finite",
    "check_fs",
    "lead_of_label",
    "mv_per_unit",
    "require",
    "to_standard_order",
]

#: Millivolts per unit of each physical unit string a file may carry (case-insensitive).
MV_PER_UNIT: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}

#: Sampling rates (Hz) a file may state for an ECG; outside them the value is a mistake, not an ECG.
ECG_FS_RANGE: tuple[float, float] = (50.0, 20_000.0)

#: Bounds of the export readers (CSV, EDF, MUSE, aECG, Philips): samples per lead (about 33 min at 1 kHz), signals or
#: columns a file may list before the 12 leads are picked, the size of a text export (CSV, XML) read whole, and the
#: largest plausible |sample| in mV (an ECG is a few mV; 200 mV holds a 16-bit sample at 5 uV a bit, so only a wrong
#: unit, such as microvolts read as millivolts, goes past it).
MAX_SAMPLES: int = 2_000_000
MAX_CHANNELS: int = 32
MAX_TEXT_BYTES: int = 64 * 1024 * 1024
MAX_ABS_MV: float = 200.0

#: The optional dependencies of the export readers (pyproject.toml).
FORMATS_EXTRA: str = 'pip install "evl-ecg[formats]"'


def require(module: str, source: str, what: str) -> ModuleType:
    """Import ``module`` for reading ``what``, or one line naming the file and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise EcgError(f"{source}: reading {what} needs the {package} package: {FORMATS_EXTRA}") from None


def mv_per_unit(unit: str, source: str, lead: str) -> float:
    """Millivolts per ``unit`` (``mV``, ``uV``, ``µV``, ``V``) of ``lead``."""
    key = (unit or "").strip().lower()
    if key not in MV_PER_UNIT:
        raise EcgError(f"{source}: lead {lead} has unit {unit!r}; expected one of mV, uV, V")
    return MV_PER_UNIT[key]


def to_standard_order(signal: np.ndarray, names: list[str], source: str) -> np.ndarray:
    """Rows of ``signal`` (``channels x n``) named ``names`` -> ``12 x n`` in :data:`LEADS` order."""
    canon: list[str] = []
    for name in names:
        try:
            canon.append(canonical_lead_name(name))
        except KeyError:
            raise EcgError(f"{source}: unknown lead name {name!r}; expected the 12 standard leads") from None
    dup = sorted({c for c in canon if canon.count(c) > 1})
    if dup:
        raise EcgError(f"{source}: lead(s) {', '.join(dup)} appear more than once")
    missing = [lead for lead in LEADS if lead not in canon]
    if missing:
        raise EcgError(f"{source}: {len(canon)} leads, missing {', '.join(missing)}; a 12-lead ECG is required")
    order = [canon.index(lead) for lead in LEADS]
    return signal[order]


def check_finite(signal: np.ndarray, source: str) -> None:
    if not np.all(np.isfinite(signal)):
        rows, cols = np.nonzero(~np.isfinite(signal))
        leads = ", ".join(LEADS[i] for i in np.unique(rows))
        raise EcgError(f"{source}: {rows.size} NaN/infinite sample(s) in lead(s) {leads} (first at sample {cols[0]})")


def check_fs(fs: float, source: str, field: str, written: str | None = None) -> float:
    """A sampling rate (Hz) within :data:`ECG_FS_RANGE`; ``field`` names where the file states it."""
    shown = repr(written) if written is not None else f"{fs:g}"
    if not np.isfinite(fs) or fs <= 0:
        raise EcgError(f"{source}: {field} {shown}: not a positive sampling rate")
    lo, hi = ECG_FS_RANGE
    if not lo <= fs <= hi:
        raise EcgError(f"{source}: {field} {shown}: {fs:g} Hz is outside {lo:g}-{hi:g} Hz, not an ECG sampling rate")
    return float(fs)


def check_amplitude(signal: np.ndarray, source: str) -> None:
    """No sample beyond :data:`MAX_ABS_MV` (a unit mistake: microvolts read as millivolts, volts as millivolts)."""
    peak = np.abs(signal).max(axis=1)
    bad = [f"{LEADS[i]} ({peak[i]:.4g} mV)" for i in np.nonzero(peak > MAX_ABS_MV)[0]]
    if bad:
        raise EcgError(
            f"{source}: lead(s) {', '.join(bad)} beyond {MAX_ABS_MV:g} mV: the amplitude unit is wrong "
            "(microvolts read as millivolts?)"
        )


def check_file_size(size: int, limit: int, source: str, what: str) -> None:
    if size > limit:
        raise EcgError(f"{source}: {size:,} bytes; {what} is read whole, up to {limit:,} bytes")


_LABEL_PREFIX = re.compile(r"^(?:ECG|EKG)[\s_\-:]+", re.IGNORECASE)


def lead_of_label(label: str) -> str:
    """A signal label as exports write it (``'ECG I'``, ``'EKG-V1'``, ``'Lead II'``, ``'AVR'``, ``'v6'``) -> the
    standard lead name; raises ``KeyError`` for a label that names none of the 12 leads."""
    text = _LABEL_PREFIX.sub("", label.strip(), count=1).strip()
    return canonical_lead_name(text)


def assemble_leads(
    rows: list[np.ndarray], names: list[str], source: str, *, derive_limb: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Named rows (already in mV) -> ``12 x n`` float64 in :data:`LEADS` order, and the leads derived.

    Names are matched with :func:`lead_of_label` (an unknown or duplicate name is an error naming it); rows must have
    one length. With ``derive_limb``, a file that stores I and II but none of III, aVR, aVL, aVF (GE MUSE's 8 leads)
    gets those four from :func:`~evl_ecg.ecg.leads.derived_limb_leads`; a file that stores some of them must store all.
    """
    if not rows:
        raise EcgError(f"{source}: no leads")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        counts = ", ".join(f"{n} {len(r)}" for n, r in zip(names, rows, strict=True))
        raise EcgError(f"{source}: leads differ in length ({counts} samples); all leads must have one length")
    canon: list[str] = []
    for name in names:
        try:
            canon.append(lead_of_label(name))
        except KeyError:
            raise EcgError(f"{source}: unknown lead name {name!r}; expected the 12 standard leads") from None
    derived: tuple[str, ...] = ()
    limb = ("III", "aVR", "aVL", "aVF")
    if derive_limb and not any(lead in canon for lead in limb) and "I" in canon and "II" in canon:
        extra = derived_limb_leads(rows[canon.index("I")], rows[canon.index("II")])
        rows = [*rows, *(extra[lead] for lead in limb)]
        canon = [*canon, *limb]
        derived = limb
    signal = np.stack([np.asarray(r, dtype=np.float64) for r in rows])
    return to_standard_order(signal, canon, source), derived
