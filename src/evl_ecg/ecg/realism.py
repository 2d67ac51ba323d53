"""How realistic a generator is: the quantities issue 17 found unrealistic in generator 1, how each is measured on
generated signals, and the published (or, where marked, assumed) range each should fall in. ``benchmarks/generator.py``
prints them for generators 1 and 2 side by side; ``tests/ecg/test_generator_v2.py`` checks them. Sources:
``docs/signals.md`` 2.1.

Every measurement reads the signal (12 x n mV) and the documented ``meta["r_peaks_s"]`` (the exact sample of each
beat's lead-II extremum); noise quantities read the noise alone, ``generate(spec) - generate(spec, clean)`` (the
two streams are separate, so the difference is exactly the noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal as sps

from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg
from evl_ecg.ecg.synth import NoiseSpec, SynthSpec, generate, sample_spec

__all__ = ["QUANTITIES", "Quantity", "measure"]

FS = 500
_I, _II, _V1, _V5, _V6 = (LEADS.index(k) for k in ("I", "II", "V1", "V5", "V6"))
_AVF = LEADS.index("aVF")
_ELECTRODE_ROWS = [LEADS.index(k) for k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]


@dataclass(frozen=True)
class Quantity:
    """One quantity: what is measured (one value per record) and the range its distribution should have.

    ``median``, ``p5``, ``p95``: (lo, hi) bounds on those statistics; ``share_above``: (threshold, lo, hi), the
    share of records above ``threshold``. A bound that is ``None`` is not checked.
    """

    name: str
    unit: str
    what: str
    target: str  # the range in words, with its source (short; full citations in docs/signals.md)
    median: tuple[float, float] | None = None
    p5: tuple[float, float] | None = None
    p95: tuple[float, float] | None = None
    share_above: tuple[float, float, float] | None = None

    def failures(self, values: np.ndarray) -> list[str]:
        """The bounds ``values`` miss (empty: in range)."""
        v = np.asarray(values, dtype=float)
        out = []
        for label, q, bound in (("median", 50, self.median), ("p5", 5, self.p5), ("p95", 95, self.p95)):
            if bound is not None:
                x = float(np.percentile(v, q))
                if not bound[0] <= x <= bound[1]:
                    out.append(f"{label} {x:.3g} outside {bound[0]:g}-{bound[1]:g}")
        if self.share_above is not None:
            thr, lo, hi = self.share_above
            share = float(np.mean(v > thr))
            if not lo <= share <= hi:
                out.append(f"share > {thr:g} {share:.3f} outside {lo:g}-{hi:g}")
        return out


# ------------------------------------------------------------------ measurements on the signal


def _beats(e: Ecg, kind: str = "N") -> list[int]:
    n = e.signal.shape[1]
    rs = [int(round(t * e.fs)) for t, k in zip(e.meta["r_peaks_s"], e.meta["beats"], strict=True) if k == kind]
    return [r for r in rs if int(0.6 * e.fs) <= r < n - int(0.6 * e.fs)]


def _qrs_end(sig: np.ndarray, fs: float, r: int, frac: float = 0.05) -> int:
    """QRS offset: where the spatial velocity sum |dx/dt| falls below ``frac`` of its QRS peak."""
    v = np.abs(np.diff(sig, axis=1)).sum(axis=0)
    thr = frac * v[r - int(0.1 * fs) : r + int(0.1 * fs)].max()
    b = r
    while v[b : b + 3].max() > thr:
        b += 1
    return b + 1


def _tp(sig: np.ndarray, fs: float, r: int) -> np.ndarray:
    """Per-lead isoelectric level: median of the TP segment before the beat (rate near 60 bpm)."""
    return np.median(sig[:, r - int(0.52 * fs) : r - int(0.39 * fs)], axis=1)


def af_rate(e: Ecg) -> float:
    r = e.meta["r_peaks_s"]
    return 60.0 * (len(r) - 1) / (r[-1] - r[0])


def qrs_variation(e: Ecg) -> float:
    """Beat-to-beat CV (%) of the lead-II QRS peak-to-peak amplitude (R +- 60 ms) over the record's sinus beats."""
    w = int(0.06 * e.fs)
    pp = np.array([np.ptp(e.signal[_II, r - w : r + w]) for r in _beats(e)])
    return float(100 * pp.std() / pp.mean())


