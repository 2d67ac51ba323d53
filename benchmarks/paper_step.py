"""Seconds per optimiser step and peak memory of SFT and each KD method at the paper's shapes, beside Table 7.

    python benchmarks/paper_step.py                    # here (no GPU): memory ESTIMATES and the objective's CPU share
    python benchmarks/paper_step.py --quick            # the estimates only (seconds)
    python benchmarks/paper_step.py --method evl-ecg --method uld --steps 3     # on a CUDA machine: measured

The models are the paper's pair at full depth with random weights, built from the releases' ``config.json``
(``tests/paper/fixtures/``) by :mod:`evl_ecg.models.paper_shape`: PULSE-7B (flat any-resolution LLaVA-1.6, 32 Vicuna
layers, CLIP ViT-L/14-336) and Qwen3-VL-2B-Instruct (28 layers, 24-block vision tower). Global batch 48 = 8 per
device x 6 accumulation steps (Table 3), every other setting from ``configs/paper/kd.yaml`` (``sft.yaml`` for SFT,
at the same batch): bf16 autocast over float32 student weights and AdamW moments, the frozen teacher in bf16,
gradient checkpointing, max_length 4096, the student's 784 to 50,176 px. KD methods: the study's (Tables 1 and 6,
:data:`evl_ecg.experiments.study.STUDY_METHODS` without ``control``, whose step is SFT's) unless ``--method`` names
others.

**On a GPU** (``torch.cuda.is_available()``, or ``--gpu``): one process builds the student on the device (float32),
runs SFT, then builds the teacher there (bf16) and runs each KD method; each run is the Trainer, collator, objective
and adapters that :func:`evl_ecg.train.pipeline.run` wires (:func:`~evl_ecg.train.pipeline.build_objective`,
:class:`~evl_ecg.train.paired.PairedDataset`, :class:`~evl_ecg.train.trainer.EvlTrainer`), on synthetic 2200 x 1700
ECG pages (``--pages`` rendered, repeated). Measured per run: the median wall time of an optimiser step after
``--warmup`` steps (data loading, the teacher's forward and the 6 accumulation micro-batches included; the
``StepTimer`` of ``benchmarks/step_time.py``) and the peak of ``torch.cuda.max_memory_allocated`` (and ``_reserved``)
over the run, the teacher's weights included for KD.

**Without a GPU** (this machine): nothing is timed at the paper's shapes. Printed instead, clearly labelled as
ESTIMATES: the memory of the weights and optimiser state from parameter counts of the real architectures built on
the ``meta`` device (no memory): student and objective modules 16 bytes per parameter (float32 weights, gradients
and two AdamW moments), the teacher 2 (bf16 weights). Activations, bf16 autocast copies, the CUDA context and the
allocator's slack are NOT counted, so the estimate is a lower bound of what Table 7 measured. Then (unless
``--quick``) the objective's share of the step on this CPU at the multi-tile teacher shape (3,400 teacher positions,
2,880 visual), from ``benchmarks/objective.py``'s own ``layer`` and ``distill`` cases (its subprocess workers): the
EVL-ECG distillation terms (MHCA, relation, OT; CE is SFT's own cost) against the student's 28 decoder layers'
forward and backward at B 4, L_s 512, by time and by matmul FLOPs (several minutes on two cores).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "paper" / "fixtures"
STUDENT_CONFIG = FIXTURES / "qwen3-vl-2b-instruct.config.json"
TEACHER_CONFIG = FIXTURES / "pulse-7b.config.json"
PAGE = (2200, 1700)
PER_DEVICE, ACCUMULATION = 8, 6  # global batch 48 (Table 3 / Table 7)
#: Paper Table 7 (one H100, global batch 48): seconds per step, GB of GPU memory.
TABLE7 = {"evl-ecg": (8.54, 56.4), "uld": (8.37, 55.7)}
#: Texts the tokenizers of the estimate are trained on (their size does not change a parameter count).
TOKENIZER_TEXTS = [
    "What is the rhythm of this ECG?",
    "Sinus rhythm with first degree AV block; NORM(normal ECG).",
    "Please determine the diagnosis: AF, RBBB, LBBB, SB, ST. Answer: AF; RBBB",
] * 5


def kd_methods(chosen: list[str] | None) -> list[str]:
    """``chosen`` (checked against the registered presets) or the study's KD methods (Tables 1 and 6)."""
    from evl_ecg.distill.presets import list_presets
    from evl_ecg.experiments.study import STUDY_METHODS

    if not chosen:
        return [m for m in STUDY_METHODS if m != "control"]
    presets = list_presets()
    unknown = [m for m in chosen if m not in presets or m == "sft"]
    if unknown:
        sys.exit(
            f"error: --method {unknown[0]}: not a KD preset; choose from {', '.join(p for p in presets if p != 'sft')}"
        )
    return list(dict.fromkeys(chosen))


