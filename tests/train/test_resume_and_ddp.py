"""A killed run resumes to the same weights; two CPU processes (torchrun, gloo) match one on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("_run_script.py")


def _config(out: Path, corpus: Path, ckpts: dict[str, Path], **kw) -> dict:
    base = dict(
        output_dir=str(out),
        train_file=str(corpus / "train.json"),
        phase="kd",
        method="evl-ecg",
        student=str(ckpts["student"]),
        teacher=str(ckpts["teacher"]),
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return base


def _run(cfg: dict, *, env: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--master_port=29517"]
    else:
        cmd = [sys.executable]
    return subprocess.run(
        [*cmd, str(SCRIPT), json.dumps(cfg)], env=full_env, capture_output=True, text=True, timeout=600
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run_dir / "student").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_corpus, tiny_checkpoints):
    steps = dict(max_steps=5, save_steps=2, save_strategy="steps")
    whole = _run(_config(tmp_path / "whole", tiny_corpus, tiny_checkpoints, **steps))
    assert whole.returncode == 0, whole.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    killed = _run(_config(interrupted, tiny_corpus, tiny_checkpoints, **steps), env={"KILL_AT": "3"})
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert (interrupted / "checkpoint-2").is_dir() and not (interrupted / "student").exists()
    resumed = _run(_config(interrupted, tiny_corpus, tiny_checkpoints, **steps))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(_weights(tmp_path / "whole"), _weights(interrupted), atol=1e-5)
    # the objective's own modules were checkpointed and resumed too
    assert (interrupted / "checkpoint-4" / "objective.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell environment")
def test_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny_corpus, tiny_checkpoints):
    one = _run(_config(tmp_path / "one", tiny_corpus, tiny_checkpoints, max_steps=2, gradient_accumulation_steps=2))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_config(tmp_path / "two", tiny_corpus, tiny_checkpoints, max_steps=2), torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_weights(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-5)
