"""The synthetic ECG's model, shared by every generator (:mod:`evl_ecg.ecg.synth` is the public face; generator 1's
drawing there, generator 2's in :mod:`evl_ecg.ecg.synth_v2`): a cardiac dipole with encoded clinical findings.

The heart is a single current dipole ``d(t)`` in 3-D (``x`` to the patient's left, ``y`` inferior (feet),
``z`` anterior). Every wave (P, QRS, ST, T) is a sum of Gaussian bumps ``a_k * exp(-(t - c_k)^2 / (2 s_k^2))``
whose amplitude ``a_k`` is a 3-vector, so a beat is a 3-D vector loop. Lead ``I``, ``II`` and ``V1``-``V6`` are
projections ``lead(t) = l . d(t)`` onto fixed lead vectors ``l`` (:data:`LEAD_VECTORS`); noise is added to those
eight (the independent electrode signals) and ``III``, ``aVR``, ``aVL``, ``aVF`` are then derived from ``I`` and
``II`` (:func:`evl_ecg.ecg.leads.derived_limb_leads`), so Einthoven's and Goldberger's identities hold exactly.

Each canonical finding of :data:`evl_ecg.ecg.labels.FINDINGS` is encoded by its clinical criterion
(``docs/signals.md`` has the table). Intervals are *encoded* values: a wave starts at ``c - 2.5 s`` of its first
bump and ends at ``c + 2.5 s`` of its last one (there a bump is 4.4 % of its peak).

A synthetic ECG is not a clinical one: it has the criteria we put in and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import signal as sps

from evl_ecg.ecg.labels import FINDINGS, MI_TERRITORIES, RHYTHMS
from evl_ecg.ecg.leads import LEADS, derived_limb_leads

# --------------------------------------------------------------------------------------------------
# Lead system
# --------------------------------------------------------------------------------------------------

#: The eight independent leads the dipole is projected on (the other four are derived from I and II).
ELECTRODE_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _precordial(angle_deg: float, gain: float, inferior: float = 0.0) -> tuple[float, float, float]:
    a = np.deg2rad(angle_deg)
    v = np.array([np.cos(a), inferior, np.sin(a)])
    return tuple(float(x) for x in gain * v / np.linalg.norm(v))


#: Lead vectors (x left, y inferior, z anterior). Limb leads in the frontal plane (I at 0 deg, II at +60 deg);
#: chest leads in the horizontal plane from V1 (120 deg, right of the sternum) to V6 (5 deg, left mid-axillary),
#: with gains > 1 because the chest electrodes lie close to the heart.
LEAD_VECTORS: dict[str, tuple[float, float, float]] = {
    "I": (1.0, 0.0, 0.0),
    "II": (0.5, float(np.sqrt(3) / 2), 0.0),
    "V1": _precordial(120, 1.3),
    "V2": _precordial(95, 2.0),
    "V3": _precordial(75, 2.0),
    "V4": _precordial(55, 2.0, 0.15),
    "V5": _precordial(30, 1.8, 0.15),
    "V6": _precordial(5, 1.4, 0.15),
}
LEAD_MATRIX = np.array([LEAD_VECTORS[name] for name in ELECTRODE_LEADS])  # 8 x 3
LEAD_INDEX = {name: i for i, name in enumerate(ELECTRODE_LEADS)}

#: Rate ranges (bpm) each rhythm accepts for ``SynthSpec.heart_rate`` and the narrower ones it is drawn from
#: (drawn well inside, so that premature beats do not push the measured mean rate out of the range).
RATE_RANGES: dict[str, tuple[float, float]] = {"SR": (60, 100), "SB": (30, 60), "STACH": (100, 200), "AF": (40, 180)}
_RATE_DRAW: dict[str, tuple[float, float]] = {"SR": (64, 92), "SB": (42, 54), "STACH": (106, 140), "AF": (70, 130)}

# --------------------------------------------------------------------------------------------------
# Specifications
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSpec:
    """Noise levels in mV, added to each electrode lead (I, II, V1-V6) before III/aVR/aVL/aVF are derived.

    Attributes:
        baseline_wander: peak amplitude of a respiratory sinusoid (0.15-0.5 Hz), scaled per lead by U(0.6, 1).
        powerline: peak amplitude of the mains hum at ``powerline_hz``, scaled per lead by U(0.7, 1).
        muscle: RMS of band-limited (20-150 Hz) white noise (EMG), exact per lead.
        powerline_hz: mains frequency, 50 or 60 Hz.
    """

    baseline_wander: float = 0.0
    powerline: float = 0.0
    muscle: float = 0.0
    powerline_hz: float = 50.0

    def __post_init__(self) -> None:
        for name in ("baseline_wander", "powerline", "muscle"):
            if getattr(self, name) < 0:
                raise ValueError(f"NoiseSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.powerline_hz <= 0:
            raise ValueError(f"NoiseSpec.powerline_hz must be > 0, got {self.powerline_hz}")

    @property
    def is_clean(self) -> bool:
        return self.baseline_wander == 0 and self.powerline == 0 and self.muscle == 0


def is_compatible(findings: frozenset[str] | set[str]) -> bool:
    """Whether ``findings`` is a combination the generator accepts (see :func:`check_compatible`)."""
    try:
        check_compatible(findings)
    except ValueError:
        return False
    return True


def check_compatible(findings: frozenset[str] | set[str]) -> None:
    """Raise ``ValueError`` unless ``findings`` is a clinically compatible combination.

    Rules: known codes; exactly one rhythm of SR/SB/STACH/AF; AF excludes IAVB (no P waves, no PR) and PAC
    (no organised atrial activity); RBBB and LBBB exclude each other; LBBB excludes MI, STD, TINV and LVH
    (its secondary ST-T changes and voltages mask them); MI and STD exclude each other (one ST vector).
    """
    found = set(findings)
    unknown = found - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown finding code(s) {sorted(unknown)}; known: {sorted(FINDINGS)}")
    rhythms = found & set(RHYTHMS)
    if len(rhythms) != 1:
        raise ValueError(f"exactly one rhythm of {'/'.join(RHYTHMS)} required, got {sorted(rhythms) or 'none'}")
    for a, b in _EXCLUSIVE:
        if a in found and b in found:
            raise ValueError(f"findings {a} and {b} are not compatible")


_EXCLUSIVE: tuple[tuple[str, str], ...] = (
    ("AF", "IAVB"),
    ("AF", "PAC"),
    ("RBBB", "LBBB"),
    ("LBBB", "MI"),
    ("LBBB", "STD"),
    ("LBBB", "TINV"),
    ("LBBB", "LVH"),
    ("MI", "STD"),
)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. ``None`` knobs are drawn (from the seed of :func:`generate`) consistently with the findings.

    Attributes:
        findings: canonical codes (:data:`~evl_ecg.ecg.labels.FINDINGS`), exactly one rhythm of SR/SB/STACH/AF,
            compatible (:func:`check_compatible`).
        heart_rate: sinus rate (mean ventricular rate for AF) in bpm; must lie in :data:`RATE_RANGES` of the rhythm.
        mi_territory: a key of :data:`~evl_ecg.ecg.labels.MI_TERRITORIES`, only with ``"MI"``.
        noise: noise levels.
        axis_deg: direction of the main QRS force in the frontal plane (0 = lead I, +90 = aVF).
        pr_ms: PR interval (P onset to QRS onset), > 200 ms iff IAVB; not with AF.
        qrs_ms: QRS duration of conducted beats, >= 120 ms iff RBBB/LBBB.
        qtc_ms: Bazett-corrected QT.
        amplitude: scale of the QRS voltages (the Sokolow-Lyon rule of LVH / non-LVH still applies).
    """

    findings: frozenset[str]
    heart_rate: float | None = None
    mi_territory: str | None = None
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    axis_deg: float | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qtc_ms: float | None = None
    amplitude: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", frozenset(self.findings))
        check_compatible(self.findings)
        rhythm = self.rhythm
        if self.heart_rate is not None:
            lo, hi = RATE_RANGES[rhythm]
            ok = lo <= self.heart_rate <= hi and not (rhythm == "SB" and self.heart_rate >= 60)
            ok = ok and not (rhythm == "STACH" and self.heart_rate <= 100)
            if not ok:
                raise ValueError(f"heart_rate {self.heart_rate} bpm does not fit rhythm {rhythm} ({lo}-{hi} bpm)")
        if self.mi_territory is not None:
            if "MI" not in self.findings:
                raise ValueError("mi_territory given without finding MI")
            if self.mi_territory not in MI_TERRITORIES:
                raise ValueError(f"unknown mi_territory {self.mi_territory!r}; known: {sorted(MI_TERRITORIES)}")
        if self.pr_ms is not None:
            if rhythm == "AF":
                raise ValueError("pr_ms given for AF (no P waves)")
            if ("IAVB" in self.findings) != (self.pr_ms > 200):
                raise ValueError(f"pr_ms {self.pr_ms} contradicts IAVB (PR > 200 ms iff IAVB)")
            if not 80 <= self.pr_ms <= 400:
                raise ValueError(f"pr_ms {self.pr_ms} outside 80-400 ms")
        if self.qrs_ms is not None:
            bbb = bool(self.findings & {"RBBB", "LBBB"})
            if bbb != (self.qrs_ms >= 120) or not 60 <= self.qrs_ms <= 200:
                raise ValueError(f"qrs_ms {self.qrs_ms} contradicts the findings (>= 120 ms iff RBBB/LBBB, 60-200)")
        if self.qtc_ms is not None and not 300 <= self.qtc_ms <= 520:
            raise ValueError(f"qtc_ms {self.qtc_ms} outside 300-520 ms")
        if self.amplitude <= 0:
            raise ValueError(f"amplitude must be > 0, got {self.amplitude}")

    @property
    def rhythm(self) -> str:
        return next(r for r in RHYTHMS if r in self.findings)


