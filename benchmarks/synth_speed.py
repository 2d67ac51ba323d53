"""Synthetic ECG generation speed on one core: records per second against the 100/s aim.

python benchmarks/synth_speed.py [--records 300] [--fs 500] [--duration 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from evl_ecg.ecg.synth import generate, sample_spec  # noqa: E402

AIM = 100.0  # ten-second 12-lead 500 Hz records per second per core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--fs", type=int, default=500)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(args.records)]
    generate(specs[0], seed=0, fs=args.fs, duration=args.duration)  # warm caches
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        generate(spec, seed=i, fs=args.fs, duration=args.duration)
    elapsed = time.perf_counter() - start
    rate = args.records / elapsed
    print(
        f"synth: {args.records} records of {args.duration:g} s x 12 leads at {args.fs} Hz (mixed findings and noise) "
        f"in {elapsed:.2f} s on one core: {rate:.0f} records/s, {1000 / rate:.2f} ms/record; "
        f"ratio to the {AIM:.0f}/s aim: {rate / AIM:.1f}x"
    )


if __name__ == "__main__":
    main()
