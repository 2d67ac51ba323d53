"""The teacher against the student in fp32, bf16 and int8, on this CPU: latency, memory, size, and strict PTB-XL AUC.

    OMP_NUM_THREADS=1 python benchmarks/inference.py [--teacher DIR ...] [--student DIR] [--bench DIR] [--runs N]

For each model (the shipped tiny teacher; a trained tiny student, exported to bf16 and int8 by
:func:`evl_ecg.infer.export.export_model` into a temporary folder), measured side by side in one run, each in a fresh
subprocess so that peak memory is its own:

* latency per ECG of :meth:`Interpreter.predict_batch` (the PTB-XL question: greedy answer plus the six teacher-forced
  label likelihoods), p50 and p95 over ``--runs`` repetitions at batch 1 and over ``ceil(runs / 3)`` (at least 3)
  batches at batch 8 (the batch's time / 8), with
  rendering included (synthetic signals in) and excluded (the rendered pages in);
* peak memory: the growth of the process's peak RSS over what it held before the model was loaded;
* size on disk of the weight files;
* strict-scorer PTB-XL AUC (x 100) on the same benchmark records (``--bench``, default the student's training
  benchmark, ``bench/`` beside its card's training file).

Then teacher/student ratios (one row per teacher: ``--teacher`` may be given more than once, each measured the same
way, e.g. the v1 and v2 tiny teachers side by side). For the paper's pair (PULSE-7B against Qwen3-VL-2B) parameter
counts come from the real architectures built on the ``meta`` device (no weights), and memory and size are
**estimates** (parameters x bytes per parameter); their latency is not measured here (no GPU on this
machine, and no weights offline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "src" / "evl_ecg" / "assets" / "tiny-teacher"
DEMO_STUDENTS = sorted(Path("/tmp/v3").glob("*/student")) if Path("/tmp/v3").is_dir() else []


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def measure_one(model: str, bench: str | None, runs: int, seed: int) -> dict:
    """Everything measured of one model, in this (fresh) process."""
    import numpy as np
    import torch

    from evl_ecg.ecg.synth import generate, sample_spec
    from evl_ecg.infer.export import folder_bytes, preimport_torchao_quietly, strict_ptb_auc
    from evl_ecg.infer.inputs import EcgInput

    preimport_torchao_quietly()
    from evl_ecg.infer.interpreter import Interpreter

    torch.manual_seed(0)
    rng = np.random.default_rng(seed)
    ecgs = [generate(sample_spec(rng, vocabulary="ptbxl"), seed=seed + i, fs=500, duration=10.0) for i in range(8)]
    base = _rss_bytes()
    t0 = time.perf_counter()
    interp = Interpreter.from_pretrained(model)
    load_s = time.perf_counter() - t0
    pages = [
        EcgInput(e.record_id or f"ecg{i}", "image", image=interp.image_of(EcgInput("x", "ecg", ecg=e))[0])
        for i, e in enumerate(ecgs)
    ]
    interp.predict_batch(ecgs[:2], "ptbxl")  # warm-up
    out: dict = {"model": model, "dtype": interp.dtype, "family": interp.family, "load_s": load_s}
    for batch in (1, 8):
        for render in (True, False):
            times = []
            for r in range(runs if batch == 1 else max(3, -(-runs // 3))):
                items = ecgs if render else pages
                chunk = [items[(r + k) % len(items)] for k in range(batch)]
                t = time.perf_counter()
                interp.predict_batch(chunk, "ptbxl")
                times.append((time.perf_counter() - t) / batch)
            key = f"b{batch}_{'render' if render else 'image'}"
            out[key] = {"p50_ms": 1e3 * _percentile(times, 50), "p95_ms": 1e3 * _percentile(times, 95), "n": len(times)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_mem_bytes"] = max(0, peak - base)
    out["size_bytes"] = folder_bytes(model)
    out["parameters"] = sum(p.numel() for p in interp.adapter.model.parameters())
    if bench:
        auc, n = strict_ptb_auc(interp.adapter, bench, max_new_tokens=64)
        out.update(strict_ptb_auc=auc, n_bench=n)
    return out


def paper_pair() -> dict:
    """Parameter counts of PULSE-7B and Qwen3-VL-2B from their architectures (meta device, no weights)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    # PULSE-7B: LLaVA-1.6 (Vicuna-7B v1.5 + CLIP ViT-L/14-336, mlp2x_gelu projector).
    pulse_cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
            patch_size=14, projection_dim=768,
        ),
        text_config=LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
        ),
    )  # fmt: skip
    # Qwen3-VL-2B-Instruct (config.json of the release).
    qwen_cfg = Qwen3VLConfig(
        text_config={
            "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        tie_word_embeddings=True,
    )  # fmt: skip
    out = {}
    for name, cls, cfg in (
        ("PULSE-7B", LlavaNextForConditionalGeneration, pulse_cfg),
        ("Qwen3-VL-2B", Qwen3VLForConditionalGeneration, qwen_cfg),
    ):
        with torch.device("meta"):
            model = cls(cfg)
        total = sum(p.numel() for p in model.parameters())
        lm = model.model.language_model
        lm_linear = sum(m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear))
        out[name] = {"parameters": total, "lm_linear_parameters": lm_linear}
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", action="append", help=f"teacher folder, repeatable (default {TEACHER})")
    ap.add_argument("--student", default=str(DEMO_STUDENTS[0]) if DEMO_STUDENTS else None)
    ap.add_argument("--bench", default=None, help="ECGBench-style folder with ptb-test.json")
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all numbers to this file")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.bench, args.runs, args.seed)))
        return
    if not args.student:
        sys.exit("error: --student DIR: a trained student folder is needed (e.g. the demo's runs/demo/kd/student)")
    from evl_ecg.infer.export import default_bench, export_model, preimport_torchao_quietly

    preimport_torchao_quietly()

    bench = args.bench
    if bench is None:
        card = json.loads((Path(args.student) / "card.json").read_text())
        found = default_bench(card)
        bench = str(found) if found else None
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    import torch

    print(f"# evl-ecg inference benchmark: CPU only, torch {torch.__version__}, OMP_NUM_THREADS={threads}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f} at the start (a shared machine: latencies are upper bounds)")  # fmt: skip
    teachers = args.teacher or [str(TEACHER)]
    tnames = ["teacher fp32"] if len(teachers) == 1 else [f"teacher {i + 1} fp32" for i in range(len(teachers))]
    for name, path in zip(tnames, teachers, strict=True):
        print(f"# {name.removesuffix(' fp32')} {path}")
    print(f"# student {args.student}\n# bench {bench}")
    with tempfile.TemporaryDirectory(prefix="evl-ecg-bench-") as tmp:
        models = dict(zip(tnames, teachers, strict=True))
        models["student fp32"] = args.student
        for dtype in ("bf16", "int8"):
            out = Path(tmp) / dtype
            export_model(args.student, out, dtype, measure=False)
            models[f"student {dtype}"] = str(out)
        results = {}
        for name, path in models.items():
            cmd = [sys.executable, __file__, "--one", path, "--runs", str(args.runs), "--seed", str(args.seed)]
            if bench:
                cmd += ["--bench", bench]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if proc.returncode != 0:
                sys.exit(f"error: measuring {name} failed:\n{proc.stderr[-2000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    header = (
        "| model | params | size on disk | peak mem (+RSS) | b1 p50/p95 ms (render) | b1 p50/p95 ms (image) | "
        "b8 p50/p95 ms/ECG (render) | b8 p50/p95 ms/ECG (image) | strict PTB-XL AUC |"
    )
    print()
    print(header)
    print("|" + "---|" * 9)

    def cell(r: dict, key: str) -> str:
        return f"{r[key]['p50_ms']:.0f} / {r[key]['p95_ms']:.0f}"

    for name, r in results.items():
        auc = r.get("strict_ptb_auc")
        print(
            f"| {name} | {r['parameters']:,} | {_fmt_bytes(r['size_bytes'])} | {_fmt_bytes(r['peak_mem_bytes'])} | "
            f"{cell(r, 'b1_render')} | {cell(r, 'b1_image')} | {cell(r, 'b8_render')} | {cell(r, 'b8_image')} | "
            f"{'n/a' if auc is None else f'{auc:.1f}'} (n={r.get('n_bench', 0)}) |"
        )
    print()
    print("| teacher / student | params | size on disk | peak mem | b1 p50 (render) | b8 p50 (render) |")
    print("|---|---|---|---|---|---|")
    for tname in tnames:
        t = results[tname]
        for name in ("student fp32", "student bf16", "student int8"):
            s = results[name]
            print(
                f"| {tname} / {name} | {t['parameters'] / s['parameters']:.2f}x | "
                f"{t['size_bytes'] / s['size_bytes']:.2f}x | "
                f"{t['peak_mem_bytes'] / max(1, s['peak_mem_bytes']):.2f}x | "
                f"{t['b1_render']['p50_ms'] / s['b1_render']['p50_ms']:.2f}x | "
                f"{t['b8_render']['p50_ms'] / s['b8_render']['p50_ms']:.2f}x |"
            )
    pair = paper_pair()
    p, q = pair["PULSE-7B"], pair["Qwen3-VL-2B"]
    print()
    print("Paper pair, ESTIMATES from parameter counts of the real architectures (meta device; weights bytes only,")
    print("no activations or KV cache; int8 = language-model linears at 1 byte, the rest bf16); latency not measured:")
    print()
    print("| model | parameters | fp32 | bf16 | int8 (LM linears) |")
    print("|---|---|---|---|---|")
    for name, d in pair.items():
        n, lin = d["parameters"], d["lm_linear_parameters"]
        print(
            f"| {name} | {n / 1e9:.2f} B | {_fmt_bytes(4 * n)} | {_fmt_bytes(2 * n)} | "
            f"{_fmt_bytes(lin + 2 * (n - lin))} |"
        )

    def int8_bytes(d: dict) -> int:
        return d["lm_linear_parameters"] + 2 * (d["parameters"] - d["lm_linear_parameters"])

    print(
        f"| PULSE-7B / Qwen3-VL-2B | {p['parameters'] / q['parameters']:.2f}x | "
        f"{p['parameters'] / q['parameters']:.2f}x | {p['parameters'] / q['parameters']:.2f}x | "
        f"{int8_bytes(p) / int8_bytes(q):.2f}x (bf16 teacher / int8 student "
        f"{2 * p['parameters'] / int8_bytes(q):.2f}x) |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "paper_pair": pair}, indent=1))


if __name__ == "__main__":
    main()