# --------------------------------------------------------------------------------------------------
# Beat model
# --------------------------------------------------------------------------------------------------


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def frontal(axis_deg: float, z: float) -> np.ndarray:
    a = np.deg2rad(axis_deg)
    return _unit(np.cos(a), np.sin(a), z)


@dataclass
class Wave:
    """Bumps of one beat: centers and widths in s (relative to QRS onset) and 3-D amplitude vectors in mV."""

    centers: list[float] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)
    left_sigmas: list[float] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    plateaus: list[tuple[float, float, float, float, np.ndarray]] = field(default_factory=list)

    def bump(self, center: float, sigma: float, vector: np.ndarray, left_sigma: float | None = None) -> None:
        self.centers.append(center)
        self.sigmas.append(sigma)
        self.left_sigmas.append(sigma if left_sigma is None else left_sigma)
        self.vectors.append(np.asarray(vector, dtype=np.float64))

    def plateau(self, start: float, rise: float, end: float, fall: float, vector: np.ndarray) -> None:
        """A smooth step up at ``start`` (logistic width ``rise``) and down at ``end`` (width ``fall``)."""
        self.plateaus.append((start, rise, end, fall, np.asarray(vector, dtype=np.float64)))

    def dipole(self, t: np.ndarray) -> np.ndarray:
        """The dipole ``3 x len(t)`` at local times ``t`` (s)."""
        c = np.asarray(self.centers)[:, None]
        dt = t[None, :] - c
        s = np.where(dt < 0, np.asarray(self.left_sigmas)[:, None], np.asarray(self.sigmas)[:, None])
        g = np.exp(-0.5 * (dt / s) ** 2)  # K x m
        d = np.asarray(self.vectors).T @ g  # 3 x m
        for start, rise, end, fall, vec in self.plateaus:
            w = 1.0 / (1.0 + np.exp(-(t - start) / rise)) * (1.0 - 1.0 / (1.0 + np.exp(-(t - end) / fall)))
            d += vec[:, None] * w[None, :]
        return d


