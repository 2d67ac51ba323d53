"""Views of an ECG (``evl_ecg.ecg.views``) and the Augment fields they added to the renderer.

A synthetic record (generator 1) is seen through every view: severity 0 must give the clean render's bytes, the
same seed the same bytes, severity must grow what it scales, and the lead reversal must obey Einthoven exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import PIL
import pytest

from evl_ecg.ecg.leads import LEAD_INDEX, LEADS
from evl_ecg.ecg.render import Augment, RenderSpec, render
from evl_ecg.ecg.signal import Ecg
from evl_ecg.ecg.synth import generate, sample_spec
from evl_ecg.ecg.views import (
    FAMILIES,
    VIEWS,
    apply_view,
    image_view,
    reverse_arms,
    transform_signal,
    view_names,
    view_record,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rendering.md"


def record(i: int) -> Ecg:
    return generate(sample_spec(np.random.default_rng(i)), seed=1000 + i)


@pytest.fixture(scope="module")
def ecg() -> Ecg:
    return record(0)


@pytest.fixture(scope="module")
def clean(ecg: Ecg) -> bytes:
    return render(ecg).tobytes()


def diff(a, b) -> float:
    """Mean absolute pixel difference of two same-size images."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


# --------------------------------------------------------------------------------------- the renderer is unchanged

#: sha256 of ``Image.tobytes()`` of these renders, computed with render.py as it was before the view fields were
#: added to Augment (``git show HEAD:src/evl_ecg/ecg/render.py``, Pillow 13.0.0, numpy 2.4.6).
BEFORE = {
    "default": "6104741f59694e5a6800c77b6555d666cbc9efb7fef257a693cc6034eca3d688",
    "6x2-gain5": "a802374459e635f3b7fb434ef339c2dd5a2083f4566caf4e5db89fae0fe9572e",
    "12x1-50mm": "4357e55d5763b4b069aee210f5fb483919e314960262f74f76a46cf8ba7c8b45",
    "dpi100-nogrid": "1f4a6bcf372d9911ece3f9df3aed13e1d286a34ba474967c35e7bb9675b29ccb",
    "augment-all": "fd9ea5a29ee1e96a6d8a35c85c060623909fd951c76b3bbdfe8fadd5aca005f3",
    "augment-random": "5d7037ab865235804189a5039a75ebc8cfa526d0f9c84d76abfa002c2d02ce04",
    "augment-random8": "7b037ac5f176e49e9bb7cd8c6732072d01f5ccda86045a9f6bbfaccc9b6879ac",
    "augment-dropgrid": "5b1fa6a19c0cb4c14a4d60473dc05ea5c31e03a04fceef13395d27fbe426905c",
}


def before_cases() -> dict[str, tuple[int, RenderSpec, Augment | None, int]]:
    return {
        "default": (0, RenderSpec(), None, 0),
        "6x2-gain5": (1, RenderSpec(layout="6x2", gain_mm_mv=5.0), None, 0),
        "12x1-50mm": (2, RenderSpec(layout="12x1", speed_mm_s=50.0, size=(640, 480)), None, 0),
        "dpi100-nogrid": (0, RenderSpec.at_dpi(100, grid=False), None, 0),
        "augment-all": (1, RenderSpec(), Augment(rotation_deg=3.0, noise=0.04, tint=0.5, blur=0.7, jpeg_quality=60), 7),
        "augment-random": (2, RenderSpec(layout="6x2"), Augment.random(np.random.default_rng(4), 1.0), 11),
        "augment-random8": (0, RenderSpec(), Augment.random(np.random.default_rng(8), 1.0), 5),
        "augment-dropgrid": (0, RenderSpec(), Augment(drop_grid=True, rotation_deg=-2.0), 0),
    }


@pytest.mark.skipif(PIL.__version__ != "13.0.0", reason="hashes recorded with Pillow 13.0.0 (font rasterising)")
def test_existing_renders_are_byte_identical_to_before_the_view_fields():
    got = {}
    for name, (i, spec, aug, seed) in before_cases().items():
        got[name] = hashlib.sha256(render(record(i), spec, augment=aug, seed=seed).tobytes()).hexdigest()
    assert got == BEFORE


def test_augment_defaults_are_the_identity_and_apply_matches_render(ecg: Ecg):
    assert Augment().is_identity
    img = render(ecg)
    assert Augment().apply(img).tobytes() == img.tobytes()
    aug = Augment(rotation_deg=2.0, noise=0.03, creases=((0.5, 0.5, 90.0, 1.0),), downscale=2.0, jpeg_quality=50)
    assert aug.apply(img, seed=4).tobytes() == render(ecg, augment=aug, seed=4).tobytes()
    with pytest.raises(ValueError, match="drawn"):
        Augment(drop_grid=True).apply(img)
    with pytest.raises(ValueError, match="downscale"):
        Augment(downscale=0.5)


