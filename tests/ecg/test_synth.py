"""The synthetic generator, checked by measuring each clinical criterion on the generated signal.

Every measurement here works on the signal alone (R peaks from a slope detector, QRS limits from the spatial
velocity, baselines from the TP segment), never on the generator's own bookkeeping, so a wrong encoding fails.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

from evl_ecg.ecg.labels import FINDINGS, MI_TERRITORIES, RHYTHMS, VOCABULARIES, labels_from_findings
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg
from evl_ecg.ecg.synth import NoiseSpec, SynthSpec, check_compatible, generate, is_compatible, sample_spec

FS = 500
I_, II, III, AVR, AVL, AVF, V1, V2, V3, V4, V5, V6 = range(12)


def _gen(findings: set[str], seed: int = 0, **kw) -> Ecg:
    kw.setdefault("heart_rate", 62.0)
    return generate(SynthSpec(frozenset(findings), **kw), seed=seed)


# ------------------------------------------------------------------ measurement on the signal


def detect_r(sig: np.ndarray, fs: float) -> np.ndarray:
    """QRS locations: peaks of the smoothed sum over leads of |slope| in the QRS band 8-25 Hz (Pan-Tompkins-like)."""
    band = sosfiltfilt(butter(2, [8, 25], btype="bandpass", fs=fs, output="sos"), sig, axis=1)
    v = np.abs(np.diff(band, axis=1)).sum(axis=0)
    k = int(0.02 * fs)
    v = np.convolve(v, np.ones(k) / k, mode="same")
    peaks, _ = find_peaks(v, height=0.35 * v.max(), distance=int(0.25 * fs))
    return peaks


def qrs_bounds(sig: np.ndarray, fs: float, r: int, frac: float = 0.05) -> tuple[int, int]:
    """QRS onset and offset: where the spatial velocity sum |dx/dt| falls below ``frac`` of its QRS peak."""
    v = np.abs(np.diff(sig, axis=1)).sum(axis=0)
    thr = frac * v[r - int(0.1 * fs) : r + int(0.1 * fs)].max()
    a = r
    while v[a - 2 : a + 1].max() > thr:
        a -= 1
    b = r
    while v[b : b + 3].max() > thr:
        b += 1
    return a, b + 1


def tp_baseline(sig: np.ndarray, fs: float, r: int) -> np.ndarray:
    """Per-lead isoelectric level: median of the TP segment before the beat (needs a rate near 60 bpm)."""
    return np.median(sig[:, r - int(0.52 * fs) : r - int(0.39 * fs)], axis=1)


def st_level(ecg: Ecg, beat: int = 3) -> np.ndarray:
    """ST deviation (mV) per lead at J + 60 ms against the TP baseline."""
    s, fs = ecg.signal, ecg.fs
    r = detect_r(s, fs)[beat]
    _, j = qrs_bounds(s, fs, r)
    return s[:, j + int(0.06 * fs)] - tp_baseline(s, fs, r)


# ------------------------------------------------------------------ leads


def test_limb_lead_identities_hold_exactly_with_noise():
    e = _gen({"SR", "RBBB"}, seed=4, noise=NoiseSpec(baseline_wander=0.3, powerline=0.05, muscle=0.03))
    s = e.signal
    assert s.dtype == np.float32 and s.shape == (12, 5000)
    np.testing.assert_allclose(s[III], s[II] - s[I_], atol=1e-6)
    np.testing.assert_allclose(s[AVR], -(s[I_] + s[II]) / 2, atol=1e-6)
    np.testing.assert_allclose(s[AVL], s[I_] - s[II] / 2, atol=1e-6)
    np.testing.assert_allclose(s[AVF], s[II] - s[I_] / 2, atol=1e-6)


def test_record_fields_and_meta_keys():
    e = generate(SynthSpec(frozenset({"SR", "PVC"})), seed=7, fs=250, duration=8.0)
    assert e.signal.shape == (12, 2000) and e.fs == 250 and e.record_id == "synth-7"
    assert e.findings == {"SR", "PVC"} and e.labels == {}
    for key in ("heart_rate", "rhythm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms", "axis_deg", "r_peaks_s", "beats"):
        assert key in e.meta
    assert len(e.meta["r_peaks_s"]) == len(e.meta["beats"]) and "V" in e.meta["beats"]
    # Bazett by hand from the reported QT and rate.
    assert e.meta["qtc_ms"] == pytest.approx(e.meta["qt_ms"] / np.sqrt(60 / e.meta["heart_rate"]))


def test_r_peaks_are_lead_ii_extrema_and_match_detected_qrs():
    for findings in ({"SR"}, {"SR", "LBBB"}, {"AF", "PVC"}, {"STACH", "PAC"}):
        e = generate(SynthSpec(frozenset(findings)), seed=11)
        ii = np.abs(e.signal[II])
        detected = detect_r(e.signal, e.fs)
        r_idx = np.round(np.asarray(e.meta["r_peaks_s"]) * e.fs).astype(int)
        for r in r_idx:
            lo, hi = max(0, r - 20), min(ii.size, r + 21)  # +-40 ms
            assert ii[r] == pytest.approx(ii[lo:hi].max(), abs=0.02), (findings, r)
        # one listed R per detected QRS away from the record's edges, and vice versa
        edge = int(0.3 * e.fs)
        for a, b in ((r_idx, detected), (detected, r_idx)):
            for r in a[(a > edge) & (a < ii.size - edge)]:
                assert np.abs(b - r).min() <= int(0.06 * e.fs), (findings, r)


# ------------------------------------------------------------------ rhythm


@pytest.mark.parametrize(("rhythm", "lo", "hi"), [("SB", 0, 60), ("SR", 60, 100), ("STACH", 100, 250)])
def test_rate_from_detected_r_peaks_fits_rhythm(rhythm, lo, hi):
    for seed in range(3):
        e = generate(SynthSpec(frozenset({rhythm}), noise=NoiseSpec(baseline_wander=0.2, muscle=0.02)), seed=seed)
        rr = np.diff(detect_r(e.signal, e.fs)) / e.fs
        rate = 60 / np.median(rr)
        assert lo < rate < hi, (rhythm, seed, rate)
        assert np.std(rr) / np.mean(rr) < 0.05  # sinus: regular


def _pre_qrs_average(e: Ecg, lead: int) -> np.ndarray:
    """Signal-averaged window 250-70 ms before each detected QRS (a P wave adds up, f waves cancel)."""
    peaks = detect_r(e.signal, e.fs)
    peaks = peaks[peaks > int(0.3 * e.fs)]
    x = e.signal[lead]
    windows = [x[p - int(0.25 * e.fs) : p - int(0.07 * e.fs)] - x[p - int(0.25 * e.fs)] for p in peaks]
    return np.mean(windows, axis=0)


def test_af_is_irregularly_irregular_without_p_waves():
    for seed in range(3):
        af = _gen({"AF"}, seed=seed, heart_rate=70)
        sr = _gen({"SR"}, seed=seed)
        rr = np.diff(detect_r(af.signal, af.fs)) / af.fs
        assert np.std(rr) / np.mean(rr) > 0.1
        assert np.abs(np.diff(rr)).mean() > 0.05  # successive RR differ (not a regular rhythm with one pause)
        p_af = np.ptp(_pre_qrs_average(af, II))
        p_sr = np.ptp(_pre_qrs_average(sr, II))
        assert p_sr > 0.1 and p_af < 0.3 * p_sr, (seed, p_af, p_sr)
        # f waves: the baseline before each QRS moves (fibrillatory activity) but not coherently with the QRS
        peaks = detect_r(af.signal, af.fs)
        peaks = peaks[peaks > int(0.3 * af.fs)]
        per_beat = [np.ptp(af.signal[V1, p - int(0.25 * af.fs) : p - int(0.07 * af.fs)]) for p in peaks]
        assert np.mean(per_beat) > 0.04
        assert np.ptp(_pre_qrs_average(af, V1)) < 0.5 * np.mean(per_beat)


def _pr_ms(e: Ecg, beat: int = 3) -> float:
    """PR interval measured on a noiseless record: P onset (all-lead envelope > 0.02 mV) to QRS onset."""
    s, fs = e.signal, e.fs
    r = detect_r(s, fs)[beat]
    a, _ = qrs_bounds(s, fs, r)
    env = np.abs(s - tp_baseline(s, fs, r)[:, None]).max(axis=0)
    j = a - 1
    while env[j] < 0.02 and j > a - int(0.25 * fs):  # PR segment
        j -= 1
    assert env[j] >= 0.02, "no P wave found"
    while env[j] >= 0.02:  # P wave
        j -= 1
    return (a - j) / fs * 1000


def test_first_degree_av_block_has_pr_over_200ms():
    for seed in range(4):
        assert _pr_ms(_gen({"SR", "IAVB"}, seed=seed)) > 210
        assert 110 < _pr_ms(_gen({"SR"}, seed=seed)) < 200


# ------------------------------------------------------------------ conduction


def _qrs_ms(e: Ecg, beat: int = 3) -> float:
    r = detect_r(e.signal, e.fs)[beat]
    a, b = qrs_bounds(e.signal, e.fs, r)
    return (b - a) / e.fs * 1000


def test_bundle_branch_blocks_have_wide_qrs_and_normal_is_narrow():
    for seed in range(4):
        assert _qrs_ms(_gen({"SR", "RBBB"}, seed=seed)) >= 120
        assert _qrs_ms(_gen({"SR", "LBBB"}, seed=seed)) >= 120
        assert _qrs_ms(_gen({"SR"}, seed=seed)) < 115


def _deflections(x: np.ndarray, min_height: float = 0.05) -> list[float]:
    """Signed extremes of the successive deflections of a QRS (baseline-corrected) above ``min_height``."""
    out: list[float] = []
    for sign in (1, -1):
        peaks, _ = find_peaks(sign * x, height=min_height, prominence=min_height)
        out += [(int(p), float(x[p])) for p in peaks]
    return [v for _, v in sorted(out)]


def test_rbbb_morphology_rsr_prime_in_v1_and_wide_s_in_i_v6():
    for seed in range(3):
        e = _gen({"SR", "RBBB"}, seed=seed)
        r = detect_r(e.signal, e.fs)[3]
        a, b = qrs_bounds(e.signal, e.fs, r)
        base = tp_baseline(e.signal, e.fs, r)
        v1 = _deflections(e.signal[V1, a:b] - base[V1])
        signs = [np.sign(v) for v in v1]
        assert signs[-3:] == [1, -1, 1] and v1[-1] > v1[-3], v1  # r, S, taller R'
        for lead in (I_, V6):
            d = _deflections(e.signal[lead, a:b] - base[lead])
            assert d[-1] < -0.1, (lead, d)  # terminal S
            neg = np.nonzero(e.signal[lead, a:b] - base[lead] < -0.05)[0]
            assert (neg[-1] - neg[0]) / e.fs >= 0.03  # wide (>= 30 ms) S


def test_lbbb_morphology_notched_r_in_v6_and_qs_in_v1():
    for seed in range(3):
        e = _gen({"SR", "LBBB"}, seed=seed)
        r = detect_r(e.signal, e.fs)[3]
        a, b = qrs_bounds(e.signal, e.fs, r)
        base = tp_baseline(e.signal, e.fs, r)
        v1 = e.signal[V1, a:b] - base[V1]
        assert v1.min() < -0.5 and v1.max() < 0.25 * -v1.min()  # QS / rS
        for lead in (I_, V6):
            x = e.signal[lead, a:b] - base[lead]
            peaks, _ = find_peaks(x, height=0.3 * x.max())
            assert len(peaks) == 2, (lead, peaks)  # notched (M-shaped) R
            assert x[: peaks[-1]].min() > -0.1 * x.max()  # no septal q, no S before the end of the R


# ------------------------------------------------------------------ ST-T and voltage


@pytest.mark.parametrize("territory", sorted(MI_TERRITORIES))
def test_mi_has_q_waves_and_st_elevation_in_territory_leads(territory):
    leads = [LEADS.index(name) for name in MI_TERRITORIES[territory]]
    for seed in range(2):
        e = _gen({"SR", "MI"}, seed=seed, mi_territory=territory)
        st = st_level(e)
        assert (st[leads] >= 0.1).all(), st[leads]
        r = detect_r(e.signal, e.fs)[3]
        a, b = qrs_bounds(e.signal, e.fs, r)
        qrs = e.signal[:, a:b] - tp_baseline(e.signal, e.fs, r)[:, None]
        first40 = qrs[:, : int(0.04 * e.fs)]
        for k in leads:  # pathological Q: negative for the first 40 ms, depth >= 25 % of R (or QS)
            assert (first40[k, 2:] < 0).all(), LEADS[k]
            assert -first40[k].min() >= 0.25 * max(qrs[k].max(), 0.0) and -first40[k].min() > 0.1
    normal = _gen({"SR"}, seed=0)
    assert np.abs(st_level(normal)).max() < 0.05


def test_st_depression_of_at_least_01mv():
    for seed in range(3):
        st = st_level(_gen({"SR", "STD"}, seed=seed))
        assert (st[[II, V5, V6]] <= -0.1).all(), st
        assert st[AVR] > 0  # reciprocal elevation in aVR


def _t_wave(e: Ecg, lead: int, beat: int = 3) -> float:
    """The T wave's dominant deflection (signed, mV) 150-420 ms after the R peak."""
    r = detect_r(e.signal, e.fs)[beat]
    x = e.signal[lead, r + int(0.15 * e.fs) : r + int(0.42 * e.fs)] - tp_baseline(e.signal, e.fs, r)[lead]
    return float(x.max() if x.max() > -x.min() else x.min())


