"""Generator 2: the dipole model of :mod:`evl_ecg.ecg.synth_model` with the quantities of issue 17 widened to published
ranges (``docs/signals.md`` section 2.1 cites each).

Generator 1 (:func:`evl_ecg.ecg.synth.generate` with ``generator=1``, the default) is frozen: every corpus built
before generator 2 existed, the shipped teacher's included, rebuilds byte for byte. Generator 2 reuses its beat
model and changes:

* AF ventricular rate drawn over 40-180 bpm (generator 1: 70-130); f waves coarser and non-stationary;
* beat-to-beat QRS variation: each beat's dipole loop scaled and rotated in the frontal plane with respiration,
  plus a random part (generator 1: one identical template per beat type);
* P waves lower (median about 0.1 mV in II), frontal QRS axis over -30..+90 deg (leftward axes included);
* ST depression of STD over 0.05-0.3 mV (generator 1: 0.26-0.43 mV in the deepest lead); QRS voltage of
  non-LVH records from a log-normal distribution with no cap, so a few exceed the Sokolow-Lyon 3.5 mV;
* noise built per *electrode* (RA, LA, LL, C1-C6) and mapped to the leads (``I = LA - RA``, ``II = LL - RA``,
  ``Vi = Ci - (RA + LA + LL) / 3``): baseline wander of a few hundredths of a mV, muscle noise bursting on 1-3
  electrodes only, single-electrode motion bursts and electrode pops seen through the amplifier's high-pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import signal as sps

from evl_ecg.ecg import synth_model as m
from evl_ecg.ecg.signal import Ecg

__all__ = ["ELECTRODES", "NoiseSpecV2", "draw_noise", "electrode_to_leads", "generate"]

#: Electrodes of a resting 12-lead ECG; noise of generator 2 is drawn per electrode.
ELECTRODES: tuple[str, ...] = ("RA", "LA", "LL", "C1", "C2", "C3", "C4", "C5", "C6")


def electrode_to_leads() -> np.ndarray:
    """``8 x 9`` matrix from electrode potentials (:data:`ELECTRODES`) to the leads I, II, V1-V6.

    ``I = LA - RA``, ``II = LL - RA``, ``Vi = Ci - WCT`` with Wilson's central terminal ``WCT = (RA + LA + LL) / 3``.
    """
    m = np.zeros((8, 9))
    m[0, [0, 1]] = (-1.0, 1.0)
    m[1, [0, 2]] = (-1.0, 1.0)
    for i in range(6):
        m[2 + i, :3] = -1.0 / 3.0
        m[2 + i, 3 + i] = 1.0
    return m


_E2L = electrode_to_leads()


@dataclass(frozen=True)
class NoiseSpecV2(m.NoiseSpec):
    """Noise levels of generator 2 in mV, per electrode (see :func:`electrode_to_leads`).

    Attributes:
        baseline_wander: peak amplitude of each electrode's drift (two sinusoids, 0.05-0.15 Hz and the respiratory
            0.15-0.45 Hz, scaled per electrode by U(0.3, 1)).
        powerline: as generator 1 (on the leads).
        muscle: RMS, over the record, of 20-150 Hz noise on 1-3 electrodes, amplitude-modulated by bursts.
        motion: peak amplitude of 1-2 motion bursts (0.5-8 Hz noise, 0.2-1 s) on one electrode; 0: none.
        electrode_pop: size of an electrode-offset step on one electrode, seen through a 0.5 Hz first-order
            high-pass (a jump decaying with tau = 0.32 s); 0: none.
    """

    motion: float = 0.0
    electrode_pop: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("motion", "electrode_pop"):
            if getattr(self, name) < 0:
                raise ValueError(f"NoiseSpecV2.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def is_clean(self) -> bool:
        return super().is_clean and self.motion == 0 and self.electrode_pop == 0


def draw_noise(rng: np.random.Generator) -> NoiseSpecV2:
    """Noise levels of one record (shares and sizes assumed).

    The wander level, median 0.026 mV, gives a measured median near the Challenge records' 0.035 mV.
    """
    return NoiseSpecV2(
        baseline_wander=float(np.clip(0.026 * np.exp(0.6 * rng.standard_normal()), 0.005, 0.3)),
        powerline=float(rng.uniform(0.005, 0.03)) if rng.random() < 0.2 else 0.0,
        muscle=float(rng.uniform(0.01, 0.05)) if rng.random() < 0.5 else 0.0,
        powerline_hz=50.0 if rng.random() < 0.5 else 60.0,
        motion=float(rng.uniform(0.1, 0.6)) if rng.random() < 0.15 else 0.0,
        electrode_pop=float(rng.uniform(0.3, 1.5)) if rng.random() < 0.05 else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

#: AF ventricular rate: normal(100, 35) truncated to 40-180 bpm (range: Challenge records; shape assumed).
AF_RATE = (100.0, 35.0, 40.0, 180.0)
#: Frontal QRS axis of records with no axis-setting finding: normal(40, 30) truncated to -30..+90 deg.
AXIS = (40.0, 30.0, -30.0, 90.0)
#: LBBB / LVH: uniform over -30..+60 deg (assumed; generator 1: 0..45).
AXIS_LEFT = (-30.0, 60.0)
#: P amplitude (mV) of the sinus P vector: log-normal, median 0.1, sigma 0.35, clipped 0.03-0.22 (assumed).
P_AMP = (0.1, 0.35, 0.03, 0.22)
#: Deepest ST depression of STD in II/V5/V6 (mV): log-normal median 0.11, sigma 0.4, clipped 0.05-0.3 (assumed).
ST_DEPTH = (0.11, 0.4, 0.05, 0.3)
#: Sokolow-Lyon voltage (mV) of non-LVH records: log-normal median 2.2, sigma 0.25 (assumed; about 3 % >= 3.5).
SOKOLOW = (2.2, 0.25)
#: f-wave amplitude factor of AF (generator 1: 0.06-0.12; assumed).
F_AMP = (0.06, 0.2)


def _truncnorm(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    while True:
        x = mean + sd * rng.standard_normal()
        if lo <= x <= hi:
            return float(x)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(median * np.exp(sigma * rng.standard_normal()), lo, hi))


def _st_gain() -> float:
    """Largest projection of the ST-depression direction on II, V5, V6 (mV per unit ST vector)."""
    return float(max(m.LEAD_MATRIX[m.LEAD_INDEX[k]] @ m.ST_DEPRESSION_DIR for k in ("II", "V5", "V6")))


def _draw_params(spec: m.SynthSpec, rng: np.random.Generator) -> m.Params:
    p = m.draw_params(spec, rng)  # generator 1's draws, then the widened ones from the same stream
    f = spec.findings
    e = dict(p.extras)
    rate = p.rate
    if spec.heart_rate is None and p.rhythm == "AF":
        rate = _truncnorm(rng, *AF_RATE)
    axis = p.axis
    if spec.axis_deg is None and p.territory not in ("inferior", "lateral"):
        axis = float(rng.uniform(*AXIS_LEFT)) if f & {"LBBB", "LVH"} else _truncnorm(rng, *AXIS)
    if "STD" in f:
        e["st"] = _lognormal(rng, *ST_DEPTH) / _st_gain()
    e["sokolow_target"] = float(SOKOLOW[0] * np.exp(SOKOLOW[1] * rng.standard_normal())) * spec.amplitude
    e["f_amp"] = float(rng.uniform(*F_AMP))
    e["f_env"] = rng.uniform(0.05, 0.2, size=2)  # Hz of the f-wave amplitude envelope
    e["beat_scale_resp"] = float(rng.uniform(0.02, 0.06))  # respiratory QRS amplitude modulation
    e["beat_scale_rand"] = float(rng.uniform(0.015, 0.04))  # random beat-to-beat part
    e["beat_rot_deg"] = float(rng.uniform(2.0, 6.0))  # respiratory axis swing
    e["resp_phase"] = float(rng.uniform(0, 2 * np.pi))
    a_p = _lognormal(rng, *P_AMP)
    return dataclasses.replace(p, rate=float(rate), axis=axis, a_p=a_p, extras=e)


# --------------------------------------------------------------------------------------------------
# Noise per electrode
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _motion_sos(fs: int) -> np.ndarray:
    return sps.butter(2, [0.5, min(8.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")


def _noise(spec: m.NoiseSpec, n: int, fs: int, rng: np.random.Generator) -> np.ndarray:
    """Noise ``8 x n`` (mV) on I, II, V1-V6: drawn per electrode, mapped by :func:`electrode_to_leads`."""
    t = np.arange(n) / fs
    k = len(ELECTRODES)
    el = np.zeros((k, n))
    if spec.baseline_wander > 0:
        for lo, hi in ((0.05, 0.15), (0.15, 0.45)):
            freq = rng.uniform(lo, hi, size=(k, 1))
            amps = 0.5 * spec.baseline_wander * rng.uniform(0.3, 1.0, size=(k, 1))
            el += amps * np.sin(2 * np.pi * freq * t[None, :] + rng.uniform(0, 2 * np.pi, size=(k, 1)))
    motion = getattr(spec, "motion", 0.0)
    pop = getattr(spec, "electrode_pop", 0.0)
    if spec.muscle > 0:
        chosen = rng.choice(k, size=int(rng.integers(1, 4)), replace=False)
        white = rng.standard_normal((len(chosen), n + 200))
        emg = sps.sosfilt(m.emg_sos(fs), white, axis=1)[:, 200:]
        emg /= emg.std(axis=1, keepdims=True)
        env = np.full((len(chosen), n), 0.15)
        for row in range(len(chosen)):  # 1-4 contraction bursts of 0.3-2 s
            for _ in range(int(rng.integers(1, 5))):
                c, w = rng.uniform(0, n / fs), rng.uniform(0.3, 2.0)
                env[row] += rng.uniform(0.5, 1.5) * np.exp(-0.5 * ((t - c) / (w / 2.5)) ** 2)
        emg *= env
        emg *= spec.muscle / np.sqrt((emg**2).mean(axis=1, keepdims=True))
        el[chosen] += emg
    if motion > 0:
        j = int(rng.integers(k))
        for _ in range(int(rng.integers(1, 3))):
            c, w = rng.uniform(0.5, n / fs - 0.5), rng.uniform(0.2, 1.0)
            burst = sps.sosfilt(_motion_sos(fs), rng.standard_normal(n))
            win = np.exp(-0.5 * ((t - c) / (w / 4)) ** 2)
            burst *= win
            el[j] += motion * burst / max(np.abs(burst).max(), 1e-12)
    if pop > 0:
        j = int(rng.integers(k))
        t0 = rng.uniform(1.0, n / fs - 1.0)
        tau = 1.0 / (2 * np.pi * 0.5)  # first-order 0.5 Hz high-pass: the step decays with tau
        after = t >= t0
        el[j, after] += pop * float(rng.choice([-1.0, 1.0])) * np.exp(-(t[after] - t0) / tau)
    out = _E2L @ el
    if spec.powerline > 0:
        amps = spec.powerline * rng.uniform(0.7, 1.0, size=(8, 1))
        phases = rng.uniform(0, 2 * np.pi, size=(8, 1))
        out += amps * np.sin(2 * np.pi * spec.powerline_hz * t[None, :] + phases)
    return out


def _f_waves(p: m.Params, n: int, fs: int) -> np.ndarray:
    """Generator 1's f waves with a slowly varying (non-stationary) amplitude between 0.3 and 1.7 times."""
    e = p.extras
    t = np.arange(n) / fs
    env = 1.0 + 0.7 * np.sin(2 * np.pi * e["f_env"][0] * t + e["f_phases"][1]) * np.sin(
        2 * np.pi * e["f_env"][1] * t + e["f_phases"][2]
    )
    return m.af_waves(p, n, fs) * env[None, :]


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