# --------------------------------------------------------------------------------------- every view


@pytest.mark.parametrize("name", list(VIEWS))
def test_severity_zero_is_the_clean_render(ecg: Ecg, clean: bytes, name: str):
    img, _ = apply_view(ecg, name, 0.0, seed=5)
    assert img.tobytes() == clean


@pytest.mark.parametrize("name", list(VIEWS))
def test_same_seed_same_bytes_and_a_record_that_is_json(ecg: Ecg, clean: bytes, name: str):
    a, pa = apply_view(ecg, name, 0.7, seed=3)
    b, pb = apply_view(ecg, name, 0.7, seed=3)
    assert a.tobytes() == b.tobytes() and pa == pb
    assert a.tobytes() != clean, f"{name} at severity 0.7 left the image unchanged"
    rec = view_record(name, 0.7, 3, pa, RenderSpec())
    assert json.loads(json.dumps(rec)) == rec
    assert rec["family"] == VIEWS[name].family in FAMILIES


@pytest.mark.parametrize("name", [n for n, v in VIEWS.items() if v.random])
def test_another_seed_draws_another_view(ecg: Ecg, name: str):
    images = {apply_view(ecg, name, 0.7, seed=s)[0].tobytes() for s in range(4)}
    assert len(images) > 1


@pytest.mark.parametrize("name", [n for n, v in VIEWS.items() if not v.random])
def test_views_that_are_not_random_do_not_depend_on_the_seed(ecg: Ecg, name: str):
    assert apply_view(ecg, name, 0.7, seed=1)[0].tobytes() == apply_view(ecg, name, 0.7, seed=2)[0].tobytes()


@pytest.mark.parametrize("name", view_names("image"))
def test_image_view_on_a_rendered_image_equals_apply_view(ecg: Ecg, name: str):
    spec = RenderSpec(layout="6x2", size=(640, 400))
    via_image, p1 = image_view(render(ecg, spec), name, 0.6, seed=9)
    via_record, p2 = apply_view(ecg, name, 0.6, seed=9, base_spec=spec)
    assert via_image.tobytes() == via_record.tobytes() and p1 == p2


# --------------------------------------------------------------------------------------- severity grows the view


def test_signal_noise_grows_with_severity(ecg: Ecg):
    for name, measure in (
        ("emg_noise", lambda d: float(np.sqrt(np.mean(d**2)))),
        ("baseline_wander", lambda d: float(np.abs(d).max())),
        ("mains", lambda d: float(np.abs(d).max())),
    ):
        sizes = [measure(transform_signal(ecg, name, s, seed=2)[0].signal - ecg.signal) for s in (0.2, 0.5, 1.0)]
        assert 0 < sizes[0] < sizes[1] < sizes[2], (name, sizes)
    rms = float(np.sqrt(np.mean((transform_signal(ecg, "emg_noise", 1.0, seed=2)[0].signal - ecg.signal) ** 2)))
    assert rms == pytest.approx(0.25, rel=1e-3)  # the documented lead RMS at severity 1


def test_noise_keeps_the_einthoven_and_goldberger_identities(ecg: Ecg):
    for name in ("emg_noise", "baseline_wander", "mains"):
        d = (transform_signal(ecg, name, 1.0, seed=4)[0].signal - ecg.signal).astype(np.float64)
        i, ii, iii = d[LEAD_INDEX["I"]], d[LEAD_INDEX["II"]], d[LEAD_INDEX["III"]]
        assert np.abs(ii - i - iii).max() < 1e-5, name
        assert np.abs(d[LEAD_INDEX["aVR"]] + d[LEAD_INDEX["aVL"]] + d[LEAD_INDEX["aVF"]]).max() < 1e-5, name


def test_image_parameters_grow_with_severity(ecg: Ecg):
    sev = (0.2, 0.5, 1.0)
    angles = [abs(apply_view(ecg, "rotation", s, seed=1)[1]["rotation_deg"]) for s in sev]
    quality = [apply_view(ecg, "jpeg", s, seed=1)[1]["jpeg_quality"] for s in sev]
    pixels = [math.prod(apply_view(ecg, "resolution", s, seed=1)[0].size) for s in sev]
    folds = [len(apply_view(ecg, "crease", s, seed=1)[1]["creases"]) for s in sev]
    assert angles == sorted(angles) and angles[0] < angles[-1] == 10.0
    assert quality[0] > quality[1] > quality[2] == 10
    assert pixels[0] > pixels[1] > pixels[2] == 256 * 192
    assert folds == sorted(folds) and folds[-1] == 4
    clean = render(ecg)
    for name in ("blur", "low_resolution", "lighting", "perspective", "pixel_noise", "crease"):
        d = [diff(apply_view(ecg, name, s, seed=1)[0], clean) for s in sev]
        assert 0 < d[0] < d[1] < d[2], (name, d)