def _qrs_bumps(wave: Wave, qrs: float, parts: list[tuple[float, float, np.ndarray]]) -> None:
    """Add QRS bumps given as (center fraction, sigma fraction, vector); the first starts at 0, the last ends at qrs."""
    for cf, sf, vec in parts:
        wave.bump(cf * qrs, sf * qrs, vec)


@dataclass
class Params:
    """Per-record parameters drawn once from the signal stream."""

    rhythm: str
    rate: float
    axis: float
    pr: float | None  # s
    qrs: float  # s
    qtc: float  # s
    p_dur: float
    a_main: float
    z_main: float
    a_sept: float
    a_term: float
    a_p: float
    a_t: float
    t_axis: float
    territory: str | None
    extras: dict[str, Any]


def draw_params(spec: SynthSpec, rng: np.random.Generator) -> Params:
    f = spec.findings
    rhythm = spec.rhythm
    rate = spec.heart_rate if spec.heart_rate is not None else float(rng.uniform(*_RATE_DRAW[rhythm]))
    territory = spec.mi_territory
    if "MI" in f and territory is None:
        territory = str(rng.choice(sorted(MI_TERRITORIES)))
    if spec.axis_deg is not None:
        axis = float(spec.axis_deg)
    elif territory == "inferior":
        axis = float(rng.uniform(0, 25))
    elif territory == "lateral":
        axis = float(rng.uniform(75, 100))
    elif "LBBB" in f or "LVH" in f:
        axis = float(rng.uniform(0, 45))
    else:
        axis = float(rng.uniform(15, 80))
    if rhythm == "AF":
        pr = None
    elif spec.pr_ms is not None:
        pr = spec.pr_ms / 1000
    else:
        pr = float(rng.uniform(0.23, 0.32)) if "IAVB" in f else float(rng.uniform(0.13, 0.18))
    if spec.qrs_ms is not None:
        qrs = spec.qrs_ms / 1000
    elif f & {"RBBB", "LBBB"}:
        qrs = float(rng.uniform(0.135, 0.165))
    elif "MI" in f:
        qrs = float(rng.uniform(0.095, 0.11))
    else:
        qrs = float(rng.uniform(0.08, 0.1))
    qtc = spec.qtc_ms / 1000 if spec.qtc_ms is not None else float(rng.uniform(0.39, 0.44))
    extras = {
        "st": float(rng.uniform(0.18, 0.3)),  # ST elevation (MI) or depression (STD) vector size
        "aq": float(rng.uniform(0.45, 0.65)),  # pathological Q force (MI)
        "tinv": float(rng.uniform(0.7, 1.0)),
        "pac_coupling": float(rng.uniform(0.6, 0.72)),
        "pvc_coupling": float(rng.uniform(0.55, 0.68)),
        "n_ectopic": int(rng.integers(1, 3)),
        "sokolow": float(rng.uniform(4.0, 5.5)),  # LVH target S(V1)+R(V5/V6), mV
        "sokolow_cap": float(rng.uniform(2.2, 2.9)),  # non-LVH ceiling
        "resp_hz": float(rng.uniform(0.2, 0.33)),
        "resp_depth": float(rng.uniform(0.0, 0.03)),
        "af_cv": float(rng.uniform(0.18, 0.28)),
        "pac_axis": float(rng.uniform(-100, -60)),
        "pvc_dir": _unit(*rng.standard_normal(3)),
        "pvc_turn": _unit(*rng.standard_normal(3)),
        "pvc_amp": float(rng.uniform(1.4, 2.0)),
        "pvc_qrs": float(rng.uniform(0.14, 0.17)),
        "f_amp": float(rng.uniform(0.06, 0.12)),
        "f_freqs": rng.uniform(4.5, 8.5, size=3),
        "f_phases": rng.uniform(0, 2 * np.pi, size=3),
        "phase0": float(rng.uniform(0.05, 1.0)),
    }
    return Params(
        rhythm=rhythm,
        rate=float(rate),
        axis=axis,
        pr=pr,
        qrs=qrs,
        qtc=qtc,
        p_dur=float(rng.uniform(0.085, 0.11)),
        a_main=float(rng.uniform(1.0, 1.5)) * spec.amplitude,
        z_main=float(rng.uniform(-0.35, -0.15)),
        a_sept=float(rng.uniform(0.15, 0.3)) * spec.amplitude,
        a_term=float(rng.uniform(0.15, 0.3)) * spec.amplitude,
        a_p=float(rng.uniform(0.12, 0.2)),
        a_t=float(rng.uniform(0.28, 0.45)),
        t_axis=float(rng.uniform(-20, 5)),
        territory=territory,
        extras=extras,
    )


