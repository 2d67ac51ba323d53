"""A labelled synthetic 12-lead ECG generator: draw a specification (:func:`sample_spec`) and generate its ECG
(:func:`generate`) with generator 1 (this module, frozen) or 2 (:mod:`evl_ecg.ecg.synth_v2`); the model both share,
a cardiac dipole with encoded clinical findings, is :mod:`evl_ecg.ecg.synth_model`.

A synthetic ECG is not a clinical one: it has the criteria we put in and nothing else.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import numpy as np

from evl_ecg.ecg.labels import FINDINGS, MI_TERRITORIES, RHYTHMS, VOCABULARIES, labels_from_findings
from evl_ecg.ecg.signal import Ecg
from evl_ecg.ecg.synth_model import (
    ELECTRODE_LEADS,
    LEAD_VECTORS,
    P_AXIS_SINUS,
    RATE_RANGES,
    NoiseSpec,
    SynthSpec,
    add_p,
    beat_times,
    check_compatible,
    draw_params,
    frontal,
    frontal_axis,
    is_compatible,
    place_beat,
    pvc_wave,
    qrs_and_repol,
    record_streams,
    sokolow,
    template,
    twelve_leads,
)

__all__ = [
    "ELECTRODE_LEADS",
    "GENERATORS",
    "LEAD_VECTORS",
    "RATE_RANGES",
    "NoiseSpec",
    "SynthSpec",
    "check_compatible",
    "check_generator",
    "generate",
    "is_compatible",
    "sample_spec",
]

#: Generator versions: 1 is this module's model, frozen (every corpus made with it rebuilds byte for byte);
#: 2 is :mod:`evl_ecg.ecg.synth_v2` (issue 17: quantities widened to published ranges). 1 is the default.
GENERATORS: tuple[int, ...] = (1, 2)


def check_generator(generator: int) -> int:
    """Return ``generator`` if it is one of :data:`GENERATORS`, else raise ``ValueError``."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; known: {', '.join(map(str, GENERATORS))}")
    return int(generator)


# --------------------------------------------------------------------------------------------------
# Drawing specifications
# --------------------------------------------------------------------------------------------------

_NON_RHYTHM: tuple[str, ...] = tuple(code for code in FINDINGS if code not in RHYTHMS)


@cache
def _findings_of_label(vocabulary: str) -> dict[str, tuple[str, ...]]:
    """Label -> the single findings that imply it in ``vocabulary`` (derived from labels_from_findings)."""
    out: dict[str, list[str]] = {label: [] for label in VOCABULARIES[vocabulary]}
    for code, finding in FINDINGS.items():
        if code == "SR":
            continue
        combo = {code} if finding.kind == "rhythm" else {code, "SR"}
        for label in labels_from_findings(combo, vocabulary):
            out[label].append(code)
    return {label: tuple(codes) for label, codes in out.items()}


def _draw_noise(rng: np.random.Generator) -> NoiseSpec:
    return NoiseSpec(
        baseline_wander=float(rng.uniform(0.05, 0.3)) if rng.random() < 0.7 else 0.0,
        powerline=float(rng.uniform(0.01, 0.05)) if rng.random() < 0.3 else 0.0,
        muscle=float(rng.uniform(0.005, 0.03)) if rng.random() < 0.5 else 0.0,
        powerline_hz=50.0 if rng.random() < 0.5 else 60.0,
    )


