"""The paper path's training numerics on the tiny pair: float32 master weights under bf16 autocast, a bf16 teacher,
what the objective receives, truncation to ``max_length``, and the teacher's declared family (issue 13, points 1, 2
and 4). Each test checks against the tensors themselves, not against an earlier run."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def bf16_student(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny student saved with bfloat16 weights, as Qwen3-VL-2B-Instruct ships."""
    from evl_ecg.models import load_adapter

    adapter = load_adapter(tiny_checkpoints["student"])
    adapter.model.to(torch.bfloat16)
    out = tmp_path_factory.mktemp("bf16") / "student"
    adapter.save_pretrained(out)
    return out


def _norm_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n and p.requires_grad}


class _Spy:
    """Wraps an objective's forward and keeps the student's and the teacher's outputs of every call."""

    def __init__(self, objective: torch.nn.Module) -> None:
        self.calls: list[tuple] = []
        self.inner = objective.forward
        objective.forward = self  # type: ignore[method-assign]

    def __call__(self, student, teacher, denominators=None):
        self.calls.append((student, teacher, torch.is_autocast_enabled("cpu")))
        return self.inner(student, teacher, denominators)


def _kd_trainer(cfg):
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import _student_adapter, build_objective, image_loader, load_training_records
    from evl_ecg.train.trainer import DistillModule, EvlTrainer

    records = load_training_records(cfg)
    student = _student_adapter(cfg, records)
    teacher = load_adapter(cfg.teacher, family=cfg.teacher_family, dtype=cfg.teacher_torch_dtype)
    objective = build_objective(cfg, student, teacher)
    spy = _Spy(objective)
    module = DistillModule(student, objective, requires=objective.requires)
    trainer = EvlTrainer(
        model=module,
        args=cfg,
        train_dataset=PairedDataset(records, image_loader(cfg), teacher, student, max_length=cfg.max_length),
        data_collator=PairedCollator(student, teacher),
        teacher=teacher,
    )
    return trainer, module, teacher, spy


def _one_kd_step(tiny_config, tmp_path, corpus, student, checkpoints, **settings):
    """The config of one EVL-ECG step of ``student`` from the tiny teacher (``settings`` on top)."""
    return tiny_config(
        tmp_path / "run",
        corpus,
        phase="kd",
        method="evl-ecg",
        max_steps=1,
        student=str(student),
        teacher=str(checkpoints["teacher"]),
        **settings,
    )


def _floating(outputs) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("logits", "hidden", "visual", "token_embeddings"):
        t = getattr(outputs, name)
        if t is not None:
            out[name] = t
    return out


