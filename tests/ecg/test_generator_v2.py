"""Generator versions: generator 1 is frozen byte for byte; generator 2 moves each quantity of issue 17 into its
published range (``evl_ecg.ecg.realism``, sources in docs/signals.md 2.1) where generator 1 misses it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from evl_ecg.ecg.leads import LEADS, derived_limb_leads
from evl_ecg.ecg.realism import QUANTITIES, measure
from evl_ecg.ecg.synth import SynthSpec, generate, sample_spec
from evl_ecg.ecg.synth_v2 import NoiseSpecV2

#: sha256 over 40 generator-1 records (signal bytes, and meta as sorted JSON) computed before generator 2 existed.
V1_SIGNAL_SHA = "158973924d9e48ad472d2023d10f29e2d7c631bc0622b0f7d2d9ca3f6bff1ae2"
V1_META_SHA = "dcfcb5750b51f08bfe429df9822637d2de66c3b2f9c55401d8415c6a6ff3c340"
N = 200


def test_generator_1_output_for_fixed_seeds_is_unchanged():
    rng = np.random.default_rng(17)
    signals, metas = [], []
    for i in range(40):
        spec = sample_spec(rng, vocabulary=["ptbxl", "code15", "cpsc", None][i % 4])
        e = generate(spec, seed=1000 + i)
        assert "generator" not in e.meta  # a meta without the field is generator 1
        signals.append(hashlib.sha256(e.signal.tobytes()).hexdigest())
        metas.append(hashlib.sha256(json.dumps(e.meta, sort_keys=True, default=str).encode()).hexdigest())
    assert hashlib.sha256("".join(signals).encode()).hexdigest() == V1_SIGNAL_SHA
    assert hashlib.sha256("".join(metas).encode()).hexdigest() == V1_META_SHA


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_generator_2_quantity_in_published_range_and_generator_1_not(name):
    q = QUANTITIES[name][0]
    v2 = measure(name, 2, N)
    assert q.failures(v2) == [], (name, q.target)
    assert q.failures(measure(name, 1, N)) != [], f"{name}: generator 1 already in range"


def _noise(levels: NoiseSpecV2, seed: int) -> np.ndarray:
    spec = SynthSpec(frozenset({"SR"}), heart_rate=60.0, noise=levels)
    noisy = generate(spec, seed=seed, generator=2).signal.astype(np.float64)
    return noisy - generate(SynthSpec(frozenset({"SR"}), heart_rate=60.0), seed=seed, generator=2).signal


@pytest.mark.parametrize("levels", [NoiseSpecV2(motion=0.4), NoiseSpecV2(electrode_pop=1.0)])
def test_motion_bursts_and_electrode_pops_come_from_one_electrode(levels):
    elec = [LEADS.index(k) for k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    for seed in range(6):
        x = _noise(levels, seed)[elec]
        sv = np.linalg.svd(x, compute_uv=False)
        assert sv[0] > 1.0 and sv[1] < 1e-3 * sv[0]  # one electrode: the eight leads are multiples of one signal
        assert np.abs(x).max() > 0.3 * max(levels.motion, levels.electrode_pop)


def test_generator_2_keeps_lead_identities_meta_and_determinism():
    rng = np.random.default_rng(3)
    for seed in range(8):
        spec = sample_spec(rng, vocabulary="ptbxl", generator=2)
        a, b = generate(spec, seed=seed, generator=2), generate(spec, seed=seed, generator=2)
        assert np.array_equal(a.signal, b.signal) and a.meta["generator"] == 2
        i, ii = a.lead("I"), a.lead("II")
        for name, lead in derived_limb_leads(i, ii).items():
            assert np.array_equal(a.lead(name), lead)
        assert len(a.meta["r_peaks_s"]) == len(a.meta["beats"]) >= 5


def test_unknown_generator_is_refused_and_corpus_defaults_to_2(tmp_path):
    from evl_ecg.data.corpus import CorpusSettings, _read_settings

    with pytest.raises(ValueError, match="unknown generator"):
        generate(SynthSpec(frozenset({"SR"})), seed=0, generator=3)
    with pytest.raises(ValueError, match="unknown generator"):
        CorpusSettings(n_train=1, n_bench=0, seed=0, generator=0)
    assert CorpusSettings(n_train=1, n_bench=0, seed=0).to_dict()["generator"] == 2  # the default since the v2 teacher
    assert generate(SynthSpec(frozenset({"SR"})), seed=0).meta.get("generator", 1) == 1  # the signal API keeps 1
    old = tmp_path / "manifest.json"  # a manifest written before the field existed means generator 1
    old.write_text(json.dumps({"format": "evl-ecg synthetic corpus v1", "settings": {"seed": 0}}))
    assert _read_settings(old, manifest=True)["generator"] == 1
