"""Time of a KD step against an SFT step, with the live teacher and with the teacher-output cache, side by side in one
run, on the same data, student and batch size.

Builds a small synthetic corpus, a tiny student and a tiny teacher (or takes checkpoints you give), then trains the
same student for ``--steps`` optimiser steps as SFT (CE only), as KD with each ``--method`` (EVL-ECG by default) with
the live teacher, and as KD with the teacher's outputs read from a cache (:mod:`evl_ecg.train.teacher_cache`, built
once per method before its timed run: its build time is printed on its own), all through
:func:`evl_ecg.train.pipeline.run`, i.e. the Trainer, collator and objective the real runs use. A ``TrainerCallback``
records the wall time of every step; the first ``--warmup`` steps of each run are dropped and the median of the rest
is reported. A live KD step includes the frozen teacher's forward pass (no grad) and the encoding of the teacher's
side of the batch; a cached one reads the teacher's tensors from disk instead; both include the objective's own
modules and their optimiser group.

    python benchmarks/step_time.py                         # tiny default on CPU, about 4 minutes on 2 cores
    python benchmarks/step_time.py --repeat 3              # on a shared machine: the fastest of 3 rounds
    python benchmarks/step_time.py --method evl-ecg --method vanilla-kl --method dskd
    python benchmarks/step_time.py --method label-kd --method evl-ecg   # label-space KD scores candidates per step
    python benchmarks/step_time.py --student DIR --teacher DIR --train-file FILE --gpu   # your checkpoints
    python benchmarks/step_time.py --teacher A --teacher B  # two teachers side by side (live step, cache size)

Printed: per run the median step time (wall ms and steps/s, and CPU ms: the CPU time of this process, which other
processes on a shared machine do not inflate), the ratios KD / SFT for each method, live and cached, cache / live,
and each cache's size and build time (one teacher pass over the records). A step is timed with its data loading.
With ``--teacher`` given more than once, every KD run is made once per teacher (named by its folder), and the live
step and the cache of each later teacher are also given as a ratio to the first's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall and CPU time of each optimiser step, data loading included.

    The Trainer fetches (collates) a step's batches before ``on_step_begin``, so a step is timed from the end of the
    previous one to its own end (the first from its ``on_step_begin``): the encoding of the teacher's side of a batch,
    or the reading of the cache, counts. CPU time (``time.process_time``, all threads of this process) does not count
    what other processes take from a shared machine.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if self._last is None:
            self._last = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self._last[0])
        self.cpu.append(now[1] - self._last[1])
        self._last = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--method", action="append", help="KD method(s) (registered presets); default evl-ecg")
    ap.add_argument("--train-file", help="ECGInstruct-format training file (default: a synthetic corpus)")
    ap.add_argument("--student", help="student checkpoint (default: a tiny student built on the corpus)")
    ap.add_argument(
        "--teacher",
        action="append",
        help="teacher checkpoint (default: a tiny teacher built on the corpus); repeat to compare teachers",
    )
    ap.add_argument("--gpu", action="store_true", help="run on the GPU (bf16); default CPU fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of all runs, interleaved (sft, then live and cached KD per method); the fastest round's median "
        "is reported: on a shared machine, what the others' load did not add",
    )
    args = ap.parse_args()
    methods = args.method or ["evl-ecg"]

    import torch

    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.records import load_records
    from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train.config import load_config
    from evl_ecg.train.pipeline import image_loader, load_training_records, run
    from evl_ecg.train.teacher_cache import human_bytes, open_or_build

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="evl-step-"))
    train_file = args.train_file
    if train_file is None:
        n = max(64, args.batch_size * (args.steps + 1))
        build_corpus(tmp / "data", n_train=n, n_bench=1, seed=args.seed, workers=2, progress=False)
        train_file = str(tmp / "data" / "train.json")
    student, teachers = args.student, list(args.teacher or [])
    if student is None or not teachers:
        texts = corpus_from_records(load_records(train_file))
        if student is None:
            student = str(tmp / "student")
            build_tiny_student(texts, seed=args.seed).save_pretrained(student)
        if not teachers:
            teachers = [str(tmp / "teacher")]
            build_tiny_teacher(texts, seed=args.seed).save_pretrained(teachers[0])

    def label(folder: str) -> str:  # a run's exported model is <run>/student: name it by the run
        path = Path(folder)
        return path.parent.name if path.name == "student" else path.name

    names = {t: label(t) if len(teachers) > 1 else "" for t in teachers}
    if len(set(names.values())) < len(teachers):  # two folders of one name: number them
        names = {t: f"teacher{i + 1}" for i, t in enumerate(teachers)}

    common = dict(
        train_file=train_file,
        student=student,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-4,
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=not args.gpu,
        bf16=args.gpu,
        dataloader_num_workers=0,
    )

    def config(phase: str, name: str, **extra):
        return load_config(None, output_dir=str(tmp / f"run-{phase}-{name}"), phase=phase, **common, **extra)

    def timed(phase: str, name: str = "", **extra) -> tuple[float, float]:
        """Median wall and CPU seconds per step after the warm-up steps."""
        timer = StepTimer()
        run(config(phase, name, **extra), resume=False, callbacks=[timer])
        return tuple(statistics.median(t[args.warmup :] or t) for t in (timer.wall, timer.cpu))

    def line(label: str, t: tuple[float, float], base: tuple[float, float] | None = None, extra: str = "") -> str:
        text = f"{label:<20}: {t[0] * 1e3:8.1f} ms/step ({1 / t[0]:.2f} steps/s), CPU {t[1] * 1e3:8.1f} ms/step"
        if base is not None:
            text += f"  KD/SFT = {t[0] / base[0]:.2f}x (CPU {t[1] / base[1]:.2f}x)"
        return text + extra

    def build_cache(method: str, teacher: str) -> tuple[str, float, dict]:
        cache_dir = str(tmp / f"cache-{method}-{names[teacher]}")
        cfg = config("kd", f"{method}-build", method=method, teacher=teacher, teacher_cache=cache_dir)
        t0 = time.perf_counter()
        cache = open_or_build(cfg, load_training_records(cfg), image_loader(cfg), log=None)
        return cache_dir, time.perf_counter() - t0, cache.describe()

    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {args.threads} threads"
    print(
        f"device: {device}; batch {args.batch_size}; {args.steps} steps per run, median of the last "
        f"{args.steps - args.warmup}" + (f", fastest of {args.repeat} interleaved rounds" if args.repeat > 1 else "")
    )

    def fastest(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return min(r[0] for r in runs), min(r[1] for r in runs)

    runs = [(method, teacher) for method in methods for teacher in teachers]
    caches: dict[tuple[str, str], tuple[str, float, dict]] = {}
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        times.setdefault("sft", []).append(timed("sft"))
        for method, teacher in runs:
            tag = f"{method}-{names[teacher]}".rstrip("-")
            times.setdefault(f"{tag} live", []).append(timed("kd", f"{tag}-live", method=method, teacher=teacher))
            if (method, teacher) not in caches:  # built once, right before its first timed run
                caches[method, teacher] = build_cache(method, teacher)
            times.setdefault(f"{tag} cache", []).append(
                timed("kd", f"{tag}-cache", method=method, teacher=teacher, teacher_cache=caches[method, teacher][0])
            )
    sft = fastest(times["sft"])
    print(line("sft", sft))
    first: dict[str, tuple[tuple[float, float], dict, float]] = {}
    for method, teacher in runs:
        tag = f"{method}-{names[teacher]}".rstrip("-")
        live, cached = fastest(times[f"{tag} live"]), fastest(times[f"{tag} cache"])
        _, build_s, info = caches[method, teacher]
        print(line(f"kd {tag} live", live, sft))
        ratio = f"  cache/live = {cached[0] / live[0]:.2f}x (CPU {cached[1] / live[1]:.2f}x)"
        print(line(f"kd {tag} cache", cached, sft, ratio))
        saved = live[0] - cached[0]
        pays = f"pays for its build after {build_s / saved:.0f} steps" if saved > 0 else "does not pay here"
        per_record = info["bytes"] / info["records"]
        print(
            f"   cache of {', '.join(info['fields'])}: {human_bytes(info['bytes'])} for {info['records']} records "
            f"({human_bytes(per_record)}/record), built in {build_s:.1f} s "
            f"({build_s / info['records'] * 1e3:.0f} ms/record); {pays}"
        )
        if method in first:
            (live0, bytes0, build0) = first[method]
            print(
                f"   against {names[teachers[0]]}: live step {live[0] / live0[0]:.2f}x "
                f"(CPU {live[1] / live0[1]:.2f}x), cache {per_record / bytes0:.2f}x per record, "
                f"build {build_s / build0:.2f}x"
            )
        else:
            first[method] = (live, per_record, build_s)


if __name__ == "__main__":
    main()
