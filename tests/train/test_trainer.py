"""The Trainer subclass: denominators, optimizer groups, every method's KD step, exports and provenance."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evl_ecg.distill.presets import list_presets
from evl_ecg.train.trainer import count_denominators


def test_denominators_count_every_unit_by_hand():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    counts = count_denominators([{"labels": labels, "attention_mask": mask}])
    # response tokens are counted on the shifted labels (labels[:, 1:]): {5, 6} and {7, 8, 9, 4}
    assert counts["response_tokens"] == 6
    assert counts["student_positions"] == 4 + 5
    assert counts["student_pairs"] == 4 * 3 + 5 * 4
    assert counts["samples"] == 2
    resp = count_denominators([{"labels": labels, "attention_mask": mask}], positions="response")
    assert resp["student_positions"] == 2 + 4 and resp["student_pairs"] == 2 * 1 + 4 * 3


def test_denominators_add_over_micro_batches():
    labels = torch.tensor([[-100, 1, 2], [-100, -100, 3]])
    mask = torch.ones(2, 3, dtype=torch.long)
    whole = count_denominators([{"labels": labels, "attention_mask": mask}])
    parts = count_denominators(
        [{"labels": labels[:1], "attention_mask": mask[:1]}, {"labels": labels[1:], "attention_mask": mask[1:]}]
    )
    assert whole == parts


def test_sft_run_exports_a_plain_student_and_provenance(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.models import load_adapter
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(tmp_path / "sft", tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]))
    result = run(cfg)
    losses = [h["loss/ce"] for h in result.log_history if "loss/ce" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    prov = json.loads((tmp_path / "sft" / "provenance.json").read_text())
    assert prov["config"]["phase"] == "sft" and prov["packages"]["torch"] and prov["data_manifest_sha256"]
    assert not list(result.student_dir.glob("objective*"))
    adapter = load_adapter(result.student_dir)  # reloads as a plain transformers checkpoint
    assert adapter.family == "qwen3_vl"


@pytest.mark.parametrize("method", sorted(list_presets()))
def test_every_registered_method_runs_a_kd_step(method, tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(
        tmp_path / method,
        tiny_corpus,
        phase="kd",
        method=method,
        max_steps=1,
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
    )
    result = run(cfg)
    totals = [h["loss/total"] for h in result.log_history if "loss/total" in h]
    assert totals and all(math.isfinite(x) for x in totals)
    assert (result.student_dir / "config.json").exists()


def test_objective_modules_train_at_the_projector_learning_rate(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.data.paired import PairedCollator, PairedDataset
    from evl_ecg.models import load_adapter
    from evl_ecg.train.pipeline import build_objective, image_loader, load_training_records
    from evl_ecg.train.trainer import DistillModule, EvlTrainer

    cfg = tiny_config(
        tmp_path / "groups",
        tiny_corpus,
        phase="kd",
        learning_rate=1e-4,
        projector_lr=7e-4,
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
    )
    student, teacher = load_adapter(cfg.student), load_adapter(cfg.teacher)
    objective = build_objective(cfg, student, teacher)
    module = DistillModule(student, objective, needs=objective.requires)
    records = load_training_records(cfg)
    trainer = EvlTrainer(
        model=module,
        args=cfg,
        train_dataset=PairedDataset(records, image_loader(cfg), teacher, student),
        data_collator=PairedCollator(student, teacher),
        teacher=teacher,
    )
    opt = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in module.named_parameters():
        expected = 7e-4 if name.startswith("objective.") or "merger" in name else 1e-4
        assert lr_of[id(p)] == expected, name
    assert any(n.startswith("objective.") for n, _ in module.named_parameters())
    assert all(not p.requires_grad for p in teacher.model.parameters())
