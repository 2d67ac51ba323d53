"""Signal -> image: a 12-lead paper ECG like the ECGInstruct / ECGBench images (ECG-Image-Kit style).

The page follows paper-ECG conventions: 25 mm/s, 10 mm/mV, a red grid of 1 mm (light) and 5 mm (dark)
squares, black traces, lead labels, and a 1 mV calibration pulse (10 mm tall, 0.2 s wide) at the start of
each row. Three layouts are drawn (ECG-Image-Kit's names):

* ``"3x4"``: rows ``I aVR V1 V4 | II aVL V2 V5 | III aVF V3 V6``; column ``k`` shows its leads for
  ``t in [2.5k, 2.5k + 2.5)`` s, plus a 10 s rhythm strip (lead II) as the last row.
* ``"6x2"``: rows ``I V1 | II V2 | III V3 | aVR V4 | aVL V5 | aVF V6``, 5 s per column, plus the rhythm strip.
* ``"12x1"``: one 10 s row per lead (no rhythm strip: every row already is one).

Coordinates. The page is laid out in millimetres on ``RenderSpec.paper`` and scaled uniformly
(``px_per_mm``) into the output size, centred; the grid continues to the image edges. Pixel coordinates
returned by :func:`geometry` and :func:`to_pixel` are *pixel-centre* indices: ``(x, y) = (10.0, 20.0)``
is the centre of the pixel in column 10, row 20 of ``numpy.asarray(image)[20, 10]``.

Speed. The static page (grid, calibration pulses) is drawn once per (spec, grid) at the
supersampled size and cached; each render copies it, draws the traces with ``ImageDraw.line`` over
numpy-computed points (min/max decimated when several samples fall in one supersampled pixel column, so
peaks are kept), and box-downsamples (``Image.reduce``): anti-aliasing at 2x below
:data:`SUPERSAMPLE_BELOW_PX_PER_MM` px/mm, direct drawing above it. The labels (cached patches, text on a
paper-coloured box) are pasted last, over the traces.
See ``docs/rendering.md`` and ``benchmarks/render_speed.py``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from evl_ecg.ecg.leads import LEAD_INDEX, LEADS
from evl_ecg.ecg.signal import Ecg

__all__ = [
    "LAYOUTS",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MINOR_GRID_MIN_PX",
    "SUPERSAMPLE_BELOW_PX_PER_MM",
    "Augment",
    "Geometry",
    "Label",
    "Panel",
    "RenderSpec",
    "check_image_size",
    "geometry",
    "render",
    "to_pixel",
]

#: Lead rows of each layout (top to bottom; columns left to right). The rhythm strip is added below.
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "3x4": (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6")),
    "6x2": (("I", "V1"), ("II", "V2"), ("III", "V3"), ("aVR", "V4"), ("aVL", "V5"), ("aVF", "V6")),
    "12x1": tuple((lead,) for lead in LEADS),
}

#: Minor (1 mm) grid lines are drawn only when they are at least this many pixels apart; below it they
#: would tint the whole page pink-grey and hide the trace. The 5 mm lines are always drawn.
MINOR_GRID_MIN_PX: float = 3.0

#: With ``RenderSpec.supersample=None``, pages below this scale are drawn at 2x and downsampled.
SUPERSAMPLE_BELOW_PX_PER_MM: float = 4.0

#: Largest image drawn: at most this many pixels a side, and :data:`MAX_IMAGE_PIXELS` in all (the letter page at
#: 600 DPI, 6600 x 5100 px, fits; ECGInstruct's is 2200 x 1700). A render holds about 20 bytes per pixel at its
#: peak (page, traces, augmentation noise), so the bound keeps one image near 1.3 GB instead of a MemoryError.
MAX_IMAGE_SIDE: int = 32768
MAX_IMAGE_PIXELS: int = 2**26  # 67,108,864


def check_image_size(width: int, height: int, what: str = "size") -> None:
    """Raise ``ValueError`` (one line) unless a ``width x height`` image lies within 16 px and the bounds above."""
    if min(width, height) < 16:
        raise ValueError(f"{what} must be at least 16x16 px, got {width}x{height}")
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what} {width}x{height} px is too large: at most {MAX_IMAGE_SIDE} px a side and {MAX_IMAGE_PIXELS:,} "
            "pixels in all (the letter page at 600 DPI is 6600x5100; ECGInstruct's 2200x1700)"
        )


RGB = tuple[int, int, int]

PAPER_RGB = (255, 255, 255)
MAJOR_RGB = (230, 70, 70)  # 5 mm lines
MINOR_RGB = (250, 200, 200)  # 1 mm lines
INK_RGB = (0, 0, 0)
TINT_RGB = (250, 232, 180)  # aged / yellowed paper at tint = 1

_CAL_LEAD_MM = 1.0  # baseline before and after the calibration pulse
_MIN_MARGIN_MM = 5.0  # least left/right margin; below it the time axis is compressed
_LABEL_MM = 3.5  # label text height
_LABEL_MIN_PX = 9.0  # labels stay legible at tiny sizes
_LABEL_PAD_MM = 0.5  # paper-coloured margin of the box behind each label (at least 1 px)
_STANDARD_SPEED_GAIN = (25.0, 10.0)  # mm/s, mm/mV: anything else is printed in the footer


@dataclass(frozen=True)
class RenderSpec:
    """How to draw the page. Frozen and hashable: it is the key of the background cache.

    Attributes:
        layout: ``"3x4"``, ``"6x2"`` or ``"12x1"`` (see module docstring).
        size: output ``(width, height)`` in px; the paper is fitted into it (uniform scale, centred).
        dpi: with ``size=None``, px/mm = ``dpi / 25.4`` and the image is the paper at that resolution
            (letter landscape at 200 DPI -> 2200 x 1700 px). Giving both ``size`` and ``dpi`` is an error.
        paper: page (width, height) in mm; US letter landscape as in ECG-Image-Kit.
        rhythm_lead: lead of the full-length strip below the grid of panels (None: no strip; never drawn
            in ``"12x1"``).
        speed_mm_s: paper speed; compressed only if the 10 s do not fit the paper width (see
            :attr:`Geometry.mm_per_s`).
        gain_mm_mv: vertical gain; 5.0 is the printers' half gain, for tall QRS complexes (``"12x1"`` rows are
            15 mm apart, so at 10 mm/mV complexes above 0.75 mV cross into the next lane). The calibration
            pulse is 1 mV at this gain (5 mm tall at half gain), and a gain or speed other than 10 mm/mV,
            25 mm/s is printed in the bottom margin (``"25 mm/s  5 mm/mV"``), as ECG printers do.
        grid, labels, calibration: draw the grid, the lead names (on top of the traces, each on a paper-coloured
            box, so that an early QRS does not hide them), the 1 mV pulses.
        line_width: trace width in output px; None -> ``max(1, 0.25 mm)``.
        duration_s: seconds of signal laid out across the page (ECG-Image-Kit: 10 s); which seconds of the
            record is the ``start`` argument of :func:`render` / :func:`geometry` (default 0).
        supersample: the page is drawn at this factor and box-downsampled (anti-aliasing); None -> 2 below
            :data:`SUPERSAMPLE_BELOW_PX_PER_MM` px/mm (small images, where it matters), else 1 (it would cost
            ~10x at 200 DPI; Pillow's lines are then aliased but 2 px wide).
    """

    layout: str = "3x4"
    size: tuple[int, int] | None = (512, 384)
    dpi: float | None = None
    paper: tuple[float, float] = (279.4, 215.9)
    rhythm_lead: str | None = "II"
    speed_mm_s: float = 25.0
    gain_mm_mv: float = 10.0
    grid: bool = True
    labels: bool = True
    calibration: bool = True
    line_width: float | None = None
    duration_s: float = 10.0
    supersample: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.size is not None and self.dpi is not None:
            raise ValueError("give either size or dpi, not both (use RenderSpec(size=None, dpi=...))")
        if self.size is None and self.dpi is None:
            raise ValueError("one of size or dpi is required")
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 16:
                raise ValueError(f"size must be (width, height) of at least 16 px, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.dpi is not None and not (math.isfinite(self.dpi) and self.dpi > 0):
            raise ValueError(f"dpi must be a positive number, got {self.dpi}")
        if min(self.paper) <= 0 or not all(math.isfinite(x) for x in self.paper):
            raise ValueError(f"paper must be positive (mm), got {self.paper}")
        if self.size is not None:
            w, h = self.size
            check_image_size(w, h)
        else:
            w, h = (round(mm * float(self.dpi) / 25.4) for mm in self.paper)  # type: ignore[arg-type]
            check_image_size(w, h, what=f"the page at {self.dpi:g} DPI")
        if self.rhythm_lead is not None and self.rhythm_lead not in LEAD_INDEX:
            raise ValueError(f"unknown rhythm lead {self.rhythm_lead!r}; expected one of {', '.join(LEADS)}")
        if self.speed_mm_s <= 0 or self.gain_mm_mv <= 0 or self.duration_s <= 0:
            raise ValueError("speed_mm_s, gain_mm_mv and duration_s must be positive")
        if self.line_width is not None and self.line_width <= 0:
            raise ValueError(f"line_width must be positive, got {self.line_width}")
        if self.supersample is not None and (
            int(self.supersample) != self.supersample or not 1 <= self.supersample <= 8
        ):
            raise ValueError(f"supersample must be an integer in 1..8, got {self.supersample}")
        if self.supersample is not None and w * h * self.supersample**2 > 4 * MAX_IMAGE_PIXELS:
            raise ValueError(
                f"supersample {self.supersample} draws {w}x{h} px on a {w * self.supersample}x"
                f"{h * self.supersample} canvas, beyond {4 * MAX_IMAGE_PIXELS:,} pixels; use a smaller factor"
            )

    @classmethod
    def at_dpi(cls, dpi: float, **kwargs: object) -> RenderSpec:
        """The page at ``dpi`` (``size=None``), e.g. ``RenderSpec.at_dpi(200)`` -> 2200 x 1700 px."""
        return cls(size=None, dpi=dpi, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Augment:
    """Scan- and photo-like distortions, applied after drawing in this order: tint, creases, rotation, perspective,
    lighting (shading, shadow), blur, low resolution, noise, JPEG (paper, placement, light, optics, sensor, file).

    Every field's default is "off": ``Augment()`` is the identity and leaves a render byte for byte as it was.

    Attributes:
        rotation_deg: counter-clockwise rotation about the centre (the image keeps its size; corners
            are filled with the paper colour).
        noise: standard deviation of additive Gaussian pixel noise, as a fraction of 255.
        drop_grid: draw no grid (ECGInstruct: p ~ 0.02).
        tint: 0..1, blend of the page toward aged yellow paper (ink stays dark; multiplicative).
        blur: Gaussian blur radius in px.
        jpeg_quality: encode/decode through JPEG at this quality (1..95).
        grid_rgb: ``((r, g, b) of the 5 mm lines, (r, g, b) of the 1 mm lines)`` drawn instead of the red grid
            (None: red). Like ``drop_grid`` it acts while drawing, so :meth:`apply` (an existing image) refuses it.
        perspective: ``(dx0, dy0, dx1, dy1, dx2, dy2, dx3, dy3)``: where the page's corners (top-left, top-right,
            bottom-right, bottom-left) move, as fractions of the image width (dx) and height (dy); the page is
            warped so (a photograph taken off-axis); uncovered pixels get the paper colour. None: no warp.
        shading: 0..1, uneven lighting: brightness falls linearly across the image by this fraction, toward
            ``shading_angle_deg`` (0: darker to the right, 90: darker at the top; counter-clockwise).
        shading_angle_deg: see ``shading``.
        shadow: ``(x, y, angle_deg, depth)``: the side of a straight edge through ``(x, y)`` (fractions of width
            and height) that lies toward ``angle_deg`` is darkened by the fraction ``depth`` (0..1), with a soft
            edge 2 % of the image diagonal wide (a hand's or phone's shadow). None: no shadow.
        creases: fold lines, each ``(x, y, angle_deg, strength)``: a line through ``(x, y)`` (fractions) at
            ``angle_deg``, drawn as a dark groove (up to ``0.4 * strength`` darker, a Gaussian of 0.15 % of the
            diagonal, at least 0.7 px) with the facet on one side up to ``0.1 * strength`` darker (a fold catches
            the light unevenly).
        downscale: >= 1: the image is shrunk by this factor (bilinear, anti-aliased) and enlarged back to its size
            (bilinear), as a low-resolution scan or photo shown at a larger size. 1: off.
    """

    rotation_deg: float = 0.0
    noise: float = 0.0
    drop_grid: bool = False
    tint: float = 0.0
    blur: float = 0.0
    jpeg_quality: int | None = None
    grid_rgb: tuple[RGB, RGB] | None = None
    perspective: tuple[float, ...] | None = None
    shading: float = 0.0
    shading_angle_deg: float = 0.0
    shadow: tuple[float, float, float, float] | None = None
    creases: tuple[tuple[float, float, float, float], ...] = ()
    downscale: float = 1.0

    def __post_init__(self) -> None:
        if self.noise < 0 or self.blur < 0:
            raise ValueError("noise and blur must be >= 0")
        if not 0.0 <= self.tint <= 1.0:
            raise ValueError(f"tint must be in [0, 1], got {self.tint}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")
        if self.grid_rgb is not None and (
            len(self.grid_rgb) != 2 or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.grid_rgb)
        ):
            raise ValueError(f"grid_rgb must be two (r, g, b) colours with values 0..255, got {self.grid_rgb}")
        if self.perspective is not None and (
            len(self.perspective) != 8 or not all(math.isfinite(v) and abs(v) < 0.5 for v in self.perspective)
        ):
            raise ValueError(f"perspective must be 8 corner offsets, each in (-0.5, 0.5), got {self.perspective}")
        if not 0.0 <= self.shading <= 1.0:
            raise ValueError(f"shading must be in [0, 1], got {self.shading}")
        if self.shadow is not None and (len(self.shadow) != 4 or not 0.0 <= self.shadow[3] <= 1.0):
            raise ValueError(f"shadow must be (x, y, angle_deg, depth) with depth in [0, 1], got {self.shadow}")
        if any(len(c) != 4 or not 0.0 <= c[3] <= 1.0 for c in self.creases):
            raise ValueError(f"creases must be (x, y, angle_deg, strength) with strength in [0, 1], got {self.creases}")
        if not (math.isfinite(self.downscale) and self.downscale >= 1.0):
            raise ValueError(f"downscale must be a factor >= 1, got {self.downscale}")

    def apply(self, image: Image.Image, seed: int = 0) -> Image.Image:
        """This augmentation applied to an existing RGB ``image`` (a render, a scan), as :func:`render` applies it
        after drawing: ``aug.apply(render(ecg, spec), seed)`` is ``render(ecg, spec, augment=aug, seed=seed)``.

        ``drop_grid`` and ``grid_rgb`` act while the page is drawn, so they are refused here (``ValueError``).
        """
        if self.drop_grid or self.grid_rgb is not None:
            raise ValueError("drop_grid and grid_rgb act while the page is drawn: use render(), not Augment.apply")
        img = image if image.mode == "RGB" else image.convert("RGB")
        return img if self.is_identity else _augment(img, self, np.random.default_rng(seed))

    @property
    def is_identity(self) -> bool:
        return self == Augment()

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> Augment:
        """An ECGInstruct-like random augmentation (about half of the images are distorted at all).

        With probability ``0.5`` the image is left clean. Otherwise each distortion is drawn
        independently: rotation ``U(-5, 5) * strength`` degrees (p 0.5), noise ``U(0, 0.06) * strength``
        (p 0.5), tint ``U(0.1, 0.7) * strength`` (p 0.5), blur ``U(0.3, 1.0) * strength`` px (p 0.3),
        JPEG quality ``U{30..90}`` (p 0.5), and grid removal (p 0.02, independent of the rest).
        Ranges are milder than ECG-Image-Kit's command-line defaults (rotation +-25 deg, noise 25/255)
        because ECGInstruct's augmented images are mostly upright; ``strength`` scales them.
        """
        s = float(strength)
        drop_grid = bool(rng.random() < 0.02)
        if rng.random() < 0.5:
            return cls(drop_grid=drop_grid)
        rot = float(rng.uniform(-5.0, 5.0) * s) if rng.random() < 0.5 else 0.0
        noise = float(rng.uniform(0.0, 0.06) * s) if rng.random() < 0.5 else 0.0
        tint = float(min(1.0, rng.uniform(0.1, 0.7) * s)) if rng.random() < 0.5 else 0.0
        blur = float(rng.uniform(0.3, 1.0) * s) if rng.random() < 0.3 else 0.0
        jpeg = int(rng.integers(30, 91)) if rng.random() < 0.5 else None
        return cls(rotation_deg=rot, noise=noise, drop_grid=drop_grid, tint=tint, blur=blur, jpeg_quality=jpeg)


@dataclass(frozen=True)
class Panel:
    """One drawn trace segment: ``lead`` for ``t in [t0, t1)`` s, drawn from ``x0`` px on ``baseline`` px."""

    lead: str
    t0: float
    t1: float
    x0: float
    baseline: float
    row: int
    col: int
    rhythm: bool = False

    def x_end(self, px_per_s: float) -> float:
        return self.x0 + (self.t1 - self.t0) * px_per_s


@dataclass(frozen=True)
class Label:
    """Text drawn on top of the traces on a paper-coloured box: a lead name or the speed/gain footer.

    ``box`` is ``(left, top, right, bottom)`` in output pixels, right and bottom exclusive
    (``numpy.asarray(img)[top:bottom, left:right]``); nothing of a trace is drawn inside it.
    """

    text: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Geometry:
    """Where everything is drawn (pixel-centre coordinates, before augmentation).

    Attributes:
        width, height: image size in px.
        px_per_mm: page scale.
        mm_per_s: effective paper speed (``speed_mm_s`` unless compressed to fit the page).
        px_per_s, px_per_mv: trace scales.
        origin: pixel-centre coordinates of the page's top-left corner (mm (0, 0)); grid lines lie at
            ``origin + k * px_per_mm``.
        panels: every drawn trace segment, row-major; the rhythm strip last. Baselines are rounded to pixel
            centres (within half a pixel of their 5 mm grid line) so that flat segments stay one row thick.
        calibrations: per row, ``(x_start, x_end, baseline)`` px of the calibration pulse block
            (lead-in, 0.2 s pulse, lead-out); empty when calibration is off.
        pulse_x: per row, ``(x_rise, x_fall)`` px of the pulse's rising and falling edges.
        minor_grid: whether 1 mm lines are drawn (see :data:`MINOR_GRID_MIN_PX`).
        supersample: the factor the page is drawn at (``RenderSpec.supersample`` resolved).
        labels: the lead names (and the footer, at a non-standard gain or speed) with their boxes; empty when
            ``RenderSpec.labels`` is off.
        window: ``(start, end)`` s of the record drawn: ``start`` to ``start + duration_s``, cut at the record's
            end when :func:`geometry` is given the record. Panel times ``t0``/``t1`` are record times.
    """

    width: int
    height: int
    px_per_mm: float
    mm_per_s: float
    px_per_s: float
    px_per_mv: float
    origin: tuple[float, float]
    panels: tuple[Panel, ...]
    calibrations: tuple[tuple[float, float, float], ...]
    pulse_x: tuple[tuple[float, float], ...]
    minor_grid: bool
    supersample: int
    labels: tuple[Label, ...] = ()
    window: tuple[float, float] = (0.0, 10.0)

    def panel(self, lead: str, *, rhythm: bool = False) -> Panel:
        """The panel drawing ``lead`` (the rhythm strip if ``rhythm``)."""
        for p in self.panels:
            if p.lead == lead and p.rhythm == rhythm:
                return p
        kind = "rhythm strip" if rhythm else "panel"
        raise KeyError(f"no {kind} for lead {lead!r} in this layout")

    def mm_to_px(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """Page millimetres (from the top-left corner) to pixel-centre coordinates."""
        return self.origin[0] + x_mm * self.px_per_mm, self.origin[1] + y_mm * self.px_per_mm


@dataclass(frozen=True)
class _Layout:
    """The page in mm, independent of pixel size."""

    mm_per_s: float
    trace_x0: float  # mm, where t = window start is drawn
    cal_x0: float  # mm, start of the calibration block
    baselines: tuple[float, ...]  # mm, one per row
    rows: tuple[tuple[str, ...], ...]
    rhythm: bool


def _layout_mm(spec: RenderSpec) -> _Layout:
    width_mm, height_mm = spec.paper
    rows = LAYOUTS[spec.layout]
    rhythm = spec.rhythm_lead is not None and spec.layout != "12x1"
    n_rows = len(rows) + int(rhythm)
    # Horizontal: calibration block (lead-in, 0.2 s, lead-out) then the duration across the columns.
    mm_per_s = spec.speed_mm_s
    cal_mm = (2 * _CAL_LEAD_MM + 0.2 * mm_per_s) if spec.calibration else 0.0
    if cal_mm + spec.duration_s * mm_per_s > width_mm - 2 * _MIN_MARGIN_MM:
        # Compress the time axis (and the pulse width with it) so that the page holds the duration.
        mm_per_s = (width_mm - 2 * _MIN_MARGIN_MM - (2 * _CAL_LEAD_MM if spec.calibration else 0.0)) / (
            spec.duration_s + (0.2 if spec.calibration else 0.0)
        )
        cal_mm = (2 * _CAL_LEAD_MM + 0.2 * mm_per_s) if spec.calibration else 0.0
    span = cal_mm + spec.duration_s * mm_per_s
    trace_x0 = (width_mm - span) / 2 + cal_mm
    snapped = 5.0 * math.floor(trace_x0 / 5.0)  # put t = 0 on a 5 mm line when the margins allow it
    if snapped - cal_mm >= _MIN_MARGIN_MM / 2:
        trace_x0 = snapped
    # Vertical: rows on 5 mm lines, pitch a multiple of 5 mm, the block centred.
    pitch = max(5.0, 5.0 * math.floor(height_mm / (n_rows + 1) / 5.0))
    first = 5.0 * round(((height_mm - n_rows * pitch) / 2 + pitch / 2) / 5.0)
    baselines = tuple(first + k * pitch for k in range(n_rows))
    return _Layout(mm_per_s, trace_x0, trace_x0 - cal_mm, baselines, rows, rhythm)


def _scale(spec: RenderSpec) -> tuple[int, int, float, tuple[float, float]]:
    """Image size, px/mm and the page origin (pixel-centre coordinates of mm (0, 0))."""
    width_mm, height_mm = spec.paper
    if spec.size is None:
        ppm = float(spec.dpi) / 25.4  # type: ignore[arg-type]
        w, h = round(width_mm * ppm), round(height_mm * ppm)
    else:
        w, h = spec.size
        ppm = min(w / width_mm, h / height_mm)
    ox = (w - width_mm * ppm) / 2 - 0.5
    oy = (h - height_mm * ppm) / 2 - 0.5
    return w, h, ppm, (ox, oy)


@lru_cache(maxsize=64)
def _page_geometry(spec: RenderSpec) -> Geometry:
    lay = _layout_mm(spec)
    w, h, ppm, (ox, oy) = _scale(spec)
    n_cols = len(lay.rows[0])
    window = spec.duration_s / n_cols
    panels: list[Panel] = []
    for r, leads in enumerate(lay.rows):
        base = float(round(oy + lay.baselines[r] * ppm))  # on a pixel centre: flat segments stay 1 row
        for c, lead in enumerate(leads):
            x0 = ox + (lay.trace_x0 + c * window * lay.mm_per_s) * ppm
            panels.append(Panel(lead, c * window, (c + 1) * window, x0, base, r, c))
    if lay.rhythm:
        r = len(lay.rows)
        base = float(round(oy + lay.baselines[r] * ppm))  # on a pixel centre: flat segments stay 1 row
        panels.append(
            Panel(spec.rhythm_lead, 0.0, spec.duration_s, ox + lay.trace_x0 * ppm, base, r, 0, rhythm=True)  # type: ignore[arg-type]
        )
    cals: list[tuple[float, float, float]] = []
    pulses: list[tuple[float, float]] = []
    if spec.calibration:
        # Corners on pixel centres, so that the pulse is crisp: its height is round(10 mm) px (+-0.5 px).
        for y_mm in lay.baselines:
            x_start = float(round(ox + lay.cal_x0 * ppm))
            rise = float(round(ox + (lay.cal_x0 + _CAL_LEAD_MM) * ppm))
            fall = float(round(ox + (lay.cal_x0 + _CAL_LEAD_MM + 0.2 * lay.mm_per_s) * ppm))
            cals.append((x_start, ox + lay.trace_x0 * ppm, float(round(oy + y_mm * ppm))))
            pulses.append((rise, fall))
    ss = spec.supersample or (2 if ppm < SUPERSAMPLE_BELOW_PX_PER_MM else 1)
    labels: list[Label] = []
    if spec.labels:
        labels += [_label(p.lead, p.x0 + 1.0 * ppm, p.baseline - 3.0 * ppm, ppm, ss)[0] for p in panels]
    if spec.calibration and (lay.mm_per_s, spec.gain_mm_mv) != _STANDARD_SPEED_GAIN:
        x, y = ox + lay.cal_x0 * ppm, oy + (spec.paper[1] - 4.0) * ppm
        labels.append(_label(_footer_text(lay.mm_per_s, spec.gain_mm_mv), x, y, ppm, ss)[0])
    return Geometry(
        width=w,
        height=h,
        px_per_mm=ppm,
        mm_per_s=lay.mm_per_s,
        px_per_s=lay.mm_per_s * ppm,
        px_per_mv=spec.gain_mm_mv * ppm,
        origin=(ox, oy),
        panels=tuple(panels),
        calibrations=tuple(cals),
        pulse_x=tuple(pulses),
        minor_grid=ppm >= MINOR_GRID_MIN_PX,
        supersample=ss,
        labels=tuple(labels),
        window=(0.0, spec.duration_s),
    )


def _footer_text(mm_per_s: float, gain_mm_mv: float) -> str:
    return f"{mm_per_s:.3g} mm/s  {gain_mm_mv:.3g} mm/mV"


def _label(text: str, x: float, y: float, ppm: float, ss: int) -> tuple[Label, tuple[float, float]]:
    """The label ``text`` whose baseline starts at pixel centre ``(x, y)``: its box (output px, aligned so that
    the box covers whole output pixels) and the text anchor in supersampled coordinates relative to the box."""
    font = _font(_label_px(ppm, ss))
    ax, ay = _to_ss(x, ss), _to_ss(y, ss)
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    pad = max(1.0, _LABEL_PAD_MM * ppm) * ss
    box = (
        math.floor((ax + left - pad) / ss),
        math.floor((ay + top - pad) / ss),
        math.ceil((ax + right + pad) / ss),
        math.ceil((ay + bottom + pad) / ss),
    )
    return Label(text, box), (ax - box[0] * ss, ay - box[1] * ss)


def _label_px(ppm: float, ss: int) -> int:
    return round(max(_LABEL_MIN_PX, _LABEL_MM * ppm) * ss)


def _check_start(start: float, ecg: Ecg | None) -> float:
    start = float(start)
    if not math.isfinite(start) or start < 0:
        raise ValueError(f"start must be a number of seconds >= 0, got {start}")
    if ecg is not None and start >= ecg.duration:
        raise ValueError(f"start {start:g} s is beyond the end of the record ({ecg.duration:g} s)")
    return start


def geometry(spec: RenderSpec, ecg: Ecg | None = None, *, start: float = 0.0) -> Geometry:
    """Pixel geometry of ``spec``'s page: px/mm, image size and each panel's lead, window, x0 and baseline.

    The page shows the record from ``start`` s (default 0) for ``spec.duration_s``: panel times are record times
    (in ``"3x4"`` at ``start=10``, lead I shows ``[10, 12.5)``) and :attr:`Geometry.window` is ``(start, end)``.
    With ``ecg``, each panel's ``t1`` is clipped to the record's duration (a shorter record draws less; a longer
    one draws only the window) and a ``start`` at or beyond the record's end is a ``ValueError``.
    """
    start = _check_start(start, ecg)
    geom = _page_geometry(spec)
    end = start + spec.duration_s if ecg is None else min(start + spec.duration_s, ecg.duration)
    if start == 0.0 and end == spec.duration_s:
        return geom
    panels = tuple(
        Panel(p.lead, start + p.t0, max(start + p.t0, min(start + p.t1, end)), p.x0, p.baseline, p.row, p.col, p.rhythm)
        for p in geom.panels
    )
    return replace(geom, panels=panels, window=(start, end))


def to_pixel(geom: Geometry, lead: str, t: float, mv: float, *, rhythm: bool = False) -> tuple[float, float]:
    """Pixel-centre ``(x, y)`` where the sample of ``lead`` at time ``t`` (s) with value ``mv`` is drawn.

    ``x = x0 + (t - t0) * px_per_s``, ``y = baseline - mv * px_per_mv``. Raises ``ValueError`` when ``t``
    is outside the panel's window (in ``"3x4"``, lead I shows only ``[0, 2.5)`` s; use ``rhythm=True``
    for the strip).
    """
    p = geom.panel(lead, rhythm=rhythm)
    if not p.t0 - 1e-9 <= t <= p.t1 + 1e-9:
        raise ValueError(f"t={t} s is not drawn for lead {lead} (its panel shows [{p.t0}, {p.t1}) s)")
    return p.x0 + (t - p.t0) * geom.px_per_s, p.baseline - mv * geom.px_per_mv


# ----------------------------------------------------------------------------------------------- drawing


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _trace_width(spec: RenderSpec, ppm: float) -> float:
    return spec.line_width if spec.line_width is not None else max(1.0, 0.25 * ppm)


def _ss_width(width_px: float, ss: int) -> int:
    return max(1, round(width_px * ss))


def _to_ss(v: np.ndarray | float, ss: int, width: int = 1) -> np.ndarray | float:
    """Pixel-centre coordinate -> coordinate handed to Pillow for a line ``width`` px wide at supersampling ``ss``.

    Output pixel ``i`` covers supersampled pixels ``i*ss .. i*ss+ss-1`` (centre ``i*ss+(ss-1)/2``). Pillow
    centres a straight line of odd width on ``floor(c)`` and of even width on ``floor(c) + 0.5`` (measured), so
    odd widths get ``+ 0.5`` (rounding) and even widths none; a baseline on a pixel centre then stays in one
    output row instead of smearing over two.
    """
    return (v + 0.5) * ss - 0.5 + (0.0 if width % 2 == 0 else 0.5)


def _draw_grid(
    draw: ImageDraw.ImageDraw, geom: Geometry, ss: int, colours: tuple[RGB, RGB] = (MAJOR_RGB, MINOR_RGB)
) -> None:
    ppm = geom.px_per_mm
    w_ss, h_ss = geom.width * ss, geom.height * ss
    ox, oy = geom.origin
    minor_w = _ss_width(max(0.1 * ppm, 0.5), ss)
    major_w = _ss_width(max(0.2 * ppm, 0.5), ss)
    k_x = range(math.floor((-0.5 - ox) / ppm), math.ceil((geom.width - 0.5 - ox) / ppm) + 1)
    k_y = range(math.floor((-0.5 - oy) / ppm), math.ceil((geom.height - 0.5 - oy) / ppm) + 1)
    for major in (False, True):
        if not major and not geom.minor_grid:
            continue
        colour, width = (colours[0], major_w) if major else (colours[1], minor_w)
        for k in k_x:
            if (k % 5 == 0) == major:
                x = _to_ss(ox + k * ppm, ss, width)
                draw.line([(x, 0), (x, h_ss)], fill=colour, width=width)
        for k in k_y:
            if (k % 5 == 0) == major:
                y = _to_ss(oy + k * ppm, ss, width)
                draw.line([(0, y), (w_ss, y)], fill=colour, width=width)


@lru_cache(maxsize=16)  # 11 MB each at 200 DPI
def _background(spec: RenderSpec, grid: bool, colours: tuple[RGB, RGB] = (MAJOR_RGB, MINOR_RGB)) -> Image.Image:
    """The static page (grid, calibration pulses) at the supersampled size; labels go on top of the traces.

    ``colours``: the (5 mm, 1 mm) grid line colours (:attr:`Augment.grid_rgb`; default the red grid)."""
    geom = _page_geometry(spec)
    ss = geom.supersample
    img = Image.new("RGB", (geom.width * ss, geom.height * ss), PAPER_RGB)
    draw = ImageDraw.Draw(img)
    if grid:
        _draw_grid(draw, geom, ss, colours)
    ppm = geom.px_per_mm
    if spec.calibration:
        width = _ss_width(_trace_width(spec, ppm), ss)
        top = round(geom.px_per_mv)  # 1 mV
        for (x_start, x_end, base), (rise, fall) in zip(geom.calibrations, geom.pulse_x, strict=True):
            pts = [(x_start, base), (rise, base), (rise, base - top), (fall, base - top), (fall, base), (x_end, base)]
            pts = [(_to_ss(x, ss, width), _to_ss(y, ss, width)) for x, y in pts]
            draw.line(pts, fill=INK_RGB, width=width, joint="curve")
    return img


@lru_cache(maxsize=16)
def _label_patches(spec: RenderSpec) -> tuple[tuple[tuple[int, int], Image.Image], ...]:
    """Each label of ``spec``'s page as an output-size patch (text on paper colour) and where to paste it.

    The text is drawn at the supersampled scale and box-reduced, as the rest of the page, so labels look as they
    would drawn on the page; pasted after the traces, they stay legible over an early QRS.
    """
    geom = _page_geometry(spec)
    ss, ppm = geom.supersample, geom.px_per_mm
    font = _font(_label_px(ppm, ss))
    texts = [(p.lead, p.x0 + 1.0 * ppm, p.baseline - 3.0 * ppm) for p in geom.panels] if spec.labels else []
    if spec.calibration and (geom.mm_per_s, spec.gain_mm_mv) != _STANDARD_SPEED_GAIN:
        x, y = geom.mm_to_px(_layout_mm(spec).cal_x0, spec.paper[1] - 4.0)
        texts.append((_footer_text(geom.mm_per_s, spec.gain_mm_mv), x, y))
    patches = []
    for text, x, y in texts:
        label, anchor = _label(text, x, y, ppm, ss)
        left, top, right, bottom = label.box
        patch = Image.new("RGB", ((right - left) * ss, (bottom - top) * ss), PAPER_RGB)
        ImageDraw.Draw(patch).text(anchor, text, fill=INK_RGB, font=font, anchor="ls")
        patches.append(((left, top), patch.reduce(ss) if ss > 1 else patch))
    return tuple(patches)


@lru_cache(maxsize=16)
def _background_1x(
    spec: RenderSpec, grid: bool, colours: tuple[RGB, RGB] = (MAJOR_RGB, MINOR_RGB)
) -> tuple[Image.Image, Image.Image]:
    """The static page box-downsampled to the output size, and a solid ink image of that size."""
    bg = _background(spec, grid, colours)
    ss = _page_geometry(spec).supersample
    small = bg.reduce(ss) if ss > 1 else bg
    return small, Image.new("RGB", small.size, INK_RGB)


def _minmax_decimate(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and max of each run of ``k`` samples, in time order (peaks survive exactly)."""
    nb = len(y) // k
    if nb < 2:
        return x, y
    yb = y[: nb * k].reshape(nb, k)
    imin = yb.argmin(axis=1)
    imax = yb.argmax(axis=1)
    first = np.minimum(imin, imax)
    second = np.maximum(imin, imax)
    base = np.arange(nb) * k
    idx = np.stack([base + first, base + second], axis=1).ravel()
    idx = np.concatenate([idx, np.arange(nb * k, len(y))])
    return x[idx], y[idx]


