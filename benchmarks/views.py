"""Cost per sample of each view (``evl_ecg.ecg.views``) relative to a clean render, measured side by side.

For every record the clean render and each view are timed in turn (interleaved, so a load change on a shared
machine hits all of them alike), ``repeats`` times, and the median CPU time per sample is reported with its ratio
to the clean render's. Records: ``generate(sample_spec(rng), seed=...)`` (10 s, 500 Hz), drawn once before timing;
the signal's generation is not timed. A view's cost includes its render (signal and rendering views re-render; an
image view is ``render`` plus its Augment step).

Usage: ``python benchmarks/views.py [--records 20] [--repeats 3] [--severity 1.0] [--dpi D]``. Single-threaded;
CPU time of this process (``time.process_time``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from evl_ecg.ecg.render import RenderSpec, render
from evl_ecg.ecg.synth import generate, sample_spec
from evl_ecg.ecg.views import VIEWS, apply_view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--severity", type=float, default=1.0)
    parser.add_argument("--dpi", type=float, default=None, help="render the letter page at this DPI (default 512x384)")
    args = parser.parse_args()

    spec = RenderSpec() if args.dpi is None else RenderSpec.at_dpi(args.dpi)
    records = [generate(sample_spec(np.random.default_rng(i)), seed=i) for i in range(args.records)]
    render(records[0], spec)  # warm the page caches: every timing below sees them warm
    times: dict[str, list[float]] = {"clean": [], **{name: [] for name in VIEWS}}
    for _ in range(args.repeats):
        per: dict[str, float] = dict.fromkeys(times, 0.0)
        for k, ecg in enumerate(records):
            t0 = time.process_time()
            render(ecg, spec)
            per["clean"] += time.process_time() - t0
            for name in VIEWS:
                t0 = time.process_time()
                apply_view(ecg, name, args.severity, seed=k, base_spec=spec)
                per[name] += time.process_time() - t0
        for name, total in per.items():
            times[name].append(total / len(records))

    clean = statistics.median(times["clean"])
    size = f"{spec.size[0]}x{spec.size[1]}" if spec.size else f"{args.dpi:g} DPI"
    print(f"{args.records} records, {args.repeats} repeats, severity {args.severity:g}, {size}; CPU ms per sample")
    print("| view | family | ms / sample | x clean |")
    print("|---|---|---|---|")
    print(f"| clean render | - | {clean * 1e3:.2f} | 1.00 |")
    for name, view in VIEWS.items():
        t = statistics.median(times[name])
        print(f"| `{name}` | {view.family} | {t * 1e3:.2f} | {t / clean:.2f} |")


if __name__ == "__main__":
    main()