def p_amplitude(e: Ecg) -> float:
    """P-wave amplitude (mV) in lead II of the third beat: largest deviation 300-40 ms before R, against TP."""
    r = _beats(e)[2]
    seg = e.signal[_II, r - int(0.3 * e.fs) : r - int(0.04 * e.fs)] - _tp(e.signal, e.fs, r)[_II]
    return float(seg[np.argmax(np.abs(seg))])


def qrs_axis(e: Ecg) -> float:
    """Frontal QRS axis (deg): atan2(area aVF, area I) over R +- 60 ms of the third beat (TP baseline removed)."""
    r = _beats(e)[2]
    w = int(0.06 * e.fs)
    q = e.signal[:, r - w : r + w] - _tp(e.signal, e.fs, r)[:, None]
    return float(np.degrees(np.arctan2(q[_AVF].sum(), q[_I].sum())))


def st_depression(e: Ecg) -> float:
    """Deepest ST depression (mV, positive) among II, V5, V6 at J + 60 ms of the third beat, against TP."""
    r = _beats(e)[2]
    j = _qrs_end(e.signal, e.fs, r)
    st = e.signal[:, j + int(0.06 * e.fs)] - _tp(e.signal, e.fs, r)
    return float(-st[[_II, _V5, _V6]].min())


def sokolow(e: Ecg) -> float:
    """Sokolow-Lyon voltage S(V1) + max R(V5, V6) (mV) of the third beat, R -60..+80 ms, against TP."""
    r = _beats(e)[2]
    q = e.signal[:, r - int(0.06 * e.fs) : r + int(0.08 * e.fs)] - _tp(e.signal, e.fs, r)[:, None]
    return float(max(0.0, -q[_V1].min()) + max(q[_V5].max(), q[_V6].max(), 0.0))


@lru_cache(maxsize=4)
def _sos(kind: str, fs: int) -> np.ndarray:
    if kind == "low":
        return sps.butter(2, 0.7, btype="lowpass", fs=fs, output="sos")
    return sps.butter(4, 20.0, btype="highpass", fs=fs, output="sos")


def baseline_wander(noise: np.ndarray, fs: int) -> float:
    """Median over the 12 leads of the peak-to-peak (mV) of the noise below 0.7 Hz."""
    low = sps.sosfiltfilt(_sos("low", fs), noise, axis=1)
    return float(np.median(np.ptp(low, axis=1)))


def _emg(noise: np.ndarray, fs: int) -> np.ndarray:
    return sps.sosfiltfilt(_sos("high", fs), noise[_ELECTRODE_ROWS], axis=1)


def muscle_lead_share(noise: np.ndarray, fs: int) -> float:
    """Share of the 8 independent leads whose > 20 Hz noise RMS is at least half the largest lead's."""
    rms = np.sqrt((_emg(noise, fs) ** 2).mean(axis=1))
    return float(np.mean(rms >= 0.5 * rms.max()))