#: Keys of the paper's YAML files that name local paths (set per run here, or not needed).
PATH_KEYS = ("student", "teacher", "train_file", "image_root", "output_dir")


def paper_config(phase: str, out: Path, method: str | None = None, *, workers: int, **overrides):
    """``configs/paper/<phase>.yaml`` at global batch 48 with this run's paths and steps (an ``EvlConfig``).

    ``workers``: dataloader workers (the paper's 8; with 0 the paper's persistent workers and prefetching are off).
    """
    from importlib import resources

    import yaml

    from evl_ecg.train.config import load_config

    path = Path(str(resources.files("evl_ecg") / "configs" / "paper" / f"{phase}.yaml"))
    settings = {k: v for k, v in yaml.safe_load(path.read_text(encoding="utf-8")).items() if k not in PATH_KEYS}
    if workers == 0:
        settings.pop("dataloader_persistent_workers", None)
        settings.pop("dataloader_prefetch_factor", None)
    settings.pop("max_steps", None)
    settings.update(
        output_dir=str(out),
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUMULATION,
        dataloader_num_workers=workers,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **overrides,
    )
    if method is not None:
        settings["method"] = method
    return load_config(None, **settings)


# ---- without a GPU: estimates ----------------------------------------------------------------------------------
def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate(methods: list[str]) -> list[dict]:
    """Parameter counts (meta device) and the weights + optimiser-state memory estimate of SFT and each method."""
    import torch

    from evl_ecg.distill.registry import LossContext
    from evl_ecg.models.paper_shape import build_pulse_adapter, build_qwen3_vl_adapter, read_config
    from evl_ecg.train.pipeline import build_objective

    full = {"text_layers": None, "vision_layers": None, "device": "meta"}
    student = build_qwen3_vl_adapter(read_config(STUDENT_CONFIG), TOKENIZER_TEXTS, **full)
    teacher = build_pulse_adapter(read_config(TEACHER_CONFIG), TOKENIZER_TEXTS, **full)
    n_s, n_t = count(student.model), count(teacher.model)
    LossContext.from_adapters(student, teacher)  # fails early if the pair cannot make one
    rows = [{"run": "sft", "student": n_s, "objective": 0, "teacher": 0, "bytes": 16 * n_s}]
    with tempfile.TemporaryDirectory(prefix="evl-paper-step-") as tmp:
        for method in methods:
            row = {"run": method, "student": n_s, "teacher": n_t}
            try:
                config = paper_config("kd", Path(tmp), method, workers=0, use_cpu=True)
                with torch.device("meta"):
                    objective = build_objective(config, student, teacher)
            except Exception as exc:  # a loss that cannot be built on the meta device: say so, keep going
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:100]
                rows.append(row)
                continue
            n_o = sum(p.numel() for p in objective.parameters() if p.requires_grad)
            row.update(objective=n_o, needs_teacher=objective.needs_teacher)
            row["bytes"] = 16 * (n_s + n_o) + (2 * n_t if objective.needs_teacher else 0)
            rows.append(row)
    return rows


