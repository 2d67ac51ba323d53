"""Images per second of ``evl_ecg.ecg.render`` against matplotlib drawing the same page, in one run.

Both draw the same records with the same layout at the same pixel size: the grid (5 mm lines, plus 1 mm
lines where ``render`` draws them), the calibration pulses, 13 traces (3x4 + rhythm strip) and the lead
labels, at positions taken from :func:`evl_ecg.ecg.render.geometry`. matplotlib uses the Agg backend and
``savefig`` to an in-memory buffer (``format="raw"``: RGBA pixels, no PNG encoding, like ``render``, which
returns a ``PIL.Image``). Two matplotlib variants are timed:

* ``mpl-fresh``: a new figure per image, as ECG-Image-Kit does (``ecg_plot.py``);
* ``mpl-reuse``: one figure built once, only the trace data replaced per image (the best case for matplotlib).

Records: synthetic 10 s, 500 Hz ECGs made of Gaussian bumps per beat (this file), and, when
``evl_ecg.ecg.synth`` is importable, records from ``generate(sample_spec(rng), seed=...)``.

Usage: ``python benchmarks/render_speed.py [--records 8] [--repeats 3] [--seconds 1.0]``. Both are
single-threaded; rates are images per CPU second of this process (``time.process_time``), which stays
meaningful on a shared machine where wall time does not.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from evl_ecg.ecg.leads import LEAD_INDEX  # noqa: E402
from evl_ecg.ecg.render import (  # noqa: E402
    INK_RGB,
    MAJOR_RGB,
    MINOR_RGB,
    Augment,
    Geometry,
    RenderSpec,
    geometry,
    render,
)
from evl_ecg.ecg.signal import Ecg  # noqa: E402


def bump_ecg(seed: int, fs: float = 500.0, duration: float = 10.0) -> Ecg:
    """P, Q, R, S, T Gaussian bumps per beat at a seeded heart rate, per-lead amplitudes and signs."""
    rng = np.random.default_rng(seed)
    n = int(fs * duration)
    t = np.arange(n) / fs
    hr = rng.uniform(50, 110)
    gains = rng.uniform(0.3, 1.6, 12) * rng.choice([-1.0, 1.0], 12, p=[0.25, 0.75])
    sig = np.zeros((12, n))
    for r in np.arange(rng.uniform(0.1, 0.6), duration, 60.0 / hr):
        for dt, a, w in ((-0.16, 0.12, 0.025), (-0.02, -0.08, 0.008), (0.0, 1.0, 0.01), (0.025, -0.2, 0.01)):
            sig += np.outer(gains * a, np.exp(-0.5 * ((t - r - dt) / w) ** 2))
        sig += np.outer(np.abs(gains) * 0.25, np.exp(-0.5 * ((t - r - 0.28) / 0.05) ** 2))
    return Ecg(sig.astype(np.float32), fs, record_id=f"bumps-{seed}")


def synth_records(n: int) -> list[Ecg]:
    try:
        from evl_ecg.ecg.synth import generate, sample_spec
    except ImportError:
        return []
    rng = np.random.default_rng(0)
    return [generate(sample_spec(rng), seed=i) for i in range(n)]


def _rgb(c: tuple[int, int, int]) -> tuple[float, float, float]:
    return (c[0] / 255, c[1] / 255, c[2] / 255)


class MplPage:
    """The same page drawn by matplotlib, in pixel coordinates from :func:`geometry`."""

    def __init__(self, spec: RenderSpec, geom: Geometry) -> None:
        self.spec, self.geom = spec, geom
        w, h = geom.width, geom.height
        self.fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
        ax = self.fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        ppm = geom.px_per_mm
        ox, oy = geom.origin
        lw_pt = max(1.0, 0.25 * ppm) * 72 / 100
        kx = np.arange(np.floor((-0.5 - ox) / ppm), np.ceil((w - ox) / ppm) + 1).astype(int)
        ky = np.arange(np.floor((-0.5 - oy) / ppm), np.ceil((h - oy) / ppm) + 1).astype(int)
        for major in (False, True):
            if not major and not geom.minor_grid:
                continue
            segs = [[(ox + k * ppm, -1), (ox + k * ppm, h)] for k in kx if (k % 5 == 0) == major]
            segs += [[(-1, oy + k * ppm), (w, oy + k * ppm)] for k in ky if (k % 5 == 0) == major]
            width = max(0.5, (0.2 if major else 0.1) * ppm) * 72 / 100
            ax.add_collection(LineCollection(segs, colors=[_rgb(MAJOR_RGB if major else MINOR_RGB)], linewidths=width))
        for (x_start, x_end, base), (rise, fall) in zip(geom.calibrations, geom.pulse_x, strict=True):
            top = base - geom.px_per_mv
            ax.plot([x_start, rise, rise, fall, fall, x_end], [base, base, top, top, base, base], color="k", lw=lw_pt)
        font_pt = max(9.0, 3.5 * ppm) * 72 / 100
        for p in geom.panels:
            ax.text(p.x0 + ppm, p.baseline - 3 * ppm, p.lead, fontsize=font_pt, color="k", va="baseline")
        self.lines = [ax.plot([], [], color=_rgb(INK_RGB), lw=lw_pt)[0] for _ in geom.panels]

    def draw(self, ecg: Ecg) -> bytes:
        geom = self.geom
        for line, p in zip(self.lines, geom.panels, strict=True):
            i0, i1 = int(np.ceil(p.t0 * ecg.fs)), int(np.ceil(p.t1 * ecg.fs))
            n = np.arange(i0, min(i1, ecg.signal.shape[1]))
            line.set_data(
                p.x0 + (n / ecg.fs - p.t0) * geom.px_per_s,
                p.baseline - ecg.signal[LEAD_INDEX[p.lead], n] * geom.px_per_mv,
            )
        buf = io.BytesIO()
        self.fig.savefig(buf, format="raw", dpi=100)
        return buf.getvalue()

    def close(self) -> None:
        plt.close(self.fig)


def mpl_fresh(spec: RenderSpec, ecg: Ecg) -> bytes:
    page = MplPage(spec, geometry(spec, ecg))
    out = page.draw(ecg)
    page.close()
    return out


def rate(fn: Callable[[Ecg], object], records: list[Ecg], repeats: int, min_seconds: float) -> float:
    """Median images per CPU second over ``repeats`` passes (each at least ``min_seconds``), after a warm-up pass.

    CPU time (``time.process_time``) rather than wall time: the numbers stay comparable on a shared machine.
    """
    for ecg in records:
        fn(ecg)
    rates = []
    for _ in range(repeats):
        count, t0 = 0, time.process_time()
        while True:
            for ecg in records:
                fn(ecg)
            count += len(records)
            elapsed = time.process_time() - t0
            if elapsed >= min_seconds:
                break
        rates.append(count / elapsed)
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum duration of one timed pass")
    args = ap.parse_args()
    half = max(1, args.records // 2)
    synth = synth_records(half)
    records = [bump_ecg(i) for i in range(args.records - len(synth))] + synth
    print(
        f"records: {len(records) - len(synth)} Gaussian-bump + {len(synth)} evl_ecg.ecg.synth; 10 s at 500 Hz; 3x4 + II"
    )
    specs = {
        "512x384 (default)": RenderSpec(),
        "2200x1700 (200 DPI)": RenderSpec.at_dpi(200),
        "2200x1700, 2x AA": RenderSpec.at_dpi(200, supersample=2),
    }
    aug = Augment(rotation_deg=2.0, noise=0.03, tint=0.4, blur=0.5, jpeg_quality=70)
    header = f"{'size':<22}{'render':>10}{'+augment':>10}{'mpl-fresh':>11}{'mpl-reuse':>11}{'x fresh':>9}{'x reuse':>9}"
    print(header + "   (images per CPU second; x = render / matplotlib)")
    for name, spec in specs.items():
        ours = rate(lambda e, s=spec: render(e, s), records, args.repeats, args.seconds)
        ours_aug = rate(lambda e, s=spec: render(e, s, augment=aug, seed=1), records, args.repeats, args.seconds)
        fresh = rate(lambda e, s=spec: mpl_fresh(s, e), records, args.repeats, args.seconds)
        page = MplPage(spec, geometry(spec))
        reuse = rate(page.draw, records, args.repeats, args.seconds)
        page.close()
        rates = f"{ours:>10.1f}{ours_aug:>10.1f}{fresh:>11.1f}{reuse:>11.1f}"
        print(f"{name:<22}{rates}{ours / fresh:>9.1f}{ours / reuse:>9.1f}")


if __name__ == "__main__":
    main()