def muscle_nonstationarity(noise: np.ndarray, fs: int) -> float:
    """CV of the > 20 Hz noise RMS over 0.5-s windows, in the lead where it is largest."""
    emg = _emg(noise, fs)
    row = emg[int(np.argmax((emg**2).mean(axis=1)))]
    k = int(0.5 * fs)
    win = np.sqrt((row[: len(row) // k * k].reshape(-1, k) ** 2).mean(axis=1))
    return float(win.std() / win.mean())


# ------------------------------------------------------------------ drawing the records


def _clean(spec: SynthSpec) -> SynthSpec:
    return SynthSpec(spec.findings, heart_rate=spec.heart_rate, mi_territory=spec.mi_territory)


def _signals(findings: set[str], generator: int, n: int, *, noise: bool, heart_rate: float | None) -> list[Ecg]:
    rng = np.random.default_rng(17)
    out = []
    for i in range(n):
        levels = sample_spec(rng, generator=generator).noise if noise else NoiseSpec()
        spec = SynthSpec(frozenset(findings), heart_rate=heart_rate, noise=levels)
        out.append(generate(spec, seed=10_000 + i, fs=FS, generator=generator))
    return out


def _noise_only(generator: int, n: int, *, need_muscle: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(29)
    out = []
    seed = 20_000
    while len(out) < n:
        levels = sample_spec(rng, generator=generator).noise
        seed += 1
        if need_muscle and levels.muscle == 0:
            continue
        spec = SynthSpec(frozenset({"SR"}), heart_rate=60.0, noise=levels)
        noisy = generate(spec, seed=seed, fs=FS, generator=generator).signal.astype(np.float64)
        out.append(noisy - generate(_clean(spec), seed=seed, fs=FS, generator=generator).signal)
    return out


def _on_signals(fn: Callable[[Ecg], float], findings: set[str], *, noise: bool = False, rate: float | None = 60.0):
    def run(generator: int, n: int) -> np.ndarray:
        return np.array([fn(e) for e in _signals(findings, generator, n, noise=noise, heart_rate=rate)])

    return run


def _on_noise(fn: Callable[[np.ndarray, int], float], *, need_muscle: bool = False):
    def run(generator: int, n: int) -> np.ndarray:
        return np.array([fn(x, FS) for x in _noise_only(generator, n, need_muscle=need_muscle)])

    return run


#: Quantity name -> (definition, how to measure it for ``(generator, n_records)``).
QUANTITIES: dict[str, tuple[Quantity, Callable[[int, int], np.ndarray]]] = {
    "af_rate": (
        Quantity(
            "af_rate",
            "bpm",
            "AF mean ventricular rate, from the R peaks",
            "40-180 (Challenge 2020 records); p5 < 60 and p95 > 130 (spread assumed)",
            p5=(40, 60),
            p95=(130, 180),
        ),
        _on_signals(af_rate, {"AF"}, rate=None),
    ),
    "baseline_wander": (
        Quantity(
            "baseline_wander",
            "mV",
            "peak-to-peak of noise < 0.7 Hz, median over leads",
            "median 0.035 (Challenge 2020); band 0.02-0.07 assumed",
            median=(0.02, 0.07),
        ),
        _on_noise(baseline_wander),
    ),
    "muscle_lead_share": (
        Quantity(
            "muscle_lead_share",
            "share",
            "leads carrying muscle noise (>= 0.5 x the largest), records with EMG",
            "a subset of leads (Moody 1984; Clifford 2006): median <= 0.5 (assumed)",
            median=(0.0, 0.5),
        ),
        _on_noise(muscle_lead_share, need_muscle=True),
    ),
    "muscle_nonstationarity": (
        Quantity(
            "muscle_nonstationarity",
            "CV",
            "CV of 0.5-s EMG RMS in the noisiest lead, records with EMG",
            "bursting, not stationary (Clifford 2006): median >= 0.3 (assumed)",
            median=(0.3, 5.0),
        ),
        _on_noise(muscle_nonstationarity, need_muscle=True),
    ),
    "qrs_variation": (
        Quantity(
            "qrs_variation",
            "%",
            "beat-to-beat CV of lead-II QRS amplitude (with noise)",
            "median 5.7 (Challenge 2020); band 3.5-9 assumed",
            median=(3.5, 9.0),
        ),
        _on_signals(qrs_variation, {"SR"}, noise=True, rate=None),
    ),
    "p_amplitude": (
        Quantity(
            "p_amplitude",
            "mV",
            "P amplitude in lead II (normal ECG)",
            "< 0.25 (Hancock 2009); median 0.06-0.14 assumed",
            median=(0.06, 0.14),
            p95=(0.0, 0.25),
        ),
        _on_signals(p_amplitude, {"SR"}),
    ),
    "qrs_axis": (
        Quantity(
            "qrs_axis",
            "deg",
            "frontal QRS axis (normal ECG)",
            "normal -30..+90 incl. leftward (Surawicz 2009); p5 in -30..0, p95 <= 90",
            p5=(-30, 0),
            p95=(30, 90),
        ),
        _on_signals(qrs_axis, {"SR"}),
    ),
    "st_depression": (
        Quantity(
            "st_depression",
            "mV",
            "deepest ST depression in II/V5/V6 at J+60 ms (STD)",
            ">= 0.05 (Thygesen 2018); p5 0.04-0.08, median 0.08-0.18, p95 <= 0.32 (assumed)",
            p5=(0.04, 0.08),
            median=(0.08, 0.18),
            p95=(0.0, 0.32),
        ),
        _on_signals(st_depression, {"SR", "STD"}),
    ),
    "sokolow_no_lvh": (
        Quantity(
            "sokolow_no_lvh",
            "mV",
            "Sokolow-Lyon voltage of ECGs without LVH",
            "some >= 3.5 (specificity < 100 %, Pewsner 2007); share > 3.5 in 1-15 % (assumed)",
            share_above=(3.5, 0.01, 0.15),
        ),
        _on_signals(sokolow, {"SR"}),
    ),
}


def measure(name: str, generator: int, n: int = 200) -> np.ndarray:
    """One value per record of quantity ``name`` over ``n`` records of ``generator``."""
    return QUANTITIES[name][1](generator, n)
