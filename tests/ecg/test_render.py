"""The renderer against pixel geometry computed by hand from mm and DPI (25 mm/s, 10 mm/mV, 25.4 mm/inch).

Every signal here is synthetic and known: zeros, Gaussian spikes at known times and amplitudes, steps.
Ink is black and the grid red, so "dark" (all channels < 192) means ink and "red" means grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evl_ecg.ecg.leads import LEAD_INDEX, LEADS
from evl_ecg.ecg.render import Augment, Geometry, RenderSpec, geometry, render, to_pixel
from evl_ecg.ecg.signal import Ecg

FS = 500.0
PLAIN = {"grid": False, "labels": False, "calibration": False}


def flat(duration: float = 10.0) -> np.ndarray:
    return np.zeros((12, int(FS * duration)), dtype=np.float32)


def spike(sig: np.ndarray, lead: str, t: float, mv: float, sigma_s: float = 0.008) -> np.ndarray:
    n = np.arange(sig.shape[1]) / FS
    sig[LEAD_INDEX[lead]] += (mv * np.exp(-0.5 * ((n - t) / sigma_s) ** 2)).astype(np.float32)
    return sig


def dark(img) -> np.ndarray:
    """H x W bool: ink pixels (at least ~25 % ink coverage; the red grid's lightest channel is 230)."""
    return np.asarray(img).max(axis=2) < 192


def ink_centroid_y(img, x: int, y_lo: float, y_hi: float) -> float:
    """Darkness-weighted mean row of column ``x`` between rows ``y_lo`` and ``y_hi``."""
    col = 255.0 - np.asarray(img)[:, x, :].astype(float).mean(axis=1)
    rows = np.arange(len(col))
    sel = (rows >= y_lo) & (rows <= y_hi) & (col > 20)
    return float((col[sel] * rows[sel]).sum() / col[sel].sum())


def spike_columns(img) -> list[tuple[float, float]]:
    """(mean x, topmost y) of each spike: ink off the flat traces, whose rows are mostly ink.

    Rows with ink over less than 5 % of the width hold only steep strokes; their ink columns are clustered.
    """
    d = dark(img)
    stroke_rows = d.sum(axis=1) < 0.05 * d.shape[1]
    strokes = d & stroke_rows[:, None]
    cols = np.nonzero(strokes.any(axis=0))[0]
    clusters = np.split(cols, np.nonzero(np.diff(cols) > 2)[0] + 1) if len(cols) else []
    out = []
    for c in clusters:
        rows = np.nonzero(strokes[:, c].any(axis=1))[0]
        if np.ptp(rows) > 8:
            out.append((float(c.mean()), float(rows.min())))
    return out


# ---------------------------------------------------------------------------------------------- size / DPI


def test_letter_paper_at_200_dpi_is_2200_by_1700_px():
    spec = RenderSpec.at_dpi(200)
    geom = geometry(spec)
    assert (geom.width, geom.height) == (2200, 1700)  # 11 in x 8.5 in at 200 DPI
    assert geom.px_per_mm == pytest.approx(200 / 25.4)
    assert render(Ecg(flat(), FS), spec).size == (2200, 1700)


def test_default_size_fits_letter_paper_into_512_by_384():
    geom = geometry(RenderSpec())
    assert (geom.width, geom.height) == (512, 384)
    assert geom.px_per_mm == pytest.approx(min(512 / 279.4, 384 / 215.9))  # height-limited: 1.7786 px/mm
    assert geom.px_per_s == pytest.approx(25 * 384 / 215.9)
    assert geom.px_per_mv == pytest.approx(10 * 384 / 215.9)
    img = render(Ecg(flat(), FS))
    assert img.size == (512, 384) and img.mode == "RGB"


def test_size_and_dpi_together_are_rejected():
    with pytest.raises(ValueError, match="either size or dpi"):
        RenderSpec(dpi=200)
    with pytest.raises(ValueError, match="layout"):
        RenderSpec(layout="4x4")


def test_time_axis_is_compressed_only_when_10_s_do_not_fit_the_paper():
    assert geometry(RenderSpec(layout="12x1")).mm_per_s == 25.0  # 250 mm + pulse fit on 279.4 mm
    narrow = RenderSpec(paper=(200.0, 150.0), size=None, dpi=100)
    geom = geometry(narrow)
    assert geom.mm_per_s < 25.0
    rhythm = geom.panel("II", rhythm=True)
    x_end, _ = to_pixel(geom, "II", 10.0, 0.0, rhythm=True)
    assert 0 <= rhythm.x0 and x_end <= geom.width - 1
    pulse_left = geom.calibrations[0][0]
    assert pulse_left >= 0


# ------------------------------------------------------------------------------------------ calibration


def _pulse_height_px(spec: RenderSpec) -> tuple[float, Image.Image, Geometry]:
    """``(height in px of the first calibration pulse, the page, its geometry)``, from the ink of a flat record."""
    img = render(Ecg(flat(), FS), spec)
    geom = geometry(spec)
    ppm = geom.px_per_mm
    _, x_end, base = geom.calibrations[0]
    rise, fall = geom.pulse_x[0]
    window = (base - 15 * ppm, base + 5 * ppm)
    y_base = ink_centroid_y(img, round(x_end + 3 * ppm), *window)  # the flat trace after it
    y_top = ink_centroid_y(img, round((rise + fall) / 2), *window)  # top of the pulse
    return y_base - y_top, img, geom


@pytest.mark.parametrize("spec", [RenderSpec(size=None, dpi=100), RenderSpec()], ids=["100dpi", "512x384"])
def test_calibration_pulse_is_10_mm_tall_and_5_mm_wide(spec):
    height, img, geom = _pulse_height_px(RenderSpec(**{**spec.__dict__, "grid": False, "labels": False}))
    ppm = geom.px_per_mm
    base = geom.calibrations[0][2]
    rise, fall = geom.pulse_x[0]
    assert height == pytest.approx(10 * ppm, abs=1.0)  # 1 mV x 10 mm/mV
    # Half-way up, the ink is the two vertical edges, 0.2 s x 25 mm/s = 5 mm apart.
    row = dark(img)[round(base - 5 * ppm)]
    xs = np.nonzero(row[: round(geom.calibrations[0][1]) + 1])[0]
    left, right = xs[xs < (rise + fall) / 2], xs[xs > (rise + fall) / 2]
    assert right.mean() - left.mean() == pytest.approx(5 * ppm, abs=1.5)


# ------------------------------------------------------------------------------------- trace placement


@pytest.mark.parametrize(
    "spec", [RenderSpec(size=None, dpi=100, grid=False, labels=False), RenderSpec(grid=False, labels=False)]
)
def test_r_peak_lands_where_to_pixel_says_and_the_ink_is_there(spec):
    # Lead V2 is row 2 (II, aVL, V2, V5), column 3 of the 3x4 page: it shows t in [5.0, 7.5) s.
    sig = spike(flat(), "V2", t=6.0, mv=1.5)
    img = render(Ecg(sig, FS), spec)
    geom = geometry(spec)
    ppm = geom.px_per_mm
    x, y = to_pixel(geom, "V2", 6.0, 1.5)
    x_col_start, y_base = to_pixel(geom, "V2", 5.0, 0.0)
    assert x - x_col_start == pytest.approx(1.0 * 25 * ppm)  # 1 s after the column starts, at 25 mm/s
    assert y_base - y == pytest.approx(1.5 * 10 * ppm)  # 1.5 mV at 10 mm/mV
    # The page's t = 0 for every column is where the calibration block ends (1 mm after the pulse falls).
    x0 = geom.calibrations[0][1]
    assert x == pytest.approx(x0 + 6.0 * 25 * ppm)
    # Topmost ink of the panel is the R peak, at that pixel (within the trace's half width and a pixel).
    panel = geom.panel("V2")
    rows = slice(round(y_base - 30 * ppm), round(y_base + 5 * ppm))  # its row only (rows are 40 mm apart)
    cols = slice(round(panel.x0), round(panel.x_end(geom.px_per_s)))
    ys, xs = np.nonzero(dark(img)[rows, cols])
    ys = ys + rows.start
    top = ys.min()
    assert top == pytest.approx(y, abs=1.5)
    assert xs[ys == top].mean() + cols.start == pytest.approx(x, abs=1.5)
    assert geom.panel("V2").row == 1 and geom.panel("V2").col == 2


def test_st_elevation_of_0_2_mv_lifts_the_trace_by_2_mm_at_the_default_size():
    sig = flat()
    sig[LEAD_INDEX["I"], int(1.0 * FS) : int(2.0 * FS)] = 0.2
    spec = RenderSpec(**PLAIN)
    img = render(Ecg(sig, FS), spec)
    geom = geometry(spec)
    ppm = geom.px_per_mm
    xa, base = to_pixel(geom, "I", 0.5, 0.0)
    xb, _ = to_pixel(geom, "I", 1.5, 0.0)
    window = (base - 6 * ppm, base + 3 * ppm)
    shift = ink_centroid_y(img, round(xa), *window) - ink_centroid_y(img, round(xb), *window)
    assert shift == pytest.approx(0.2 * 10 * ppm, abs=0.5)  # 3.6 px
    assert np.asarray(img)[round(base), round(xa)].max() < 100  # a crisp, dark 1-px line, not a grey smear


def test_to_pixel_refuses_times_the_panel_does_not_show():
    geom = geometry(RenderSpec())
    with pytest.raises(ValueError, match="not drawn"):
        to_pixel(geom, "I", 3.0, 0.0)  # lead I shows only [0, 2.5) s in 3x4
    assert to_pixel(geom, "II", 9.0, 0.0, rhythm=True)[0] > to_pixel(geom, "II", 1.0, 0.0)[0]


# The standard layouts, written out by hand: lead -> (row, column).
EXPECTED_PANELS = {
    "3x4": {
        "I": (0, 0), "aVR": (0, 1), "V1": (0, 2), "V4": (0, 3),
        "II": (1, 0), "aVL": (1, 1), "V2": (1, 2), "V5": (1, 3),
        "III": (2, 0), "aVF": (2, 1), "V3": (2, 2), "V6": (2, 3),
    },
    "6x2": {
        "I": (0, 0), "II": (1, 0), "III": (2, 0), "aVR": (3, 0), "aVL": (4, 0), "aVF": (5, 0),
        "V1": (0, 1), "V2": (1, 1), "V3": (2, 1), "V4": (3, 1), "V5": (4, 1), "V6": (5, 1),
    },
    "12x1": {lead: (i, 0) for i, lead in enumerate(LEADS)},
}  # fmt: skip


@pytest.mark.parametrize("layout", ["3x4", "6x2", "12x1"])
def test_each_lead_is_drawn_in_its_panel_and_only_for_its_window(layout):
    n_cols = {"3x4": 4, "6x2": 2, "12x1": 1}[layout]
    window = 10.0 / n_cols
    spec = RenderSpec(layout=layout, size=None, dpi=60, rhythm_lead=None, **PLAIN)
    geom = geometry(spec)
    ppm = geom.px_per_mm
    x0 = geom.panels[0].x0  # t = 0 of every row
    row_baselines = sorted({p.baseline for p in geom.panels})
    for lead in ("I", "aVL", "V1", "V6"):
        row, col = EXPECTED_PANELS[layout][lead]
        # A 2 mV spike in the middle of *every* column window; only the lead's own window is drawn.
        sig = flat()
        for k in range(n_cols):
            spike(sig, lead, (k + 0.5) * window, 2.0)
        spikes = spike_columns(render(Ecg(sig, FS), spec))
        assert len(spikes) == 1, (layout, lead, spikes)
        x, top = spikes[0]
        assert x == pytest.approx(x0 + (col + 0.5) * window * 25 * ppm, abs=2.0)
        assert top == pytest.approx(row_baselines[row] - 20 * ppm, abs=2.0)


def test_rhythm_strip_shows_its_lead_for_the_full_10_s():
    spec = RenderSpec(rhythm_lead="V5", size=None, dpi=60, **PLAIN)
    geom = geometry(spec)
    ppm = geom.px_per_mm
    sig = flat()
    for t in (1.0, 4.0, 9.0):
        spike(sig, "V5", t, 2.0)
    img = render(Ecg(sig, FS), spec)
    strip = geom.panel("V5", rhythm=True)
    assert strip.baseline == max(p.baseline for p in geom.panels)  # the bottom row
    top = round(strip.baseline - 30 * ppm)  # the strip's band; the row above is 40 mm up
    on_strip = spike_columns(img.crop((0, top, geom.width, geom.height)))
    expected = [strip.x0 + t * 25 * ppm for t in (1.0, 4.0, 9.0)]
    assert [x for x, _ in on_strip] == pytest.approx(expected, abs=2.0)
    assert [y + top for _, y in on_strip] == pytest.approx([strip.baseline - 20 * ppm] * 3, abs=2.0)
    above = spike_columns(img.crop((0, 0, geom.width, top)))
    assert [x for x, _ in above] == pytest.approx([geom.panel("V5").x0 + 1.5 * 25 * ppm], abs=2.0)  # t = 9 s


def test_short_record_draws_only_what_it_has():
    sig = spike(flat(duration=4.0), "V4", 3.0, 2.0)  # V4's window [7.5, 10) s is beyond the record
    spec = RenderSpec(size=None, dpi=60, rhythm_lead=None, **PLAIN)
    geom = geometry(spec, Ecg(sig, FS))
    assert geom.panel("V4").t1 == geom.panel("V4").t0
    assert spike_columns(render(Ecg(sig, FS), spec)) == []
    assert dark(render(Ecg(sig, FS), spec)).any()  # leads I-III and aVR-aVF are drawn


# --------------------------------------------------------------------------------------------------- grid


def _redness_peaks(profile: np.ndarray, threshold: float) -> list[float]:
    """Redness-weighted centres of the runs of ``profile > threshold``."""
    idx = np.nonzero(profile > threshold)[0]
    runs = np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1)
    return [float((profile[r] * r).sum() / profile[r].sum()) for r in runs if len(r)]


