"""Views of an ECG: named, seeded, recorded transformations of one record, each with a severity in [0, 1].

A *view* turns one record into one image the way a real-world copy of it could look: noisier, drawn another way,
photographed crooked. Severity 0 is the identity (the clean reference ``render(ecg, base_spec)``, byte for byte);
severity 1 is the worst case this library calls realistic (each range and its source: ``docs/rendering.md``,
"Views"). Three families, all built on :func:`~evl_ecg.ecg.render.render` (no second renderer):

* ``signal``: the :class:`~evl_ecg.ecg.signal.Ecg` is changed before rendering (noise, wander, mains, flat or
  missing leads, a limb-electrode reversal). Noise, wander and mains are drawn per *electrode* (RA, LA, LL,
  V1..V6) and projected onto the 12 leads, so Einthoven's and Goldberger's identities still hold for the
  disturbed signal, as they do on a real cart.
* ``rendering``: another :class:`~evl_ecg.ecg.render.RenderSpec` (layout, paper speed, gain, grid colour,
  resolution); the grid colour is :attr:`~evl_ecg.ecg.render.Augment.grid_rgb`, which acts while drawing.
* ``image``: :class:`~evl_ecg.ecg.render.Augment` fields applied after drawing (rotation, perspective, blur, JPEG,
  lighting and shadow, creases, low resolution, pixel noise).

Usage::

    image, params = apply_view(ecg, "rotation", 0.5, seed=3)          # base_spec=RenderSpec()
    record = view_record("rotation", 0.5, 3, params, RenderSpec())  # JSON-able, written beside the image
    image2, params2 = image_view(existing_png, "jpeg", 0.8, seed=3)    # a bench of images only: image views

Determinism: every random draw comes from ``numpy.random.default_rng([seed, crc32(name)])``, drawn the same way
at every severity and then scaled by it, so the same ``(ecg, name, severity, seed, base_spec)`` gives the same
bytes and, for one seed, a larger severity is a larger version of the same disturbance. ``params`` is what the
view drew (amplitudes, frequencies, phases, leads, angles, the spec or Augment fields it set): enough, with the
seed, to say what the image shows.

A bench of images without signals can only take image views: :func:`image_view` applies them to an existing image
and refuses signal and rendering views with one ``ValueError`` naming the view and its family.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import signal as sps

from evl_ecg.ecg.leads import LEAD_INDEX, LEADS
from evl_ecg.ecg.render import LAYOUTS, Augment, RenderSpec, render
from evl_ecg.ecg.signal import Ecg

__all__ = [
    "FAMILIES",
    "GRID_COLOURS",
    "VIEWS",
    "View",
    "apply_view",
    "check_severity",
    "get_view",
    "image_view",
    "reverse_arms",
    "transform_signal",
    "view_names",
    "view_record",
]

FAMILIES: tuple[str, ...] = ("signal", "rendering", "image")

#: Grid palettes of ECG-Image-Kit's ``ecg_plot.py`` other than red, as 8-bit (5 mm lines, 1 mm lines), in the order
#: the ``grid_colour`` view walks them: the 5 mm lines' luminance falls (pink ~220, brown ~68, green ~45, blue ~12),
#: so the grid competes more and more with the black ink.
GRID_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "pink": ((255, 203, 221), (254, 237, 248)),
    "brown": ((109, 50, 47), (150, 107, 101)),
    "green": ((0, 77, 0), (0, 204, 77)),
    "blue": ((0, 0, 102), (0, 0, 178)),
}

_ELECTRODES: tuple[str, ...] = ("RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True)
class View:
    """One registered view.

    Attributes:
        name: registry key.
        family: ``"signal"``, ``"rendering"`` or ``"image"``.
        random: whether the seed changes what is drawn (another seed, other bytes); False for views that are a
            function of the severity alone (JPEG, blur, a lead reversal, a layout).
        params: severity (and a ``numpy.random.Generator``) -> what the view draws, JSON-able.
        at_one: documented parameters at severity 1 (the worst realistic case), for the docs and reports.
        source: where the range comes from (details and links in ``docs/rendering.md``).
        doc: one line on what the view does.
    """

    name: str
    family: str
    random: bool
    params: Callable[[float, np.random.Generator], dict[str, Any]]
    at_one: str
    source: str
    doc: str


# ------------------------------------------------------------------------------------------------ helpers


def check_severity(severity: float) -> float:
    """``severity`` as a float in [0, 1], else a one-line ``ValueError`` naming it."""
    try:
        s = float(severity)
    except (TypeError, ValueError):
        raise ValueError(f"severity must be a number in [0, 1], got {severity!r}") from None
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise ValueError(f"severity must be in [0, 1], got {severity!r}")
    return s


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _electrodes_to_leads(e: np.ndarray) -> np.ndarray:
    """9 x n electrode potentials (RA, LA, LL, V1..V6) -> 12 x n leads in :data:`LEADS` order.

    I = LA - RA, II = LL - RA, III = LL - LA, aVR = RA - (LA + LL)/2, aVL = LA - (RA + LL)/2,
    aVF = LL - (RA + LA)/2, Vk = Vk - (RA + LA + LL)/3 (Wilson's central terminal).
    """
    ra, la, ll = e[0], e[1], e[2]
    wct = (ra + la + ll) / 3.0
    limb = [la - ra, ll - ra, ll - la, ra - (la + ll) / 2, la - (ra + ll) / 2, ll - (ra + la) / 2]
    return np.stack(limb + [e[3 + k] - wct for k in range(6)])


def _with_signal(ecg: Ecg, sig: np.ndarray) -> Ecg:
    return dataclasses.replace(ecg, signal=np.ascontiguousarray(sig, dtype=np.float32))


def reverse_arms(sig: np.ndarray) -> np.ndarray:
    """The 12 leads as recorded with the left- and right-arm cables swapped (LA/RA reversal).

    Swapping RA and LA in the lead definitions (Einthoven: I = LA - RA, II = LL - RA, III = LL - LA; Goldberger:
    aVR = RA - (LA + LL)/2, aVL = LA - (RA + LL)/2, aVF = LL - (RA + LA)/2; Wilson's terminal (RA + LA + LL)/3 is
    symmetric in RA and LA) gives exactly::

        I' = -I,  II' = III,  III' = II,  aVR' = aVL,  aVL' = aVR,  aVF' = aVF,  V1'..V6' = V1..V6

    and the reversed record still satisfies II' = I' + III' and aVR' + aVL' + aVF' = 0 when the original does.
    """
    out = np.array(sig, copy=True)
    i = LEAD_INDEX
    out[i["I"]] = -sig[i["I"]]
    out[i["II"]], out[i["III"]] = sig[i["III"]], sig[i["II"]]
    out[i["aVR"]], out[i["aVL"]] = sig[i["aVL"]], sig[i["aVR"]]
    return out


def _ladder(options: list[Any], severity: float) -> Any | None:
    """A categorical view: severity 0 -> None (the base), else option ``ceil(severity * len) - 1``."""
    if severity <= 0 or not options:
        return None
    return options[min(len(options) - 1, math.ceil(severity * len(options)) - 1)]


def _unit_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((len(_ELECTRODES), n))


# ------------------------------------------------------------------------------------------------ signal views
# Each params function draws its random numbers unconditionally (the same draws at every severity) and scales them.

EMG_RMS_MV = 0.25  # severity 1: lead RMS 0.25 mV = SNR 0 dB against a 1 mV QRS (NSTDB's SNR convention)
EMG_BAND_HZ = (20.0, 150.0)
WANDER_PEAK_MV = 1.0  # severity 1: the largest lead drifts +-1 mV (10 mm at 10 mm/mV)
MAINS_PEAK_MV = 0.5  # severity 1: 50 % of a 1 mV QRS (Friesen et al. 1990's power-line test)
FLAT_MAX_LEADS = 3


def _p_emg(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"rms_mv": EMG_RMS_MV * s, "band_hz": list(EMG_BAND_HZ), "noise_seed": int(rng.integers(2**31))}


def _p_wander(s: float, rng: np.random.Generator) -> dict[str, Any]:
    resp = float(rng.uniform(0.15, 0.4))  # breathing, 9-24 per minute
    drift = float(rng.uniform(0.03, 0.1))  # slow electrode/skin drift
    phases = rng.uniform(0, 2 * math.pi, size=(len(_ELECTRODES), 2))
    weights = rng.uniform(0.3, 1.0, size=(len(_ELECTRODES), 2))
    return {
        "peak_mv": WANDER_PEAK_MV * s,
        "freqs_hz": [resp, drift],
        "phases": phases.round(6).tolist(),
        "weights": weights.round(6).tolist(),
    }


def _p_mains(s: float, rng: np.random.Generator) -> dict[str, Any]:
    freq = 50.0 if rng.random() < 0.5 else 60.0
    phases = rng.uniform(0, 2 * math.pi, size=len(_ELECTRODES))
    weights = rng.uniform(0.2, 1.0, size=len(_ELECTRODES))
    return {
        "peak_mv": MAINS_PEAK_MV * s,
        "freq_hz": freq,
        "phases": phases.round(6).tolist(),
        "weights": weights.round(6).tolist(),
    }


def _p_flat(s: float, rng: np.random.Generator) -> dict[str, Any]:
    order = [LEADS[k] for k in rng.permutation(len(LEADS))]
    return {"leads": order[: math.ceil(FLAT_MAX_LEADS * s)]}


def _p_reversal(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"reversal": "LA/RA" if s > 0 else None}


def _emg(ecg: Ecg, p: dict[str, Any]) -> np.ndarray:
    n = ecg.signal.shape[1]
    lo, hi = p["band_hz"][0], min(p["band_hz"][1], 0.45 * ecg.fs)
    sos = sps.butter(4, [lo, hi], btype="bandpass", fs=ecg.fs, output="sos")
    e = sps.sosfiltfilt(sos, _unit_noise(np.random.default_rng(p["noise_seed"]), n), axis=1)
    leads = _electrodes_to_leads(e)
    rms = float(np.sqrt(np.mean(leads**2)))
    return ecg.signal + (leads * (p["rms_mv"] / rms if rms > 0 else 0.0)).astype(np.float32)


def _wander(ecg: Ecg, p: dict[str, Any]) -> np.ndarray:
    t = np.arange(ecg.signal.shape[1]) / ecg.fs
    ph, w = np.asarray(p["phases"]), np.asarray(p["weights"])
    e = sum(w[:, k, None] * np.sin(2 * math.pi * f * t[None, :] + ph[:, k, None]) for k, f in enumerate(p["freqs_hz"]))
    leads = _electrodes_to_leads(e)
    peak = float(np.abs(leads).max())
    return ecg.signal + (leads * (p["peak_mv"] / peak if peak > 0 else 0.0)).astype(np.float32)


def _mains(ecg: Ecg, p: dict[str, Any]) -> np.ndarray:
    if ecg.fs < 2.5 * p["freq_hz"]:
        raise ValueError(f"view 'mains': {ecg.fs:g} Hz sampling cannot show {p['freq_hz']:g} Hz interference")
    t = np.arange(ecg.signal.shape[1]) / ecg.fs
    ph, w = np.asarray(p["phases"]), np.asarray(p["weights"])
    leads = _electrodes_to_leads(w[:, None] * np.sin(2 * math.pi * p["freq_hz"] * t[None, :] + ph[:, None]))
    peak = float(np.abs(leads).max())
    return ecg.signal + (leads * (p["peak_mv"] / peak if peak > 0 else 0.0)).astype(np.float32)


def _flat(ecg: Ecg, p: dict[str, Any]) -> np.ndarray:
    sig = np.array(ecg.signal, copy=True)
    for lead in p["leads"]:
        sig[LEAD_INDEX[lead]] = 0.0
    return sig


def _reversal(ecg: Ecg, p: dict[str, Any]) -> np.ndarray:
    return reverse_arms(ecg.signal) if p["reversal"] else ecg.signal


_SIGNAL_OPS: dict[str, Callable[[Ecg, dict[str, Any]], np.ndarray]] = {
    "emg_noise": _emg,
    "baseline_wander": _wander,
    "mains": _mains,
    "flat_lead": _flat,
    "missing_lead": _flat,
    "lead_reversal": _reversal,
}


# ------------------------------------------------------------------------------------------------ rendering views

_SPEEDS = (25.0, 50.0)
_GAINS = (20.0, 5.0, 10.0)  # walked in this order, skipping the base's gain: 20 (overlap), then 5 (flattened)
RESOLUTION_MIN_SCALE = 0.5  # severity 1: half the base's pixels per mm (linear)


def _spec_changes(name: str, s: float, base: RenderSpec) -> dict[str, Any]:
    """The RenderSpec fields a rendering view changes at severity ``s`` (empty: the base)."""
    if name == "layout":
        layout = _ladder([k for k in LAYOUTS if k != base.layout], s)
        return {} if layout is None else {"layout": layout}
    if name == "paper_speed":
        speed = _ladder([v for v in _SPEEDS if v != base.speed_mm_s], s)
        # A cart at 50 mm/s prints half the seconds on the same paper (10 s would be compressed back to 25 mm/s).
        return {} if speed is None else {"speed_mm_s": speed, "duration_s": base.duration_s * 25.0 / speed}
    if name == "gain":
        gain = _ladder([v for v in _GAINS if v != base.gain_mm_mv], s)
        return {} if gain is None else {"gain_mm_mv": gain}
    if name == "resolution":
        if s <= 0:
            return {}
        scale = RESOLUTION_MIN_SCALE**s
        if base.size is not None:
            return {"size": (max(16, round(base.size[0] * scale)), max(16, round(base.size[1] * scale)))}
        return {"dpi": float(base.dpi) * scale}  # type: ignore[arg-type]
    return {}


def _p_spec(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {}  # resolved against the base spec in apply_view (``{"spec": the fields changed}``)


def _p_grid(s: float, rng: np.random.Generator) -> dict[str, Any]:
    colour = _ladder(list(GRID_COLOURS), s)
    return {"grid_colour": colour}


# ------------------------------------------------------------------------------------------------ image views

ROTATION_MAX_DEG = 10.0
PERSPECTIVE_MAX = 0.08  # corner displacement, fraction of the side
BLUR_MAX = 0.004  # Gaussian radius, fraction of the shorter side (1.5 px at 384 px, 6.8 px at 1700 px)
JPEG_WORST = 10
SHADING_MAX = 0.5
SHADOW_MAX = 0.4
CREASES_MAX = 4
DOWNSCALE_MAX = 3.0
PIXEL_NOISE_MAX = 0.1  # std / 255 (~25 of 255)


def _p_rotation(s: float, rng: np.random.Generator) -> dict[str, Any]:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return {"rotation_deg": sign * ROTATION_MAX_DEG * s}


def _p_perspective(s: float, rng: np.random.Generator) -> dict[str, Any]:
    u = rng.uniform(0.0, 1.0, size=8)
    inward = np.array([1, 1, -1, 1, -1, -1, 1, -1], dtype=float)  # each corner moves toward the centre
    return {"perspective": [float(v) for v in (inward * u * PERSPECTIVE_MAX * s)]}


def _p_blur(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"blur_fraction": BLUR_MAX * s}


def _p_jpeg(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"jpeg_quality": None if s <= 0 else round(95 - (95 - JPEG_WORST) * s)}


def _p_lighting(s: float, rng: np.random.Generator) -> dict[str, Any]:
    angle = float(rng.uniform(0.0, 360.0))
    x, y = (float(v) for v in rng.uniform(0.2, 0.8, size=2))
    shadow_angle = float(rng.uniform(0.0, 360.0))
    return {
        "shading": SHADING_MAX * s,
        "shading_angle_deg": angle,
        "shadow": [x, y, shadow_angle, SHADOW_MAX * s],
    }


def _p_crease(s: float, rng: np.random.Generator) -> dict[str, Any]:
    folds = []
    for _ in range(CREASES_MAX):
        vertical = rng.random() < 0.5
        pos = float(rng.uniform(0.15, 0.85))
        along = float(rng.uniform(0.3, 0.7))
        angle = (90.0 if vertical else 0.0) + float(rng.uniform(-3.0, 3.0))
        x, y = (pos, along) if vertical else (along, pos)
        folds.append([x, y, angle, s])
    return {"creases": folds[: math.ceil(CREASES_MAX * s)]}


def _p_downscale(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"downscale": 1.0 + (DOWNSCALE_MAX - 1.0) * s}


def _p_pixel_noise(s: float, rng: np.random.Generator) -> dict[str, Any]:
    return {"noise": PIXEL_NOISE_MAX * s}


def _augment_of(name: str, p: dict[str, Any], size: tuple[int, int]) -> Augment:
    """The Augment an image view's params stand for (``size``: the image's, for size-relative fields)."""
    if name == "rotation":
        return Augment(rotation_deg=p["rotation_deg"])
    if name == "perspective":
        return Augment(perspective=tuple(p["perspective"]) if any(p["perspective"]) else None)
    if name == "blur":
        return Augment(blur=p["blur_fraction"] * min(size))
    if name == "jpeg":
        return Augment(jpeg_quality=p["jpeg_quality"])
    if name == "lighting":
        shadow = tuple(p["shadow"]) if p["shadow"][3] > 0 else None
        return Augment(shading=p["shading"], shading_angle_deg=p["shading_angle_deg"], shadow=shadow)  # type: ignore[arg-type]
    if name == "crease":
        return Augment(creases=tuple(tuple(c) for c in p["creases"]))  # type: ignore[arg-type]
    if name == "low_resolution":
        return Augment(downscale=p["downscale"])
    if name == "pixel_noise":
        return Augment(noise=p["noise"])
    raise AssertionError(name)


# ------------------------------------------------------------------------------------------------ the registry

_NSTDB = "MIT-BIH Noise Stress Test Database (Moody et al. 1984)"
_EIK = "ECG-Image-Kit (Shivashankara et al. 2024)"
_EID = "ECG-Image-Database (Reyna et al. 2024)"

VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View("emg_noise", "signal", True, _p_emg, "lead RMS 0.25 mV, 20-150 Hz", _NSTDB, "muscle (EMG) noise"),
        View(
            "baseline_wander",
            "signal",
            True,
            _p_wander,
            "peak 1 mV; 0.15-0.4 Hz breathing + 0.03-0.1 Hz drift",
            f"{_NSTDB}; AHA 0.05 Hz high-pass (Kligfield et al. 2007)",
            "baseline wander",
        ),
        View(
            "mains",
            "signal",
            True,
            _p_mains,
            "peak 0.5 mV at 50 or 60 Hz",
            "Friesen et al. 1990 (power-line noise at 50 % of the QRS)",
            "mains interference",
        ),
        View("flat_lead", "signal", True, _p_flat, "3 leads flat", "Batchvarov et al. 2007", "leads printed flat"),
        View(
            "missing_lead",
            "signal",
            True,
            _p_flat,
            "3 leads flat, recorded as missing",
            "Batchvarov et al. 2007",
            "leads absent (flat, and documented in params)",
        ),
        View(
            "lead_reversal",
            "signal",
            False,
            _p_reversal,
            "LA/RA cables swapped (any severity > 0)",
            "Batchvarov et al. 2007; Rosen et al. 2014",
            "limb-electrode reversal",
        ),
        View("layout", "rendering", False, _p_spec, "12x1 (from 3x4)", _EIK, "another lead layout"),
        View(
            "paper_speed",
            "rendering",
            False,
            _p_spec,
            "50 mm/s (5 s on the page)",
            "AHA/ACCF/HRS recommendations (Kligfield et al. 2007)",
            "another paper speed",
        ),
        View(
            "gain",
            "rendering",
            False,
            _p_spec,
            "5 mm/mV (20 mm/mV at severity <= 0.5)",
            "Kligfield et al. 2007",
            "another gain",
        ),
        View("grid_colour", "rendering", False, _p_grid, "blue grid (0, 0, 102)", _EIK, "another grid palette"),
        View(
            "resolution",
            "rendering",
            False,
            _p_spec,
            "half the base's px/mm (512x384 -> 256x192)",
            f"{_EIK} resolution note",
            "a smaller image",
        ),
        View("rotation", "image", True, _p_rotation, "+-10 deg", _EIK, "skewed page"),
        View("perspective", "image", True, _p_perspective, "corners up to 8 % inward", _EID, "off-axis photograph"),
        View("blur", "image", False, _p_blur, "radius 0.4 % of the shorter side", _EID, "defocus"),
        View("jpeg", "image", False, _p_jpeg, "quality 10", f"{_EIK} resolution note", "lossy compression"),
        View(
            "lighting",
            "image",
            True,
            _p_lighting,
            "50 % shading gradient + 40 % shadow",
            _EID,
            "uneven light and a shadow",
        ),
        View("crease", "image", True, _p_crease, "4 folds, full strength", _EIK, "fold lines"),
        View(
            "low_resolution",
            "image",
            False,
            _p_downscale,
            "3x down and up again",
            f"{_EIK} resolution note",
            "low-resolution copy",
        ),
        View("pixel_noise", "image", True, _p_pixel_noise, "std 0.1 (~25/255)", _EIK, "sensor noise"),
    )
}


def view_names(family: str | None = None) -> tuple[str, ...]:
    """Registered view names, all or of one family."""
    return tuple(n for n, v in VIEWS.items() if family is None or v.family == family)


def get_view(name: str) -> View:
    """The registered view ``name``, else a one-line ``ValueError`` naming it and the known ones."""
    try:
        return VIEWS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown view {name!r}; known: {', '.join(VIEWS)}") from None


# ------------------------------------------------------------------------------------------------ applying


def _draw(name: str, severity: float, seed: int) -> tuple[View, float, dict[str, Any]]:
    view = get_view(name)
    s = check_severity(severity)
    return view, s, view.params(s, _rng(name, seed))


def transform_signal(ecg: Ecg, name: str, severity: float, seed: int) -> tuple[Ecg, dict[str, Any]]:
    """A signal view's changed record and its params (``ValueError`` for a view of another family)."""
    view, s, params = _draw(name, severity, seed)
    if view.family != "signal":
        raise ValueError(f"view {name!r} is a {view.family} view, not a signal view")
    out = _with_signal(ecg, _SIGNAL_OPS[name](ecg, params))
    if name == "missing_lead":
        params = {**params, "missing_leads": list(params["leads"])}
    return out, params