@dataclass
class _Beat:
    dipole: np.ndarray  # 3 x m
    onset: int
    qrs_samples: int


def _beat_template(wave: m.Wave, pre: float, post: float, qrs: float, fs: int) -> _Beat:
    n_pre, n_post = int(np.ceil(pre * fs)), int(np.ceil(post * fs))
    t = np.arange(-n_pre, n_post + 1) / fs
    return _Beat(dipole=wave.dipole(t), onset=n_pre, qrs_samples=int(round(qrs * fs)))


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def generate(spec: m.SynthSpec, *, seed: int, fs: int = 500, duration: float = 10.0) -> Ecg:
    """Generator 2; the same contract and ``meta`` as :func:`evl_ecg.ecg.synth.generate`, plus ``generator: 2``.

    Each beat ``k`` is the beat type's dipole loop ``D`` scaled and rotated about the sagittal axis,
    ``l . (g_k R_z(theta_k) D)``, with ``g_k = 1 + A sin(2 pi f_resp t_k + phi) + sigma eps_k`` and
    ``theta_k = Theta sin(2 pi f_resp t_k + phi)``; ``r_peaks_s`` is each beat's own lead-II extremum.
    ``spec.noise`` may be a generator-1 :class:`~evl_ecg.ecg.synth.NoiseSpec` (no motion or pops) or a
    :class:`NoiseSpecV2`; either is drawn per electrode.
    """
    fs, n, rng, ss_noise = m.record_streams(seed, fs, duration)
    f = spec.findings
    p = _draw_params(spec, rng)
    e = p.extras
    rr = 60.0 / p.rate
    qt = p.qtc * np.sqrt(rr)

    wave_n = m.qrs_and_repol(f, p, qt)
    sok = m.sokolow(wave_n, p.qrs)
    if p.pr is not None:
        m.add_p(wave_n, p.pr, p.p_dur, p.a_p * m.frontal(m.P_AXIS_SINUS, 0.2))
    pre = (p.pr or 0.0) + 0.02
    post = qt + 0.06
    beats = {"N": _beat_template(wave_n, pre, post, p.qrs, fs)}
    axis_tmpl = m.template(wave_n, pre, post, p.qrs, fs)
    if "PAC" in f:
        wave_a = m.qrs_and_repol(f, p, qt)
        pr_a = p.pr if p.pr is not None else 0.16
        m.add_p(wave_a, min(pr_a, 0.2) if "IAVB" not in f else pr_a, 0.08, 0.16 * m.frontal(e["pac_axis"], 0.3))
        beats["A"] = _beat_template(wave_a, max(pre, pr_a + 0.02), post, p.qrs, fs)
    if "PVC" in f:
        beats["V"] = _beat_template(m.pvc_wave(p, qt), 0.02, post + 0.02, e["pvc_qrs"], fs)

    times, kinds = m.beat_times(p, f, duration, rng)
    resp = np.sin(2 * np.pi * e["resp_hz"] * times + e["resp_phase"])
    gains = 1.0 + e["beat_scale_resp"] * resp + e["beat_scale_rand"] * rng.standard_normal(len(times))
    angles = e["beat_rot_deg"] * resp
    pad = max(b.dipole.shape[1] for b in beats.values()) + 2
    clean = np.zeros((len(m.ELECTRODE_LEADS), n + 2 * pad))
    r_samples: list[int] = []
    beat_kinds: list[str] = []
    ii = m.LEAD_INDEX["II"]
    for t_r, kind, g, ang in zip(times, kinds, gains, angles, strict=True):
        b = beats[kind]
        leads = m.LEAD_MATRIX @ (g * _rot_z(ang)) @ b.dipole
        r_off = int(np.argmax(np.abs(leads[ii, b.onset : b.onset + b.qrs_samples + 1])))
        r_idx = int(round(t_r * fs))
        start = r_idx - r_off - b.onset + pad
        m.place_beat(clean, leads, start, r_idx, kind, n, r_samples, beat_kinds)
    sig = m.twelve_leads(clean, pad, n, p, spec.noise, fs, ss_noise, f_waves=_f_waves, add_noise=_noise)

    r_times = [r / fs for r in r_samples]
    heart_rate = 60.0 * (len(r_times) - 1) / (r_times[-1] - r_times[0]) if len(r_times) >= 2 else p.rate
    meta: dict[str, Any] = {
        "heart_rate": float(heart_rate),
        "rhythm": p.rhythm,
        "pr_ms": None if p.pr is None else 1000 * p.pr,
        "qrs_ms": 1000 * p.qrs,
        "qt_ms": 1000 * qt,
        "qtc_ms": 1000 * qt / np.sqrt(60.0 / heart_rate),
        "axis_deg": m.frontal_axis(axis_tmpl),
        "r_peaks_s": r_times,
        "r_peak_lead": "II",
        "beats": beat_kinds,
        "mi_territory": p.territory,
        "noise": dataclasses.asdict(spec.noise),
        "sokolow_mv": sok,
        "p_present": p.pr is not None,
        "seed": seed,
        "generator": 2,
    }
    return Ecg(signal=sig, fs=fs, record_id=f"synth-{seed}", findings=spec.findings, labels={}, meta=meta)