def test_grid_lines_are_red_5_mm_apart_with_four_1_mm_lines_between():
    spec = RenderSpec(size=None, dpi=100, labels=False, calibration=False)
    img = np.asarray(render(Ecg(flat(), FS), spec)).astype(float)
    ppm = 100 / 25.4
    y = round(22.5 * ppm - 0.5)  # half-way between the 22 and 23 mm lines: no horizontal line on this row
    rgb = img[y]
    redness = rgb[:, 0] - rgb[:, 1]
    majors = _redness_peaks(redness, 60)
    # Paper fills the image at a DPI: line k lies at k * 5 mm * px/mm (pixel centres, hence -0.5).
    assert majors == pytest.approx([5 * k * ppm - 0.5 for k in range(len(majors))], abs=1.0)
    assert np.diff(majors).mean() == pytest.approx(5 * ppm, abs=0.1)
    assert len(majors) == int(279.4 // 5) + 1
    at_major = rgb[round(majors[3])]
    assert at_major[0] > 200 and at_major[1] < at_major[0] - 60 and at_major[2] < at_major[0] - 60  # red
    minors = [x for x in _redness_peaks(redness, 10) if majors[3] + 1.5 < x < majors[4] - 1.5]
    assert minors == pytest.approx([majors[3] + k * ppm for k in (1, 2, 3, 4)], abs=1.0)


def test_minor_lines_are_dropped_below_3_px_per_mm_and_5_mm_lines_kept():
    spec = RenderSpec(labels=False, calibration=False)  # 1.78 px/mm
    geom = geometry(spec)
    assert not geom.minor_grid
    img = np.asarray(render(Ecg(flat(), FS), spec)).astype(float)
    y = round(geom.origin[1] + 22.5 * geom.px_per_mm)
    redness = img[y, :, 0] - img[y, :, 1]
    lines = _redness_peaks(redness, 10)
    assert np.diff(lines) == pytest.approx(5 * geom.px_per_mm, abs=1.0)  # only the 5 mm lines


# --------------------------------------------------------------------------------- determinism, augment


def _ecg() -> Ecg:
    sig = flat()
    for t in np.arange(0.4, 10, 0.8):
        for lead in LEADS:
            spike(sig, lead, t, 1.0)
    return Ecg(sig, FS)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not():
    aug = Augment(rotation_deg=2.0, noise=0.05, tint=0.3, blur=0.5, jpeg_quality=60)
    a = render(_ecg(), augment=aug, seed=3).tobytes()
    assert a == render(_ecg(), augment=aug, seed=3).tobytes()
    assert a != render(_ecg(), augment=aug, seed=4).tobytes()
    assert render(_ecg()).tobytes() == render(_ecg()).tobytes()
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [Augment.random(rng_a) for _ in range(20)] == [Augment.random(rng_b) for _ in range(20)]


@pytest.mark.parametrize(
    "aug",
    [
        Augment(rotation_deg=3.0),
        Augment(noise=0.05),
        Augment(drop_grid=True),
        Augment(tint=0.5),
        Augment(blur=1.0),
        Augment(jpeg_quality=30),
    ],
    ids=["rotation", "noise", "drop_grid", "tint", "blur", "jpeg"],
)
def test_each_augmentation_changes_pixels_and_keeps_the_size(aug):
    clean = np.asarray(render(_ecg())).astype(int)
    out = np.asarray(render(_ecg(), augment=aug, seed=1)).astype(int)
    assert out.shape == clean.shape
    assert np.abs(out - clean).mean() > 0.2


def test_drop_grid_leaves_no_red_and_tint_yellows_the_paper():
    no_grid = np.asarray(render(_ecg(), augment=Augment(drop_grid=True))).astype(int)
    assert not ((no_grid[..., 0] - no_grid[..., 1]) > 40).any()
    tinted = np.asarray(render(Ecg(flat(), FS), RenderSpec(grid=False), augment=Augment(tint=1.0))).astype(int)
    r, g, b = tinted[5, 5]  # a corner: bare paper
    assert r > 240 and b < g < r and b < 200


def test_random_augment_respects_strength_zero_and_varies_otherwise():
    rng = np.random.default_rng(0)
    augs = [Augment.random(rng, strength=1.0) for _ in range(200)]
    clean = sum(a == Augment() for a in augs)
    assert 70 < clean < 130  # about half are left clean
    assert max(abs(a.rotation_deg) for a in augs) <= 5.0
    assert any(a.jpeg_quality for a in augs) and any(a.noise for a in augs)
    zero = [Augment.random(rng, strength=0.0) for _ in range(50)]
    assert all(a.rotation_deg == 0 and a.noise == 0 and a.blur == 0 for a in zero)


# ------------------------------------------------------------------------------ window of a long record


def test_start_draws_the_chosen_window_of_a_long_record():
    spec = RenderSpec(rhythm_lead="V5", size=None, dpi=60, **PLAIN)
    sig = flat(duration=25.0)
    for t in (3.0, 13.0, 23.0):
        spike(sig, "V5", t, 2.0)
    ecg = Ecg(sig, FS)
    ppm = geometry(spec).px_per_mm

    def strip_spikes(start: float) -> list[float]:
        geom = geometry(spec, ecg, start=start)
        strip = geom.panel("V5", rhythm=True)
        top = round(strip.baseline - 30 * ppm)
        img = render(ecg, spec, start=start)
        return [x for x, _ in spike_columns(img.crop((0, top, geom.width, geom.height)))]

    x0 = geometry(spec).panel("V5", rhythm=True).x0
    assert geometry(spec, ecg).window == (0.0, 10.0)  # default: the first 10 s, said so
    assert strip_spikes(0.0) == pytest.approx([x0 + 3.0 * 25 * ppm], abs=2.0)
    geom = geometry(spec, ecg, start=12.0)
    assert geom.window == (12.0, 22.0)
    assert (geom.panel("I").t0, geom.panel("I").t1) == (12.0, 14.5)  # panel times are record times
    assert to_pixel(geom, "V5", 13.0, 0.0, rhythm=True)[0] == pytest.approx(x0 + 1.0 * 25 * ppm)
    assert strip_spikes(12.0) == pytest.approx([x0 + 1.0 * 25 * ppm], abs=2.0)  # 13 s, one second in
    assert geometry(spec, ecg, start=20.0).window == (20.0, 25.0)  # the last 5 s; the rest of the page blank
    assert strip_spikes(20.0) == pytest.approx([x0 + 3.0 * 25 * ppm], abs=2.0)  # 23 s
    for bad in (25.0, 30.0):
        with pytest.raises(ValueError, match="beyond the end of the record"):
            render(ecg, spec, start=bad)
    with pytest.raises(ValueError, match=">= 0"):
        geometry(spec, ecg, start=-1.0)


# ------------------------------------------------------------------------------ labels over an early QRS


@pytest.mark.parametrize(
    "spec",
    [RenderSpec(layout="12x1", size=None, dpi=150, grid=False), RenderSpec(grid=False)],
    ids=["12x1-150dpi", "3x4-512x384"],
)
def test_lead_labels_stay_on_top_of_an_early_qrs(spec):
    """A 1.2 mV R wave 0.06 s into every panel runs through the label area; the labels stay as on a flat page."""
    geom = geometry(spec)
    early = flat()
    for p in geom.panels:
        spike(early, p.lead, p.t0 + 0.06, 1.2)
    drawn = np.asarray(render(Ecg(early, FS), spec))
    blank = np.asarray(render(Ecg(flat(), FS), spec))
    unlabelled = dark(render(Ecg(early, FS), RenderSpec(**{**spec.__dict__, "labels": False})))
    assert [lab.text for lab in geom.labels] == [p.lead for p in geom.panels]
    crossed = 0
    for lab in geom.labels:
        left, top, right, bottom = lab.box
        box = (slice(top, bottom), slice(left, right))
        assert dark(drawn)[box].sum() >= 4, lab  # the text is there
        assert np.array_equal(drawn[box], blank[box]), lab  # and no trace pixel inside the box
        crossed += bool(unlabelled[box].any())
    assert crossed >= len(geom.labels) - 1  # without labels on top, the QRS does run through the boxes


# ------------------------------------------------------------------------------------------- half gain


def test_half_gain_pulse_is_5_mm_tall_and_printed_in_the_footer():
    spec = RenderSpec(size=None, dpi=100, grid=False, labels=False, gain_mm_mv=5.0)
    height, img, geom = _pulse_height_px(spec)
    ppm = geom.px_per_mm
    assert height == pytest.approx(5 * ppm, abs=1.0)  # 1 mV x 5 mm/mV
    assert [lab.text for lab in geom.labels] == ["25 mm/s  5 mm/mV"]
    left, top, right, bottom = geom.labels[0].box
    assert top > max(b for _, _, b in geom.calibrations) + 5 * ppm  # in the bottom margin
    assert dark(img)[top:bottom, left:right].sum() > 20
    assert geometry(RenderSpec(size=None, dpi=100, grid=False, labels=False)).labels == ()  # standard: no footer


# Precordial R/S amplitudes (mV) of a normal adult with tall voltages: R at 2.00 s, S at 2.04 s.
TALL_QRS = {"V1": (0.3, -1.4), "V2": (0.6, -1.4), "V3": (1.0, -1.0), "V4": (1.4, -0.5), "V5": (1.4, -0.3),
            "V6": (1.2, -0.2), "I": (0.8, -0.2), "II": (1.2, -0.2), "III": (0.5, -0.2), "aVR": (0.2, -1.0),
            "aVL": (0.5, -0.3), "aVF": (0.8, -0.2)}  # fmt: skip


def _lane_ink(spec: RenderSpec) -> dict[str, np.ndarray]:
    """Per lead: the pixels its QRS inks (the page with only that lead's QRS, minus the flat page)."""
    base = dark(render(Ecg(flat(), FS), spec))
    out = {}
    for lead, (r, s) in TALL_QRS.items():
        sig = spike(spike(flat(), lead, 2.0, r), lead, 2.04, s)
        out[lead] = dark(render(Ecg(sig, FS), spec)) & ~base
    return out


def test_half_gain_keeps_the_12x1_lanes_apart():
    full = RenderSpec(layout="12x1", size=None, dpi=150, **PLAIN)
    half = RenderSpec(**{**full.__dict__, "gain_mm_mv": 5.0})
    geom = geometry(half)
    pitch = geom.panel("V2").baseline - geom.panel("V1").baseline
    assert pitch == pytest.approx(15 * geom.px_per_mm, abs=1.0)

    def extent(ink: np.ndarray) -> tuple[int, int]:
        ys = np.nonzero(ink.any(axis=1))[0]
        return int(ys.min()), int(ys.max())

    ink_full, ink_half = _lane_ink(full), _lane_ink(half)
    # At 10 mm/mV V2's S reaches below V3's R peak: the two lanes' ink share rows (the reported overlap).
    assert extent(ink_full["V2"])[1] > extent(ink_full["V3"])[0]
    for k, lead in enumerate(LEADS):
        base = geom.panel(lead).baseline
        top, bottom = extent(ink_half[lead])
        r, s = TALL_QRS[lead]
        assert bottom - top >= 0.9 * (r - s) * 5 * geom.px_per_mm, lead  # the whole complex is drawn, at 5 mm/mV
        assert base - pitch / 2 < top and bottom < base + pitch / 2, lead  # inside its own lane
        if k + 1 < len(LEADS):
            assert bottom < extent(ink_half[LEADS[k + 1]])[0], lead  # above every pixel of the next lane's ink