_TERRITORY_DIR: dict[str, np.ndarray] = {
    "anterior": _unit(0.0, 0.0, 1.0),
    "inferior": _unit(0.0, 1.0, 0.0),
    "lateral": _unit(0.87, -0.5, 0.1),
}
ST_DEPRESSION_DIR = _unit(0.7, 0.6, 0.1)  # ST depression vector points away from this (towards aVR)
P_AXIS_SINUS = 55.0


def qrs_and_repol(f: frozenset[str], p: Params, qt: float) -> Wave:
    """QRS, ST and T of a conducted (supraventricular) beat, QRS onset at t = 0."""
    wave = Wave()
    q = p.qrs
    main = frontal(p.axis, p.z_main)
    sept = p.a_sept * _unit(-0.5, 0.2, 0.8)
    term = p.a_term * _unit(-0.3, -0.6, -0.6)
    if "LBBB" in f:
        main = frontal(p.axis, -0.75)
        _qrs_bumps(
            wave,
            q,
            [
                (0.2, 0.08, 0.25 * p.a_main * _unit(1.0, 0.2, -0.2)),  # septum activated left -> right
                (0.4, 0.12, 1.1 * p.a_main * main),
                (0.7, 0.12, 1.0 * p.a_main * frontal(p.axis - 15, -0.6)),  # second, notched peak
            ],
        )
    elif "RBBB" in f:
        _qrs_bumps(
            wave,
            q,
            [
                (0.16, 0.064, sept * 1.3),
                (0.36, 0.1, p.a_main * main),
                (0.75, 0.1, 0.75 * p.a_main * _unit(-0.65, 0.1, 0.75)),  # late right-anterior forces: R' in V1
            ],
        )
    elif "MI" in f:
        u = _TERRITORY_DIR[p.territory or "anterior"]
        z = -0.6 if p.territory == "anterior" else p.z_main
        _qrs_bumps(
            wave,
            q,
            [
                (0.35, 0.14, -p.extras["aq"] * u),  # initial forces point away from the dead wall: Q waves
                (0.62, 0.12, p.a_main * frontal(p.axis, z)),
                (0.84, 0.064, term),
            ],
        )
    else:
        _qrs_bumps(wave, q, [(0.2, 0.08, sept), (0.5, 0.13, p.a_main * main), (0.8, 0.08, term)])

    # Voltage rule: LVH reaches its Sokolow-Lyon target; other ECGs stay below a ceiling under 3.5 mV.
    sok = sokolow(wave, q)
    if "LVH" in f:
        target = p.extras["sokolow"]
    elif "sokolow_target" in p.extras:  # generator 2: a drawn voltage, no ceiling
        target = p.extras["sokolow_target"]
    else:
        target = min(sok, p.extras["sokolow_cap"])
    if sok > 0:
        wave.vectors = [v * (target / sok) for v in wave.vectors]

    # Repolarisation: T ends at QT; asymmetric (slow rise, faster fall).
    s_fall, s_rise = 0.08 * qt, 0.12 * qt
    t_center = qt - 2.5 * s_fall
    t_vec = p.a_t * frontal(p.axis + p.t_axis, 0.45)
    if "LBBB" in f:
        t_vec = -1.2 * p.a_t * _unit(*main)
        wave.plateau(q - 0.01, 0.006, t_center, 0.03, -0.15 * _unit(*main))  # discordant ST shift
    if "RBBB" in f:
        t_vec = t_vec + 0.35 * _unit(0.6, 0.0, -0.8)  # T inverted in V1-V2, opposite the late forces
    if "STD" in f:
        t_vec = 0.5 * t_vec  # ischaemic T waves are low
    if "TINV" in f:
        t_vec = -p.extras["tinv"] * t_vec
    wave.bump(t_center, s_fall, t_vec, left_sigma=s_rise)
    if "MI" in f:
        u = _TERRITORY_DIR[p.territory or "anterior"]
        wave.plateau(q - 0.012, 0.006, qt - 0.02, 0.02, p.extras["st"] * u)  # ST elevation towards the territory
    if "STD" in f:
        wave.plateau(q - 0.01, 0.006, qt - 0.03, 0.025, -p.extras["st"] * ST_DEPRESSION_DIR)  # horizontal ST depression
    return wave