@pytest.mark.parametrize("bf16", [True, False])
def test_one_update_moves_the_norm_weights_with_float32_master_weights(
    bf16, tmp_path, tiny_corpus, tiny_checkpoints, bf16_student, tiny_config
):
    """A bf16 checkpoint trains as float32 weights and AdamW moments (bf16 as autocast); the teacher is bf16 under
    ``teacher_dtype: auto`` with bf16, and float32 without; one update changes every trainable norm weight."""
    settings = {"bf16": bf16, "learning_rate": 1e-2}
    cfg = _one_kd_step(tiny_config, tmp_path, tiny_corpus, bf16_student, tiny_checkpoints, **settings)
    trainer, module, teacher, spy = _kd_trainer(cfg)
    assert {p.dtype for p in module.student.parameters()} == {torch.float32}
    assert {p.dtype for p in teacher.model.parameters()} == {torch.bfloat16 if bf16 else torch.float32}
    before = _norm_weights(module.student)
    assert before
    trainer.train()
    after = _norm_weights(module.student)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"norm weights that did not move: {unchanged[:5]}"
    states = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    assert states and {s["exp_avg"].dtype for s in states} == {torch.float32}
    assert spy.calls and all(autocast == bf16 for _, _, autocast in spy.calls)
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_a_bf16_teacher_without_autocast_reaches_the_objective_in_the_students_dtype(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    """``bf16: false`` with ``teacher_dtype: bfloat16`` (the combination that failed on a dtype mismatch): every
    tensor the objective receives is on one device, and every floating one is float32 like the student's weights."""
    student = tiny_checkpoints["student"]
    cfg = _one_kd_step(tiny_config, tmp_path, tiny_corpus, student, tiny_checkpoints, teacher_dtype="bfloat16")
    trainer, module, teacher, spy = _kd_trainer(cfg)
    assert {p.dtype for p in teacher.model.parameters()} == {torch.bfloat16}
    trainer.train()
    student_out, teacher_out, autocast = spy.calls[0]
    assert not autocast
    tensors = {**{f"student.{k}": v for k, v in _floating(student_out).items()}}
    tensors.update({f"teacher.{k}": v for k, v in _floating(teacher_out).items()})
    assert {t.device for t in tensors.values()} == {next(module.student.parameters()).device}
    assert {k: t.dtype for k, t in tensors.items() if t.dtype != torch.float32} == {}
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_teacher_device_option_places_the_teacher(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    cfg = tiny_config(
        tmp_path / "run",
        tiny_corpus,
        phase="kd",
        teacher_device="cpu",
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
    )
    trainer, _module, teacher, _spy = _kd_trainer(cfg)
    assert trainer.teacher_device == torch.device("cpu")
    assert {p.device.type for p in teacher.model.parameters()} == {"cpu"}


def test_every_teacher_dtype_a_config_allows_is_resolved_or_refused(tmp_path, tiny_corpus, tiny_config):
    from evl_ecg.train.config import ConfigError

    assert tiny_config(tmp_path, tiny_corpus, bf16=True).teacher_torch_dtype == torch.bfloat16
    assert tiny_config(tmp_path, tiny_corpus).teacher_torch_dtype == torch.float32
    assert tiny_config(tmp_path, tiny_corpus, teacher_dtype="float16").teacher_torch_dtype == torch.float16
    with pytest.raises(ConfigError, match="teacher_dtype"):
        tiny_config(tmp_path, tiny_corpus, teacher_dtype="int8")


def test_max_length_cuts_both_sides_and_the_cut_is_counted(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedDataset, encode_pair, load_record_image
    from evl_ecg.train.pipeline import image_loader, load_training_records

    cfg = tiny_config(tmp_path / "run", tiny_corpus)
    records = load_training_records(cfg)
    student, teacher = load_adapter(tiny_checkpoints["student"]), load_adapter(tiny_checkpoints["teacher"])
    record = records[0]
    image = load_record_image(record, image_loader(cfg))
    full = encode_pair(record, image, student, teacher)
    n_s, n_t = (int(full[side]["input_ids"].shape[0]) for side in ("student", "teacher"))
    last_image = {
        side: int((full[side]["input_ids"] == a.image_token_id).nonzero()[-1])
        for side, a in (("student", student), ("teacher", teacher))
    }
    # each side cut on its own: max_length 3 tokens past the side's last visual token
    for side, adapter in (("student", student), ("teacher", teacher)):
        limit = last_image[side] + 3
        assert limit < int(full[side]["input_ids"].shape[0])
        sample = adapter.encode(record, image)
        assert adapter.truncate(sample, limit, what="r") is True
        for key in ("input_ids", "labels", "attention_mask", "token_offsets"):
            assert torch.equal(sample[key], full[side][key][:limit]), (side, key)
        assert torch.equal(sample["pixel_values"], full[side]["pixel_values"])  # the image stays whole
    assert encode_pair(record, image, student, teacher, max_length=max(n_s, n_t))["truncated"] == [0, 0]
    limit = last_image["teacher"] + 3  # the teacher's 292 visual tokens: longer than any student sample here
    cut = encode_pair(record, image, student, teacher, max_length=limit)
    assert cut["truncated"] == [int(n_s > limit), 1]
    with pytest.raises(ValueError, match=r"record .*\(teacher\).*visual tokens"):
        encode_pair(record, image, student, teacher, max_length=last_image["teacher"])
    # a run logs the cumulative count of cut samples per side (2 steps x 2 samples)
    longer = [
        r for r in records if student.encode(r, load_record_image(r, image_loader(cfg)))["input_ids"].shape[0] > limit
    ]
    run_cfg = tiny_config(
        tmp_path / "kd",
        tiny_corpus,
        phase="kd",
        method="vanilla-kl",
        max_steps=2,
        max_length=limit,
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
    )
    from evl_ecg.train.pipeline import run

    result = run(run_cfg)
    logged = [h for h in result.log_history if "data/truncated_teacher" in h]
    assert logged and logged[-1]["data/truncated_teacher"] == 4
    assert logged[-1]["data/truncated_student"] == 0 if not longer else logged[-1]["data/truncated_student"] <= 4
    assert PairedDataset(records, image_loader(cfg), None, student, max_length=7).max_length == 7


def test_teacher_family_is_checked_against_the_checkpoint(tiny_checkpoints):
    from evl_ecg.models import ModelLoadError, load_adapter

    assert load_adapter(tiny_checkpoints["teacher"], family="llava").family == "llava"
    assert load_adapter(tiny_checkpoints["teacher"], family="auto").family == "llava"
    with pytest.raises(ModelLoadError, match="'llava' checkpoint, not the 'pulse' family"):
        load_adapter(tiny_checkpoints["teacher"], family="pulse")


def test_activation_checkpointing_reaches_the_student_without_the_deprecated_path(tiny_checkpoints):
    """The Trainer calls ``activation_checkpointing_enable`` on a module that has it (the other name is deprecated
    and "will no longer be called in v6")."""
    from evl_ecg.models import load_adapter
    from evl_ecg.train.trainer import DistillModule

    module = DistillModule(load_adapter(tiny_checkpoints["student"]), torch.nn.Module())
    assert hasattr(module, "activation_checkpointing_enable")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.activation_checkpointing_enable()
    assert module.student.is_gradient_checkpointing
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("teacher_dtype", ["auto", "float32", "bfloat16", "float16"])
def test_every_precision_combination_a_config_allows_takes_a_finite_step(
    precision, teacher_dtype, tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    """bf16 or fp16 autocast (torch runs both on a CPU) or none, with each teacher dtype: one EVL-ECG step runs with a
    finite loss and float32 student weights; an unknown teacher dtype is refused (above)."""
    student = tiny_checkpoints["student"]
    settings = {"bf16": precision == "bf16", "fp16": precision == "fp16", "teacher_dtype": teacher_dtype}
    trainer, module, teacher, _spy = _kd_trainer(
        _one_kd_step(tiny_config, tmp_path, tiny_corpus, student, tiny_checkpoints, **settings)
    )
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    assert {p.dtype for p in module.student.parameters()} == {torch.float32}
    auto = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    want = auto if teacher_dtype == "auto" else getattr(torch, teacher_dtype)
    assert {p.dtype for p in teacher.model.parameters()} == {want}
