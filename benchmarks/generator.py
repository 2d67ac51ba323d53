"""Generators 1 and 2 side by side: each quantity of issue 17 (median, 5th-95th percentile) against its range.

    OMP_NUM_THREADS=1 python benchmarks/generator.py [--n 200]

The quantities, their measurement and their ranges are in ``evl_ecg.ecg.realism`` (sources in docs/signals.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from evl_ecg.ecg.realism import QUANTITIES, measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="records per quantity and generator")
    n = ap.parse_args().n
    t0 = time.perf_counter()
    cols = ("generator 1: median [p5, p95]", "generator 2: median [p5, p95]")
    head = f"{'quantity':24s} {'unit':5s} {cols[0]:34s} {cols[1]:34s} target"
    print(head)
    print("-" * len(head))
    for name, (q, _) in QUANTITIES.items():
        cells = []
        for g in (1, 2):
            v = measure(name, g, n)
            ok = "in " if not q.failures(v) else "OUT"
            extra = f" >{q.share_above[0]:g}:{100 * np.mean(v > q.share_above[0]):.0f}%" if q.share_above else ""
            p5, p50, p95 = np.percentile(v, [5, 50, 95])
            cells.append(f"{ok} {p50:7.3g} [{p5:.3g}, {p95:.3g}]{extra}")
        print(f"{name:24s} {q.unit:5s} {cells[0]:34s} {cells[1]:34s} {q.target}")
    print(f"\n{n} records per quantity and generator; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