def _panel_points(sig: np.ndarray, fs: float, p: Panel, geom: Geometry, ss: int, width: int) -> np.ndarray:
    """``N x 2`` Pillow coordinates (supersampled) of one panel's samples in ``[t0, t1)``."""
    i0 = math.ceil(p.t0 * fs - 1e-9)
    i1 = min(len(sig), math.ceil(p.t1 * fs - 1e-9))
    if i1 - i0 < 2:
        return np.empty((0, 2))
    n = np.arange(i0, i1)
    x = p.x0 + (n / fs - p.t0) * geom.px_per_s
    y = p.baseline - sig[i0:i1].astype(np.float64) * geom.px_per_mv
    k = int(fs / (geom.px_per_s * ss))
    if k >= 3:
        x, y = _minmax_decimate(x, y, k)
    return np.stack([_to_ss(x, ss, width), _to_ss(y, ss, width)], axis=1)


def _draw_traces(img: Image.Image, ecg: Ecg, spec: RenderSpec, geom: Geometry, ss: int) -> None:
    """Draw every panel's trace in ink onto ``img`` (the page at supersampling ``ss``), in place.

    On an ``L`` image (a coverage mask) the ink is 255.
    """
    draw = ImageDraw.Draw(img)
    ink = 255 if img.mode == "L" else INK_RGB
    width = _ss_width(_trace_width(spec, geom.px_per_mm), ss)
    for p in geom.panels:
        pts = _panel_points(ecg.signal[LEAD_INDEX[p.lead]], ecg.fs, p, geom, ss, width)
        if len(pts) >= 2:
            draw.line(pts.ravel().tolist(), fill=ink, width=width)