def test_t_inversion_where_t_is_normally_upright():
    for seed in range(3):
        normal, inv = _gen({"SR"}, seed=seed), _gen({"SR", "TINV"}, seed=seed)
        for lead in (II, V4, V5, V6):
            assert _t_wave(normal, lead) > 0.1
            assert _t_wave(inv, lead) < -0.1


def _sokolow(e: Ecg) -> float:
    r = detect_r(e.signal, e.fs)[3]
    a, b = qrs_bounds(e.signal, e.fs, r)
    q = e.signal[:, a:b] - tp_baseline(e.signal, e.fs, r)[:, None]
    return float(-q[V1].min() + max(q[V5].max(), q[V6].max()))


def test_lvh_meets_sokolow_lyon_and_normal_does_not():
    for seed in range(4):
        assert _sokolow(_gen({"SR", "LVH"}, seed=seed)) >= 3.5
        assert _sokolow(_gen({"SR"}, seed=seed)) < 3.5


# ------------------------------------------------------------------ ectopy


def test_premature_beats_come_early():
    for findings, wide in (({"SR", "PVC"}, True), ({"SR", "PAC"}, False)):
        e = _gen(findings, seed=5, heart_rate=70)
        peaks = detect_r(e.signal, e.fs)
        rr = np.diff(peaks) / e.fs
        early = np.nonzero(rr < 0.8 * np.median(rr))[0]
        assert len(early) >= 1, findings
        for k in early:
            width = _qrs_ms(e, beat=k + 1)
            assert (width >= 120) if wide else (width < 120), (findings, width)