def sample_spec(
    rng: np.random.Generator,
    *,
    vocabulary: str | None = None,
    normal_fraction: float = 0.3,
    noise: bool = True,
    generator: int = 1,
) -> SynthSpec:
    """Draw a clinically compatible :class:`SynthSpec`.

    With probability ``normal_fraction`` a normal ECG (``{"SR"}``); otherwise a primary abnormal finding, a
    rhythm (SR 75 %, SB/STACH 10 % each, AF 5 %, unless the primary is the rhythm) and 0-2 compatible extra
    findings (multi-label). With ``vocabulary`` (``"ptbxl"``, ``"code15"``, ``"cpsc"``) the primary finding is
    drawn through a label of that vocabulary chosen uniformly, so every label occurs about equally often and
    ``labels_from_findings(findings, vocabulary)`` is never empty. CODE-15% has no normal label (a normal exam
    is the empty set), so with ``vocabulary="code15"`` ``normal_fraction`` is ignored and no normal ECG is drawn.
    ``generator`` chooses the noise levels drawn (:data:`GENERATORS`); the findings are drawn alike.
    """
    if not 0 <= normal_fraction <= 1:
        raise ValueError(f"normal_fraction must lie in [0, 1], got {normal_fraction}")
    if check_generator(generator) == 2:
        from evl_ecg.ecg.synth_v2 import draw_noise as _draw_noise_v2

        noise_spec: NoiseSpec = _draw_noise_v2(rng) if noise else NoiseSpec()
    else:
        noise_spec = _draw_noise(rng) if noise else NoiseSpec()
    if vocabulary is None:
        normal_ok, primaries = True, None
    else:
        if vocabulary not in VOCABULARIES:
            raise KeyError(f"unknown vocabulary {vocabulary!r}; known: {sorted(VOCABULARIES)}")
        normal_ok = "NORM" in VOCABULARIES[vocabulary]
        primaries = {k: v for k, v in _findings_of_label(vocabulary).items() if k != "NORM" and v}
    if normal_ok and rng.random() < normal_fraction:
        return SynthSpec(findings=frozenset({"SR"}), noise=noise_spec)
    if primaries is None:
        primary = str(rng.choice([c for c in FINDINGS if c != "SR"]))
    else:
        label = str(rng.choice(sorted(primaries)))
        primary = str(rng.choice(primaries[label]))
    findings = {primary}
    if primary not in RHYTHMS:
        while True:
            rhythm = str(rng.choice(RHYTHMS, p=[0.75, 0.1, 0.1, 0.05]))
            if is_compatible(findings | {rhythm}):
                findings.add(rhythm)
                break
    for _ in range(int(rng.choice(3, p=[0.6, 0.3, 0.1]))):
        extra = str(rng.choice(_NON_RHYTHM))
        if is_compatible(findings | {extra}):
            findings.add(extra)
    territory = str(rng.choice(sorted(MI_TERRITORIES))) if "MI" in findings else None
    return SynthSpec(findings=frozenset(findings), mi_territory=territory, noise=noise_spec)