def sokolow(wave: Wave, qrs: float) -> float:
    """S(V1) + max(R(V5), R(V6)) of the QRS bumps in ``wave`` (mV)."""
    t = np.linspace(0.0, qrs, 96)
    leads = LEAD_MATRIX @ wave.dipole(t)
    return float(
        max(0.0, -leads[LEAD_INDEX["V1"]].min())
        + max(leads[LEAD_INDEX["V5"]].max(), leads[LEAD_INDEX["V6"]].max(), 0.0)
    )


def add_p(wave: Wave, pr: float, p_dur: float, vector: np.ndarray) -> None:
    s = p_dur / 5
    wave.bump(-pr + 2.5 * s, s, vector)


def pvc_wave(p: Params, qt: float) -> Wave:
    """A premature ventricular beat: no P, wide bizarre QRS from an ectopic focus, discordant ST-T."""
    e = p.extras
    q = e["pvc_qrs"]
    d1 = e["pvc_dir"]
    d2 = _unit(*(d1 + 0.8 * e["pvc_turn"]))
    wave = Wave()
    _qrs_bumps(wave, q, [(0.3, 0.12, e["pvc_amp"] * d1), (0.7, 0.12, 0.6 * e["pvc_amp"] * d2)])
    mean = _unit(*(d1 + 0.6 * d2))
    s_fall, s_rise = 0.08 * qt, 0.12 * qt
    t_center = qt - 2.5 * s_fall
    wave.plateau(q - 0.01, 0.008, t_center, 0.03, -0.12 * mean)
    wave.bump(t_center, s_fall, -0.55 * mean, left_sigma=s_rise)
    return wave