def test_pvc_has_discordant_t_and_pac_has_abnormal_p():
    e = _gen({"SR", "PVC"}, seed=5, heart_rate=70)
    peaks = detect_r(e.signal, e.fs)
    rr = np.diff(peaks)
    k = int(np.argmin(rr)) + 1
    r = peaks[k]
    a, b = qrs_bounds(e.signal, e.fs, r)
    s = e.signal - e.signal[:, a - 2 : a - 1]
    area_qrs = s[:, a:b].sum(axis=1)
    t_seg = s[:, b + int(0.08 * e.fs) : b + int(0.3 * e.fs)]
    t_peak = np.where(t_seg.max(axis=1) > -t_seg.min(axis=1), t_seg.max(axis=1), t_seg.min(axis=1))
    big = np.abs(area_qrs) > 0.3 * np.abs(area_qrs).max()
    assert (np.sign(t_peak[big]) == -np.sign(area_qrs[big])).all()

    pac = _gen({"SR", "PAC"}, seed=2, heart_rate=60)
    peaks = detect_r(pac.signal, pac.fs)
    k = int(np.argmin(np.diff(peaks))) + 1
    normal_p = _pre_qrs_average(pac, II)  # dominated by sinus beats: upright P in II
    x = pac.signal[II, peaks[k] - int(0.25 * pac.fs) : peaks[k] - int(0.08 * pac.fs)]
    x = x - pac.signal[II, peaks[k] - int(0.26 * pac.fs)]
    assert normal_p.max() > 0.08
    assert x.min() < -0.05  # the ectopic P is inverted in II