def objective_share(timeout: float) -> dict | None:
    """The EVL-ECG terms' share of the student's step on this CPU at the multi-tile shape (``benchmarks/objective.py``).

    Runs its ``layer`` case (one Qwen3-VL-2B decoder layer, fwd+bwd, x 28) and its ``distill`` case (MHCA + relation +
    OT, fwd+bwd) at its ``paper`` shape with the multi-tile teacher, one repeat each, in its own worker subprocesses.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import objective  # benchmarks/objective.py

    shape = objective.SHAPES["paper"]
    teacher = shape["teachers"]["multi-tile"]
    spec = {"device": "cpu", "shape": "paper", "repeats": 1, "compile": False, "teacher": teacher}
    layer = objective.run_case({**spec, "case": "layer"}, timeout)
    distill = objective.run_case({**spec, "case": "distill"}, timeout)
    if "error" in layer or "error" in distill:
        return {"error": layer.get("error") or distill.get("error")}
    student_s = layer["time_s"] * objective.LAYERS
    student_flops = layer["flops"] * objective.LAYERS
    return {
        "teacher": teacher,
        "shape": shape,
        "student_s": student_s,
        "distill_s": distill["time_s"],
        "time_share": 100 * distill["time_s"] / student_s,
        "flop_share": 100 * distill["flops"] / student_flops,
    }


# ---- on a GPU: measured --------------------------------------------------------------------------------------------
def measure_gpu(methods: list[str], steps: int, warmup: int, pages: int, workers: int) -> list[dict]:
    """Median seconds per optimiser step and peak CUDA memory of SFT and each method (one process, one GPU)."""
    import torch

    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.records import load_records
    from evl_ecg.models.paper_shape import build_pulse_adapter, build_qwen3_vl_adapter, read_config
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import build_objective, image_loader
    from evl_ecg.train.trainer import DistillModule, EvlTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_time import StepTimer  # benchmarks/step_time.py

    tmp = Path(tempfile.mkdtemp(prefix="evl-paper-step-"))
    data = tmp / "data"
    build_corpus(data, n_train=pages, n_bench=0, seed=0, size=PAGE, workers=min(pages, os.cpu_count() or 1),
                 progress=False)  # fmt: skip
    pages_records = load_records(data / "train.json")
    n = PER_DEVICE * ACCUMULATION * (warmup + steps)
    records = [pages_records[i % len(pages_records)] for i in range(n)]
    texts = corpus_from_records(pages_records)
    overrides = dict(
        train_file=str(data / "train.json"),
        image_root=str(data / "images"),
        max_steps=warmup + steps,
        logging_steps=warmup + steps,
    )

    def one(phase: str, name: str, student, teacher) -> dict:
        config = paper_config(phase, tmp / f"run-{name}", name if phase == "kd" else None, workers=workers, **overrides)
        objective = build_objective(config, student, teacher)
        teacher_used = teacher if objective.needs_teacher else None
        dataset = PairedDataset(records, image_loader(config), teacher_used, student, max_length=config.max_length)
        module = DistillModule(student, objective, requires=objective.requires)
        timer = StepTimer()
        trainer = EvlTrainer(
            model=module,
            args=config,
            train_dataset=dataset,
            data_collator=PairedCollator(student, teacher_used),
            teacher=teacher_used,
            callbacks=[timer],
        )
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        torch.cuda.synchronize()
        row = {
            "run": name,
            "s_per_step": statistics.median(timer.wall[warmup:] or timer.wall),
            "peak_allocated": torch.cuda.max_memory_allocated(),
            "peak_reserved": torch.cuda.max_memory_reserved(),
            "steps": len(timer.wall[warmup:] or timer.wall),
        }
        del trainer, module, objective, dataset
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  {name}: {row['s_per_step']:.2f} s/step, peak {row['peak_allocated'] / 1e9:.1f} GB", flush=True)
        return row

    student = build_qwen3_vl_adapter(
        read_config(STUDENT_CONFIG), texts, text_layers=None, vision_layers=None, device="cuda", dtype=torch.float32
    )

    def guarded(phase: str, name: str, student, teacher) -> dict:
        try:
            return one(phase, name, student, teacher)
        except torch.cuda.OutOfMemoryError:  # TinyBERT's attention maps of 32 teacher layers, for instance
            gc.collect()
            torch.cuda.empty_cache()
            print(f"  {name}: out of GPU memory", flush=True)
            return {"run": name, "error": "out of GPU memory"}

    rows = [guarded("sft", "sft", student, None)]  # before the teacher exists: SFT's memory is the student's alone
    teacher = build_pulse_adapter(
        read_config(TEACHER_CONFIG), texts, text_layers=None, vision_layers=None, device="cuda", dtype=torch.bfloat16
    )
    for method in methods:
        rows.append(guarded("kd", method, student, teacher))
    return rows


# ---- output --------------------------------------------------------------------------------------------------------
def _b(n: int) -> str:
    return f"{n / 1e9:.3f} B"


def print_estimate(rows: list[dict]) -> None:
    print("\nESTIMATE (no GPU here; nothing timed): memory of the weights and optimiser state from parameter counts of")
    print("the full-depth architectures (meta device). Student and objective modules: float32 weights + gradients +")
    print("AdamW m and v = 16 B/param; teacher: bf16 weights = 2 B/param. Activations, bf16 autocast copies, CUDA")
    print("context and allocator slack are NOT counted (a lower bound). GB = 1e9 bytes.\n")
    print(
        "| run | student params | objective params | teacher params | est. memory | s/step | paper Table 7 (1 x H100) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        paper = TABLE7.get(r["run"])
        paper_cell = f"{paper[0]:.2f} s, {paper[1]:.1f} GB" if paper else "-"
        if "error" in r:
            print(f"| {r['run']} | {_b(r['student'])} | n/a ({r['error']}) | {_b(r['teacher'])} | n/a | not measured | "
                  f"{paper_cell} |")  # fmt: skip
            continue
        teacher = _b(r["teacher"]) if r.get("needs_teacher") else "-"
        estimate_cell = f"ESTIMATE {r['bytes'] / 1e9:.1f} GB"
        if paper:
            estimate_cell += f" ({100 * r['bytes'] / 1e9 / paper[1]:.0f} % of Table 7's)"
        print(f"| {r['run']} | {_b(r['student'])} | {r['objective'] / 1e6:.2f} M | {teacher} | {estimate_cell} | "
              f"not measured | {paper_cell} |")  # fmt: skip


def print_share(share: dict | None) -> None:
    if share is None:
        print("\nobjective share: skipped (--quick); without it, benchmarks/objective.py's layer and distill cases run")
        print("at the multi-tile shape (several minutes on two cores)")
        return
    if "error" in share:
        print(f"\nobjective share: benchmarks/objective.py failed: {share['error']}")
        return
    s, (l_t, n_t) = share["shape"], share["teacher"]
    print(f"\nMEASURED on this CPU (benchmarks/objective.py, float32, 1 repeat; B={s['B']}, L_s={s['l_s']}, "
          f"N_s={s['n_s']}, multi-tile teacher L_t={l_t}, N_t={n_t}): EVL-ECG's distillation terms (mhca + relation + "
          f"ot, fwd+bwd) take {share['distill_s']:.1f} s against {share['student_s']:.1f} s for the student's 28 "
          f"decoder layers' fwd+bwd: {share['time_share']:.1f} % by time, {share['flop_share']:.1f} % by matmul "
          "FLOPs (the lm_head, vision tower, teacher forward and optimiser are not in the denominator)")  # fmt: skip


def print_measured(rows: list[dict], device: str) -> None:
    print(f"\nMEASURED on {device}: global batch {PER_DEVICE * ACCUMULATION} ({PER_DEVICE} x {ACCUMULATION}), "
          "full-depth random weights, median over the steps after warm-up. GB = 1e9 bytes.\n")  # fmt: skip
    print("| run | s/step | peak allocated | peak reserved | steps | paper Table 7 (1 x H100) | ratio s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        paper = TABLE7.get(r["run"])
        paper_cell = f"{paper[0]:.2f} s, {paper[1]:.1f} GB" if paper else "-"
        if "error" in r:
            print(f"| {r['run']} | {r['error']} | - | - | 0 | {paper_cell} | - |")
            continue
        ratio = f"{r['s_per_step'] / paper[0]:.2f}x" if paper else "-"
        print(f"| {r['run']} | {r['s_per_step']:.2f} | {r['peak_allocated'] / 1e9:.1f} GB | "
              f"{r['peak_reserved'] / 1e9:.1f} GB | {r['steps']} | {paper_cell} | {ratio} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", action="append", help="KD method (a registered preset; repeat); default: the study's")
    ap.add_argument("--gpu", action="store_true", help="measure on the GPU (the default when CUDA is available)")
    ap.add_argument("--estimate", action="store_true", help="print the estimates even where a GPU is available")
    ap.add_argument("--quick", action="store_true", help="without a GPU: the estimates only, no objective.py run")
    ap.add_argument("--steps", type=int, default=2, help="GPU: timed optimiser steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="GPU: optimiser steps dropped before timing")
    ap.add_argument("--pages", type=int, default=8, help="GPU: synthetic 2200 x 1700 pages rendered (then repeated)")
    ap.add_argument("--workers", type=int, default=8, help="GPU: dataloader workers (the paper config's 8)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per objective.py measurement")
    args = ap.parse_args()
    for name in ("steps", "pages"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.workers < 0:
        sys.exit("error: --warmup and --workers must be >= 0")
    for path in (STUDENT_CONFIG, TEACHER_CONFIG):
        if not path.is_file():
            sys.exit(f"error: {path}: the published config fixture is missing (run from a checkout of the repository)")
    methods = kd_methods(args.method)

    import torch

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if args.gpu and not cuda:
        sys.exit("error: --gpu: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    device = f"CUDA {torch.cuda.get_device_name(0)}" if cuda else "no GPU"
    print(f"# benchmarks/paper_step.py: torch {torch.__version__}, {device}, {os.cpu_count()} CPU cores, "
          f"methods: sft, {', '.join(methods)}")  # fmt: skip
    if cuda and not args.estimate:
        rows = measure_gpu(methods, args.steps, args.warmup, args.pages, args.workers)
        print_measured(rows, torch.cuda.get_device_name(0))
    else:
        print_estimate(estimate(methods))
        print_share(None if args.quick else objective_share(args.timeout))
    print(f"\n# total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