def apply_view(
    ecg: Ecg,
    name: str,
    severity: float,
    seed: int = 0,
    base_spec: RenderSpec = RenderSpec(),
    *,
    start: float = 0.0,
) -> tuple[Image.Image, dict[str, Any]]:
    """``ecg`` seen through view ``name`` at ``severity`` (0: ``render(ecg, base_spec)`` exactly) with ``seed``.

    Returns the image and ``params``, what the view drew (JSON-able; :func:`view_record` wraps it with the view,
    severity, seed and base spec for the caller to write beside the image). Same inputs, same bytes.
    """
    view, s, params = _draw(name, severity, seed)
    if view.family == "signal":
        changed, params = transform_signal(ecg, name, s, seed)
        return render(changed, base_spec, start=start), params
    if view.family == "rendering":
        if name == "grid_colour":
            colour = params["grid_colour"]
            augment = None if colour is None else Augment(grid_rgb=GRID_COLOURS[colour])
            if colour is not None:
                params = {**params, "grid_rgb": [list(c) for c in GRID_COLOURS[colour]]}
            return render(ecg, base_spec, augment=augment, seed=seed, start=start), params
        changes = _spec_changes(name, s, base_spec)
        spec = dataclasses.replace(base_spec, **changes)
        return render(ecg, spec, start=start), {"spec": _jsonable(changes)}
    augment = _augment_of(name, params, _render_size(base_spec))
    return render(ecg, base_spec, augment=augment, seed=seed, start=start), {
        **params,
        "augment": _augment_fields(augment),
    }