def generate(spec: SynthSpec, *, seed: int, fs: int = 500, duration: float = 10.0, generator: int = 1) -> Ecg:
    """Generate one labelled synthetic 12-lead ECG.

    Args:
        spec: findings and knobs (:class:`SynthSpec`).
        seed: the record's seed; the same (spec, seed, fs, duration) gives the same bytes. The signal and the
            noise come from separate streams, so changing only ``spec.noise`` leaves the clean ECG unchanged.
        fs: sampling rate in Hz.
        duration: length in s.
        generator: model version (:data:`GENERATORS`): 1 (default, frozen) or 2 (:func:`evl_ecg.ecg.synth_v2.generate`,
            whose ``meta`` adds ``generator: 2``; a ``meta`` without it is generator 1).

    Returns:
        :class:`~evl_ecg.ecg.signal.Ecg` with ``signal`` ``12 x round(fs * duration)`` float32 in mV (standard
        lead order), ``record_id = f"synth-{seed}"``, ``findings = spec.findings``, ``labels = {}`` and ``meta``:

        * ``heart_rate``: measured mean rate, ``60 * (beats - 1) / (last R - first R)`` in bpm;
        * ``rhythm``; ``pr_ms`` (P onset to QRS onset of sinus beats, ``None`` for AF); ``qrs_ms`` (conducted
          beats); ``qt_ms`` (QRS onset to T end at the mean RR); ``qtc_ms`` = ``qt_ms / sqrt(60 / heart_rate)``
          (Bazett); ``axis_deg``: frontal QRS axis, ``atan2(area aVF, area I)`` of the noiseless conducted QRS;
        * ``r_peaks_s``: for every beat whose R lies in the record, the time of the sample where *that beat's own
          noiseless QRS complex* has its largest absolute value in lead II (``r_peak_lead``): the R-wave peak of
          normal beats, the dominant deflection of wide or ectopic ones (samples are exact: ``index / fs``);
        * ``beats``: ``"N"`` (sinus or AF-conducted), ``"A"`` (PAC), ``"V"`` (PVC), one per R peak;
        * ``mi_territory``, ``noise`` (the :class:`NoiseSpec` as a dict), ``sokolow_mv`` (S(V1) + max R(V5, V6)
          of the noiseless conducted beat), ``p_present``.
    """
    if check_generator(generator) == 2:
        from evl_ecg.ecg.synth_v2 import generate as _generate_v2

        return _generate_v2(spec, seed=seed, fs=fs, duration=duration)
    fs, n, rng, ss_noise = record_streams(seed, fs, duration)
    f = spec.findings
    p = draw_params(spec, rng)
    rr = 60.0 / p.rate
    qt = p.qtc * np.sqrt(rr)

    # Beat templates (one per beat type), dipole projected on the eight electrode leads.
    wave_n = qrs_and_repol(f, p, qt)
    sok = sokolow(wave_n, p.qrs)
    if p.pr is not None:
        add_p(wave_n, p.pr, p.p_dur, p.a_p * frontal(P_AXIS_SINUS, 0.2))
    pre = (p.pr or 0.0) + 0.02
    post = qt + 0.06
    templates = {"N": template(wave_n, pre, post, p.qrs, fs)}
    if "PAC" in f:
        wave_a = qrs_and_repol(f, p, qt)
        pr_a = p.pr if p.pr is not None else 0.16
        add_p(wave_a, min(pr_a, 0.2) if "IAVB" not in f else pr_a, 0.08, 0.16 * frontal(p.extras["pac_axis"], 0.3))
        templates["A"] = template(wave_a, max(pre, pr_a + 0.02), post, p.qrs, fs)
    if "PVC" in f:
        q_v = p.extras["pvc_qrs"]
        templates["V"] = template(pvc_wave(p, qt), 0.02, post + 0.02, q_v, fs)

    times, kinds = beat_times(p, f, duration, rng)
    pad = max(t.leads.shape[1] for t in templates.values()) + 2
    clean = np.zeros((len(ELECTRODE_LEADS), n + 2 * pad))
    r_samples: list[int] = []
    beat_kinds: list[str] = []
    for t_r, kind in zip(times, kinds, strict=True):
        tmpl = templates[kind]
        r_idx = int(round(t_r * fs))
        start = r_idx - tmpl.r_offset - tmpl.onset + pad
        place_beat(clean, tmpl.leads, start, r_idx, kind, n, r_samples, beat_kinds)
    sig = twelve_leads(clean, pad, n, p, spec.noise, fs, ss_noise)

    r_times = [r / fs for r in r_samples]
    if len(r_times) >= 2:
        heart_rate = 60.0 * (len(r_times) - 1) / (r_times[-1] - r_times[0])
    else:
        heart_rate = p.rate
    meta: dict[str, Any] = {
        "heart_rate": float(heart_rate),
        "rhythm": p.rhythm,
        "pr_ms": None if p.pr is None else 1000 * p.pr,
        "qrs_ms": 1000 * p.qrs,
        "qt_ms": 1000 * qt,
        "qtc_ms": 1000 * qt / np.sqrt(60.0 / heart_rate),
        "axis_deg": frontal_axis(templates["N"]),
        "r_peaks_s": r_times,
        "r_peak_lead": "II",
        "beats": beat_kinds,
        "mi_territory": p.territory,
        "noise": dataclasses.asdict(spec.noise),
        "sokolow_mv": sok,
        "p_present": p.pr is not None,
        "seed": seed,
    }
    return Ecg(signal=sig, fs=fs, record_id=f"synth-{seed}", findings=spec.findings, labels={}, meta=meta)