def _tint_factors(tint: float) -> tuple[float, float, float]:
    return tuple(1.0 - tint * (1.0 - c / 255.0) for c in TINT_RGB)  # type: ignore[return-value]


def _line_distance(width: int, height: int, x: float, y: float, angle_deg: float) -> np.ndarray:
    """H x W float32: signed distance (px) of each pixel centre from the line through ``(x * width, y * height)``
    at ``angle_deg`` (counter-clockwise, image y pointing down); positive on the side the normal
    ``angle_deg + 90`` points to."""
    a = math.radians(angle_deg + 90.0)
    nx, ny = math.cos(a), -math.sin(a)  # image y grows downward
    xs = np.arange(width, dtype=np.float32) - np.float32(x * width)
    ys = np.arange(height, dtype=np.float32) - np.float32(y * height)
    return ys[:, None] * np.float32(ny) + xs[None, :] * np.float32(nx)


def _scale_brightness(img: Image.Image, factor: np.ndarray) -> Image.Image:
    """Multiply every channel by the H x W ``factor`` (ink stays dark, paper dims), rounded and clipped."""
    arr = np.asarray(img).astype(np.float32) * factor[..., None]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _perspective_coeffs(width: int, height: int, offsets: tuple[float, ...]) -> list[float]:
    """Pillow's 8 PERSPECTIVE coefficients mapping output pixels to input pixels when the image corners move by
    ``offsets`` (fractions of width and height; top-left, top-right, bottom-right, bottom-left)."""
    src = [(0.0, 0.0), (float(width), 0.0), (float(width), float(height)), (0.0, float(height))]
    dst = [(sx + offsets[2 * i] * width, sy + offsets[2 * i + 1] * height) for i, (sx, sy) in enumerate(src)]
    rows, rhs = [], []
    for (xo, yo), (xi, yi) in zip(dst, src, strict=True):
        rows.append([xo, yo, 1.0, 0.0, 0.0, 0.0, -xi * xo, -xi * yo])
        rows.append([0.0, 0.0, 0.0, xo, yo, 1.0, -yi * xo, -yi * yo])
        rhs += [xi, yi]
    return np.linalg.solve(np.array(rows), np.array(rhs)).tolist()