def test_categorical_rendering_views_walk_their_ladder(ecg: Ecg):
    layouts = [apply_view(ecg, "layout", s)[1]["spec"]["layout"] for s in (0.3, 1.0)]
    assert layouts == ["6x2", "12x1"]
    assert apply_view(ecg, "gain", 0.4)[1]["spec"] == {"gain_mm_mv": 20.0}
    assert apply_view(ecg, "gain", 1.0)[1]["spec"] == {"gain_mm_mv": 5.0}
    assert apply_view(ecg, "paper_speed", 1.0)[1]["spec"] == {"speed_mm_s": 50.0, "duration_s": 5.0}
    assert apply_view(ecg, "grid_colour", 1.0)[1]["grid_colour"] == "blue"
    # the base's own value is skipped: from a 12x1 base, the layouts are 3x4 then 6x2
    assert apply_view(ecg, "layout", 1.0, base_spec=RenderSpec(layout="12x1"))[1]["spec"] == {"layout": "6x2"}


# --------------------------------------------------------------------------------------- the lead views


def test_lead_reversal_obeys_the_einthoven_identities_exactly(ecg: Ecg):
    rev, params = transform_signal(ecg, "lead_reversal", 1.0, seed=0)
    x, y = ecg.signal, rev.signal
    i = LEAD_INDEX
    assert params == {"reversal": "LA/RA"}
    assert np.array_equal(y[i["I"]], -x[i["I"]])
    assert np.array_equal(y[i["II"]], x[i["III"]]) and np.array_equal(y[i["III"]], x[i["II"]])
    assert np.array_equal(y[i["aVR"]], x[i["aVL"]]) and np.array_equal(y[i["aVL"]], x[i["aVR"]])
    assert np.array_equal(y[i["aVF"]], x[i["aVF"]])
    assert np.array_equal(y[6:], x[6:])  # precordial leads: Wilson's terminal is symmetric in RA and LA
    assert np.array_equal(reverse_arms(y), x)  # swapping back restores the record


def test_lead_reversal_is_the_swap_of_the_arm_electrodes():
    rng = np.random.default_rng(0)
    ra, la, ll = rng.standard_normal((3, 50))

    def leads(ra, la, ll):
        return np.stack([la - ra, ll - ra, ll - la, ra - (la + ll) / 2, la - (ra + ll) / 2, ll - (ra + la) / 2])

    swapped = leads(la, ra, ll)
    assert np.array_equal(reverse_arms(np.vstack([leads(ra, la, ll), np.zeros((6, 50))]))[:6], swapped)


def test_flat_and_missing_leads(ecg: Ecg):
    for severity, count in ((0.2, 1), (0.5, 2), (1.0, 3)):
        flat, params = transform_signal(ecg, "flat_lead", severity, seed=7)
        assert len(params["leads"]) == count
        for k, lead in enumerate(LEADS):
            row = flat.signal[k]
            assert np.all(row == 0.0) if lead in params["leads"] else np.array_equal(row, ecg.signal[k]), lead
    missing, params = transform_signal(ecg, "missing_lead", 1.0, seed=7)
    assert params["missing_leads"] == params["leads"] and len(params["leads"]) == 3
    assert all(np.all(missing.signal[LEAD_INDEX[lead]] == 0.0) for lead in params["leads"])
    img, _ = apply_view(ecg, "flat_lead", 1.0, seed=7)
    assert img.tobytes() == render(transform_signal(ecg, "flat_lead", 1.0, seed=7)[0]).tobytes()


# --------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda e: apply_view(e, "sepia", 0.5), "unknown view 'sepia'"),
        (lambda e: apply_view(e, "rotation", 1.5), "severity must be in [0, 1], got 1.5"),
        (lambda e: apply_view(e, "rotation", -0.1), "severity must be in [0, 1], got -0.1"),
        (lambda e: apply_view(e, "rotation", float("nan")), "severity must be in [0, 1], got nan"),
        (lambda e: image_view(render(e), "layout", 0.5), "view 'layout' is a rendering view"),
        (lambda e: image_view(render(e), "emg_noise", 0.5), "view 'emg_noise' is a signal view"),
        (lambda e: image_view(render(e), "nope", 0.5), "unknown view 'nope'"),
    ],
)
def test_errors_are_one_line_and_name_the_thing(ecg: Ecg, call, needle: str):
    with pytest.raises(ValueError) as err:
        call(ecg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_view_is_documented():
    text = DOCS.read_text()
    assert all(f"`{name}`" in text for name in VIEWS), [n for n in VIEWS if f"`{n}`" not in text]
