"""The Trainer's distributed engines with the project's training module (issue 13, point 3).

DeepSpeed runs here as one CPU process (its CPU accelerator) when it is installed (it is not a dependency: its
build pulls a CUDA toolchain; `pip install --no-build-isolation deepspeed` into an environment that has torch):
ZeRO-2 and ZeRO-3 train the tiny pair and export the full student, equal to an unsharded run's. FSDP runs on GPUs
only (accelerate trains plain DDP when asked for FSDP on a CPU): the configuration refuses that combination.
Tests that cannot run here are skipped, never passed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from .test_resume_and_ddp import _assert_same_weights, _config, _run

PAPER = Path(__file__).resolve().parents[2] / "src" / "evl_ecg" / "configs" / "paper"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (optional; see docstring)")


def _loaded_weights(student_dir: Path) -> dict[str, torch.Tensor]:
    from evl_ecg.models import load_adapter

    return {k: v.detach() for k, v in load_adapter(student_dir).model.named_parameters()}


@needs_deepspeed
def test_deepspeed_auto_values_resolve_against_the_training_module(tiny_checkpoints, tmp_path):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from evl_ecg.models import load_adapter
    from evl_ecg.train.config import load_config
    from evl_ecg.train.trainer import DistillModule

    student = load_adapter(tiny_checkpoints["student"])
    module = DistillModule(student, torch.nn.Module())
    hidden = student.model.config.text_config.hidden_size
    args = load_config(
        None, output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=6, report_to="none"
    )
    for name in ("kd-deepspeed-zero2.json", "kd-deepspeed-zero3.json"):
        ds = HfTrainerDeepSpeedConfig(json.loads((PAPER / name).read_text()))
        ds.trainer_config_process(args)
        ds.trainer_config_finalize(args, module, 100)
        text = json.dumps(ds.config)
        assert '"auto"' not in text, name
        assert ds.config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
        assert ds.config["train_batch_size"] == 48 and ds.config["train_micro_batch_size_per_gpu"] == 8


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_exports_the_full_student_equal_to_an_unsharded_run(stage, tmp_path, tiny_corpus, tiny_checkpoints):
    """Under ZeRO-3 the teacher is loaded whole (outside ``zero.Init``) and the student is gathered for export."""
    plain = _run(_config(tmp_path / "plain", tiny_corpus, tiny_checkpoints, max_steps=2, save_strategy="no"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    cfg = _config(tmp_path / stage, tiny_corpus, tiny_checkpoints, max_steps=2, save_strategy="no")
    del cfg["use_cpu"]
    cfg["deepspeed"] = str(PAPER / f"kd-deepspeed-{stage}.json")
    engine = _run(cfg, torchrun=1)
    assert engine.returncode == 0, engine.stderr[-3000:]
    plain_weights = _loaded_weights(tmp_path / "plain" / "student")
    _assert_same_weights(plain_weights, _loaded_weights(tmp_path / stage / "student"), atol=1e-5)


@pytest.mark.slow
@needs_deepspeed
def test_zero3_saves_the_gathered_embedding_head_equal_to_an_unsharded_run(tmp_path, tiny_corpus, tiny_checkpoints):
    """The elastic head trained under ZeRO-3 is written from its gathered weights, not from the process's shard."""
    from evl_ecg.models.embedding_head import EmbeddingHead

    objective = {"alpha": 0.3, "terms": {"mic": {"weight": 1.0}}}
    kw = dict(max_steps=2, save_strategy="no", method="sft", objective=objective, per_device_train_batch_size=4)
    plain = _run(_config(tmp_path / "plain", tiny_corpus, tiny_checkpoints, **kw))
    assert plain.returncode == 0, plain.stderr[-3000:]
    cfg = _config(tmp_path / "zero3", tiny_corpus, tiny_checkpoints, **kw)
    del cfg["use_cpu"]
    cfg["deepspeed"] = str(PAPER / "kd-deepspeed-zero3.json")
    engine = _run(cfg, torchrun=1)
    assert engine.returncode == 0, engine.stderr[-3000:]
    heads = [EmbeddingHead.load(tmp_path / run / "student") for run in ("plain", "zero3")]
    _assert_same_weights(dict(heads[0].named_parameters()), dict(heads[1].named_parameters()), atol=1e-5)


def test_fsdp_on_a_cpu_is_refused_not_silently_ddp(tmp_path):
    from evl_ecg.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="fsdp.*GPUs only"):
        load_config(
            None,
            output_dir=str(tmp_path),
            use_cpu=True,
            fsdp=True,
            fsdp_config=str(PAPER / "kd-fsdp.json"),
            report_to="none",
        )
    # on a GPU machine the same settings become the Trainer's FSDP2 plugin arguments
    args = load_config(None, output_dir=str(tmp_path), fsdp=True, fsdp_config=str(PAPER / "kd-fsdp.json"))
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock"


def test_the_fsdp_config_names_the_students_layer_classes():
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    cfg = json.loads((PAPER / "kd-fsdp.json").read_text())
    assert cfg["state_dict_type"] == "FULL_STATE_DICT"  # the exported student is the gathered model
    for name in cfg["transformer_layer_cls_to_wrap"]:
        assert hasattr(modeling_qwen3_vl, name), name
    assert set(cfg["transformer_layer_cls_to_wrap"]) == set(
        modeling_qwen3_vl.Qwen3VLForConditionalGeneration._no_split_modules
    )