# ------------------------------------------------------------------ determinism and noise


def test_same_seed_same_bytes_different_seed_differs():
    spec = sample_spec(np.random.default_rng(3))
    a, b, c = generate(spec, seed=9), generate(spec, seed=9), generate(spec, seed=10)
    assert a.signal.tobytes() == b.signal.tobytes() and a.meta == b.meta
    assert a.signal.tobytes() != c.signal.tobytes()


def _noise_only(noise: NoiseSpec, seed: int = 1) -> np.ndarray:
    clean = _gen({"SR"}, seed=seed)
    noisy = _gen({"SR"}, seed=seed, noise=noise)
    return (noisy.signal.astype(np.float64) - clean.signal)[[I_, II, V1, V5]]


def test_noise_levels_scale_and_have_their_spectra():
    n1 = _noise_only(NoiseSpec(muscle=0.02))
    n2 = _noise_only(NoiseSpec(muscle=0.04))
    np.testing.assert_allclose(n1.std(axis=1), 0.02, rtol=0.05)
    np.testing.assert_allclose(n2, 2 * n1, atol=1e-5)
    freqs = np.fft.rfftfreq(n1.shape[1], 1 / FS)
    power = np.abs(np.fft.rfft(n1, axis=1)) ** 2
    assert power[:, (freqs > 20) & (freqs < 150)].sum() > 0.9 * power.sum()

    for hz in (50.0, 60.0):
        pl = _noise_only(NoiseSpec(powerline=0.05, powerline_hz=hz))
        amp = 2 * np.abs(np.fft.rfft(pl, axis=1)) / pl.shape[1]
        assert (freqs[amp.argmax(axis=1)] == hz).all()
        assert ((amp.max(axis=1) >= 0.7 * 0.05 - 1e-3) & (amp.max(axis=1) <= 0.05 + 1e-3)).all()

    bw = _noise_only(NoiseSpec(baseline_wander=0.3))
    amp = np.abs(np.fft.rfft(bw, axis=1))
    assert ((freqs[amp.argmax(axis=1)] >= 0.1) & (freqs[amp.argmax(axis=1)] <= 0.5)).all()
    half_range = np.ptp(bw, axis=1) / 2
    assert ((half_range > 0.6 * 0.3 * 0.8) & (half_range < 0.3 * 1.01)).all()