def _augment(img: Image.Image, aug: Augment, rng: np.random.Generator) -> Image.Image:
    """Apply ``aug`` in the order tint, creases, rotation, perspective, shading, shadow, blur, downscale, noise, JPEG
    (paper, placement, light, optics, sensor, file); a field at its default is skipped."""
    if aug.tint > 0:
        factors = _tint_factors(aug.tint)
        img = img.point([min(255, round(v * f)) for f in factors for v in range(256)])
    if aug.creases:
        w, h = img.size
        groove = max(0.7, 0.0015 * math.hypot(w, h))
        factor = np.ones((h, w), dtype=np.float32)
        for x, y, angle, strength in aug.creases:
            d = _line_distance(w, h, x, y, angle)
            factor *= 1.0 - 0.4 * strength * np.exp(-0.5 * (d / groove) ** 2)
            factor *= 1.0 - 0.1 * strength * np.clip(d / (4.0 * groove) + 0.5, 0.0, 1.0)
        img = _scale_brightness(img, factor)
    fill = tuple(round(c * f) for c, f in zip(PAPER_RGB, _tint_factors(aug.tint), strict=True))
    if aug.rotation_deg:
        img = img.rotate(aug.rotation_deg, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if aug.perspective is not None and any(aug.perspective):
        coeffs = _perspective_coeffs(img.width, img.height, aug.perspective)
        img = img.transform(img.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill)
    if aug.shading > 0 or (aug.shadow is not None and aug.shadow[3] > 0):
        w, h = img.size
        factor = np.ones((h, w), dtype=np.float32)
        if aug.shading > 0:
            # Distance along the direction angle_deg from the line through the centre, scaled to [0, 1] over the image.
            d = _line_distance(w, h, 0.5, 0.5, aug.shading_angle_deg - 90.0)
            lo, hi = float(d.min()), float(d.max())
            factor *= 1.0 - aug.shading * (d - lo) / max(hi - lo, 1e-6)
        if aug.shadow is not None and aug.shadow[3] > 0:
            x, y, angle, depth = aug.shadow
            d = _line_distance(w, h, x, y, angle - 90.0)
            soft = 0.02 * math.hypot(w, h)
            factor *= 1.0 - depth * np.clip(d / soft + 0.5, 0.0, 1.0)
        img = _scale_brightness(img, factor)
    if aug.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(aug.blur))
    if aug.downscale > 1.0:
        small = (max(1, round(img.width / aug.downscale)), max(1, round(img.height / aug.downscale)))
        img = img.resize(small, Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.BILINEAR)
    if aug.noise > 0:
        # One value per pixel added to all channels (imgaug's AdditiveGaussianNoise default, as ECG-Image-Kit).
        noise = rng.standard_normal((img.height, img.width), dtype=np.float32)
        noise *= aug.noise * 255.0
        arr = np.asarray(img).astype(np.int16)
        arr += np.rint(noise).astype(np.int16)[..., None]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if aug.jpeg_quality is not None:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=aug.jpeg_quality)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def render(
    ecg: Ecg, spec: RenderSpec = RenderSpec(), *, augment: Augment | None = None, seed: int = 0, start: float = 0.0
) -> Image.Image:
    """Draw ``ecg`` as a 12-lead paper ECG; returns an RGB image of ``geometry(spec).width x height``.

    The ``spec.duration_s`` seconds from ``start`` (default 0: the first 10 s) are drawn;
    ``geometry(spec, ecg, start=start).window`` says which, and a ``start`` at or beyond the record's end is a
    ``ValueError``. ``seed`` drives the random parts of ``augment`` (pixel noise); the same inputs give the same
    bytes.
    """
    aug = augment or Augment()
    geom = geometry(spec, ecg, start=start)
    ss = geom.supersample
    grid = spec.grid and not aug.drop_grid
    colours = aug.grid_rgb or (MAJOR_RGB, MINOR_RGB)
    if ss > 1:
        # Anti-aliasing without copying the supersampled page: draw the traces on a one-byte coverage mask at
        # ``ss``x, box-downsample the mask, and lay the ink over the (cached, already downsampled) page with it.
        background, ink = _background_1x(spec, grid, colours)
        mask = Image.new("L", (background.width * ss, background.height * ss), 0)
        _draw_traces(mask, ecg, spec, geom, ss)
        img = Image.composite(ink, background, mask.reduce(ss))
    else:
        img = _background(spec, grid, colours).copy()
        _draw_traces(img, ecg, spec, geom, ss)
    for xy, patch in _label_patches(spec):
        img.paste(patch, xy)
    if not aug.is_identity:
        img = _augment(img, aug, np.random.default_rng(seed))
    return img