@dataclass
class _Template:
    """One beat type sampled on the record's grid: ``8 x m`` electrode leads, QRS onset at column ``onset``."""

    leads: np.ndarray
    onset: int
    r_offset: int  # samples from QRS onset to the lead-II dominant deflection
    qrs_samples: int


def template(wave: Wave, pre: float, post: float, qrs: float, fs: int) -> _Template:
    n_pre, n_post = int(np.ceil(pre * fs)), int(np.ceil(post * fs))
    t = np.arange(-n_pre, n_post + 1) / fs
    leads = LEAD_MATRIX @ wave.dipole(t)
    ii = leads[LEAD_INDEX["II"]]
    q0, q1 = n_pre, n_pre + int(round(qrs * fs))
    r = int(np.argmax(np.abs(ii[q0 : q1 + 1])))
    return _Template(leads=leads, onset=n_pre, r_offset=r, qrs_samples=q1 - q0)


# --------------------------------------------------------------------------------------------------
# Rhythm
# --------------------------------------------------------------------------------------------------


def beat_times(p: Params, f: frozenset[str], duration: float, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """R times (s) of the intended beats and their types, covering [-1.5 s, duration + 1.5 s]."""
    e = p.extras
    rr = 60.0 / p.rate
    n = int(np.ceil((duration + 3.0) / rr)) + 4
    if p.rhythm == "AF":
        k = 1.0 / e["af_cv"] ** 2
        intervals = np.maximum(rng.gamma(k, rr / k, size=n), 0.3)
    else:
        idx = np.arange(n)
        resp = 1.0 + e["resp_depth"] * np.sin(2 * np.pi * e["resp_hz"] * idx * rr + rng.uniform(0, 2 * np.pi))
        intervals = rr * resp * (1.0 + 0.008 * rng.standard_normal(n))
    times = -1.5 + e["phase0"] * rr + np.concatenate([[0.0], np.cumsum(intervals[:-1])])
    kinds = ["N"] * n
    ectopics = [c for c in ("PAC", "PVC") if c in f]
    if ectopics:
        inside = [i for i in range(1, n - 1) if 0.3 < times[i] < duration - 0.3]
        count = min(e["n_ectopic"] * len(ectopics), max(1, len(inside) // 3))
        chosen: list[int] = []
        for i in rng.permutation(inside):
            if all(abs(i - j) > 2 for j in chosen):
                chosen.append(int(i))
            if len(chosen) == count:
                break
        for m, i in enumerate(sorted(chosen)):
            kind = ectopics[m % len(ectopics)]
            prev = times[i - 1]
            local_rr = times[i] - prev
            if kind == "PVC":  # full compensatory pause: the next sinus beat keeps its time
                times[i] = prev + e["pvc_coupling"] * local_rr
                kinds[i] = "V"
            else:  # the PAC resets the sinus node: the next beat follows one cycle (plus 10 %) later
                t_pac = prev + e["pac_coupling"] * local_rr
                shift = t_pac + 1.1 * rr - times[i + 1]
                times[i] = t_pac
                times[i + 1 :] += shift
                kinds[i] = "A"
    return times, kinds


# --------------------------------------------------------------------------------------------------
# Noise and atrial fibrillation
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def emg_sos(fs: int) -> np.ndarray:
    high = min(150.0, 0.45 * fs)
    return sps.butter(4, [20.0, high], btype="bandpass", fs=fs, output="sos")


def _noise(spec: NoiseSpec, n: int, fs: int, rng: np.random.Generator) -> np.ndarray:
    """Electrode noise ``8 x n`` in mV (order :data:`ELECTRODE_LEADS`)."""
    t = np.arange(n) / fs
    out = np.zeros((len(ELECTRODE_LEADS), n))
    k = len(ELECTRODE_LEADS)
    if spec.baseline_wander > 0:
        freq = rng.uniform(0.15, 0.5)
        amps = spec.baseline_wander * rng.uniform(0.6, 1.0, size=(k, 1))
        phases = rng.uniform(0, 2 * np.pi, size=(k, 1))
        out += amps * np.sin(2 * np.pi * freq * t[None, :] + phases)
    if spec.powerline > 0:
        amps = spec.powerline * rng.uniform(0.7, 1.0, size=(k, 1))
        phases = rng.uniform(0, 2 * np.pi, size=(k, 1))
        out += amps * np.sin(2 * np.pi * spec.powerline_hz * t[None, :] + phases)
    if spec.muscle > 0:
        white = rng.standard_normal((k, n + 200))
        emg = sps.sosfilt(emg_sos(fs), white, axis=1)[:, 200:]
        emg *= spec.muscle / emg.std(axis=1, keepdims=True)
        out += emg
    return out


def af_waves(p: Params, n: int, fs: int) -> np.ndarray:
    """Fibrillatory baseline ``8 x n``: three 4.5-8.5 Hz oscillations of an atrial dipole, strongest in V1."""
    e = p.extras
    t = np.arange(n) / fs
    mod = 1.0 + 0.3 * np.sin(2 * np.pi * 0.23 * t + e["f_phases"][0])
    dirs = (_unit(-0.5, 0.4, 0.8), _unit(0.2, 0.6, 0.6), _unit(-0.3, -0.2, 0.9))
    d = np.zeros((3, n))
    for freq, phase, weight, direction in zip(e["f_freqs"], e["f_phases"], (1.0, 0.6, 0.4), dirs, strict=True):
        d += np.outer(direction, weight * np.sin(2 * np.pi * freq * t + phase + 0.5 * np.sin(2 * np.pi * 0.4 * t)))
    return LEAD_MATRIX @ (e["f_amp"] / 3.0 * mod * d)


# --------------------------------------------------------------------------------------------------
# Assembly of a record
# --------------------------------------------------------------------------------------------------


def record_streams(seed: int, fs: float, duration: float) -> tuple[int, int, np.random.Generator, Any]:
    """``(fs, n samples, the signal's generator, the noise's seed sequence)`` of one record: the two independent
    streams every generator draws from (``SeedSequence(seed).spawn(2)``)."""
    if fs <= 0 or duration <= 0:
        raise ValueError(f"fs and duration must be positive, got fs={fs}, duration={duration}")
    fs = int(fs)
    ss_signal, ss_noise = np.random.SeedSequence(seed).spawn(2)
    return fs, int(round(fs * duration)), np.random.default_rng(ss_signal), ss_noise


def place_beat(
    clean: np.ndarray,
    leads: np.ndarray,
    start: int,
    r_idx: int,
    kind: str,
    n: int,
    r_samples: list[int],
    beat_kinds: list[str],
) -> None:
    """Add one beat's electrode leads to the padded record at ``start`` (a beat that does not fit is left out) and
    record its R peak and kind when the peak lies inside the ``n`` samples."""
    if start < 0 or start + leads.shape[1] > clean.shape[1]:
        return
    clean[:, start : start + leads.shape[1]] += leads
    if 0 <= r_idx < n:
        r_samples.append(r_idx)
        beat_kinds.append(kind)


def twelve_leads(
    clean: np.ndarray,
    pad: int,
    n: int,
    p: Params,
    noise: NoiseSpec,
    fs: int,
    ss_noise: Any,
    *,
    f_waves: Callable[[Params, int, int], np.ndarray] | None = None,
    add_noise: Callable[[NoiseSpec, int, int, np.random.Generator], np.ndarray] | None = None,
) -> np.ndarray:
    """The 12 x ``n`` float32 signal of a padded electrode-lead record: the padding cut off, AF's f waves and the
    noise added (generator 2 passes its own ``f_waves`` and ``add_noise``), III, aVR, aVL, aVF derived from I, II."""
    clean = clean[:, pad : pad + n]
    if p.rhythm == "AF":
        clean += (f_waves or af_waves)(p, n, fs)
    elec = clean
    if not noise.is_clean:
        elec = clean + (add_noise or _noise)(noise, n, fs, np.random.default_rng(ss_noise))
    elec32 = elec.astype(np.float32)
    derived = derived_limb_leads(elec32[LEAD_INDEX["I"]], elec32[LEAD_INDEX["II"]])
    rows = {name: elec32[i] for i, name in enumerate(ELECTRODE_LEADS)} | derived
    return np.stack([rows[name] for name in LEADS]).astype(np.float32, copy=False)


def frontal_axis(tmpl: _Template) -> float:
    """Frontal QRS axis (deg): ``atan2(area(aVF), area(I))`` over the QRS of a noiseless template."""
    q0, q1 = tmpl.onset, tmpl.onset + tmpl.qrs_samples + 1
    area_i = float(tmpl.leads[LEAD_INDEX["I"], q0:q1].sum())
    area_ii = float(tmpl.leads[LEAD_INDEX["II"], q0:q1].sum())
    area_avf = area_ii - area_i / 2
    return float(np.degrees(np.arctan2(area_avf, area_i)))


__all__ = [
    "ELECTRODE_LEADS",
    "LEAD_INDEX",
    "LEAD_MATRIX",
    "LEAD_VECTORS",
    "NoiseSpec",
    "P_AXIS_SINUS",
    "Params",
    "RATE_RANGES",
    "ST_DEPRESSION_DIR",
    "SynthSpec",
    "Wave",
    "add_p",
    "af_waves",
    "beat_times",
    "check_compatible",
    "draw_params",
    "emg_sos",
    "frontal",
    "frontal_axis",
    "is_compatible",
    "place_beat",
    "pvc_wave",
    "qrs_and_repol",
    "record_streams",
    "sokolow",
    "template",
    "twelve_leads",
]