def test_noise_does_not_change_the_clean_ecg_stream():
    clean = _gen({"SR", "MI"}, seed=3, mi_territory="inferior")
    noisy = _gen({"SR", "MI"}, seed=3, mi_territory="inferior", noise=NoiseSpec(muscle=0.01))
    assert clean.meta["r_peaks_s"] == noisy.meta["r_peaks_s"]
    assert np.abs(noisy.signal - clean.signal).max() < 0.1


# ------------------------------------------------------------------ specifications


def test_spec_rejects_incompatible_findings_and_inconsistent_knobs():
    for bad in ({"SR", "SB"}, {"RBBB"}, {"AF", "IAVB"}, {"AF", "PAC"}, {"SR", "RBBB", "LBBB"}, {"SR", "XYZ"}):
        assert not is_compatible(bad)
        with pytest.raises(ValueError):
            check_compatible(bad)
        with pytest.raises(ValueError):
            SynthSpec(frozenset(bad))
    with pytest.raises(ValueError, match="heart_rate"):
        SynthSpec(frozenset({"SB"}), heart_rate=75)
    with pytest.raises(ValueError, match="IAVB"):
        SynthSpec(frozenset({"SR"}), pr_ms=240)
    with pytest.raises(ValueError, match="mi_territory"):
        SynthSpec(frozenset({"SR"}), mi_territory="inferior")


def test_sample_spec_draws_compatible_combinations():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(1500)]
    normal = sum(s.findings == {"SR"} for s in specs) / len(specs)
    assert 0.25 < normal < 0.4  # normal_fraction 0.3 plus the abnormal draws that add nothing
    seen = Counter(code for s in specs for code in s.findings)
    assert set(seen) == set(FINDINGS)
    for s in specs:
        assert len(s.findings & set(RHYTHMS)) == 1
        assert not ({"AF", "IAVB"} <= s.findings or {"AF", "PAC"} <= s.findings or {"RBBB", "LBBB"} <= s.findings)
        assert (s.mi_territory is not None) == ("MI" in s.findings)
    assert any(len(s.findings) >= 3 for s in specs)  # multi-label


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
def test_sample_spec_vocabulary_labels_non_empty_and_balanced(vocabulary):
    rng = np.random.default_rng(1)
    n = 1500
    counts: Counter[str] = Counter()
    for _ in range(n):
        labels = labels_from_findings(sample_spec(rng, vocabulary=vocabulary, noise=False).findings, vocabulary)
        assert labels
        counts.update(labels)
    k = len(VOCABULARIES[vocabulary])
    for label in VOCABULARIES[vocabulary]:
        assert counts[label] / n > 0.4 / k, (label, counts)