def image_view(image: Image.Image, name: str, severity: float, seed: int = 0) -> tuple[Image.Image, dict[str, Any]]:
    """An image view applied to an existing image (a bench of images without signals).

    ``image_view(render(ecg, spec), name, s, seed)`` gives the same bytes as ``apply_view(ecg, name, s, seed, spec)``.
    Signal and rendering views need the record, so they are refused with one ``ValueError``.
    """
    view = get_view(name)
    if view.family != "image":
        raise ValueError(
            f"view {name!r} is a {view.family} view: an image without its signal takes image views only "
            f"({', '.join(view_names('image'))})"
        )
    _, s, params = _draw(name, severity, seed)
    img = image if image.mode == "RGB" else image.convert("RGB")
    augment = _augment_of(name, params, img.size)
    return augment.apply(img, seed), {**params, "augment": _augment_fields(augment)}


def _render_size(spec: RenderSpec) -> tuple[int, int]:
    """The pixel size ``render`` gives ``spec``'s page."""
    if spec.size is not None:
        return spec.size
    return tuple(round(mm * float(spec.dpi) / 25.4) for mm in spec.paper)  # type: ignore[return-value]


def _augment_fields(augment: Augment) -> dict[str, Any]:
    """The Augment fields that differ from the identity, JSON-able."""
    default = Augment()
    return {
        f.name: _jsonable(getattr(augment, f.name))
        for f in dataclasses.fields(augment)
        if getattr(augment, f.name) != getattr(default, f.name)
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def view_record(
    name: str, severity: float, seed: int, params: dict[str, Any], base_spec: RenderSpec | None = RenderSpec()
) -> dict[str, Any]:
    """What to write beside a view's image: ``{"view", "family", "severity", "seed", "params", "base_spec"}``,
    JSON-able (``base_spec`` None for :func:`image_view`, which has none)."""
    view = get_view(name)
    return {
        "view": name,
        "family": view.family,
        "severity": check_severity(severity),
        "seed": int(seed),
        "params": _jsonable(params),
        "base_spec": None if base_spec is None else _jsonable(dataclasses.asdict(base_spec)),
    }
