"""A loss declares what the toolkit needs of it (its teacher fields, its unit, its options), and nothing else has
to be edited: a loss registered in this file alone is cached, trained from the cache and trained live, with the
same loss and gradients both ways."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from evl_ecg.distill.registry import (
    Denominators,
    DistillLoss,
    LossContext,
    LossOutput,
    Unit,
    build_loss,
    register,
    register_unit,
    registered,
    units,
    unregister,
    unregister_unit,
)
from evl_ecg.outputs import SideOutputs
from evl_ecg.train.teacher_cache import TeacherCacheError, spec_fields

NAME = "test_norm_gap"


class NormGapLoss(DistillLoss):
    """Per sample, the squared gap between the norms of the two sides' mean last hidden state (valid positions),
    times ``scale``; a mean over samples. Reads the teacher's hidden states only."""

    unit = "samples"
    teacher_fields = frozenset({"hidden"})

    def __init__(self, *, context: LossContext, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, student: SideOutputs, teacher: SideOutputs | None, denominators: Any = None) -> LossOutput:
        def norms(side: SideOutputs) -> torch.Tensor:
            mask = side.attention_mask.unsqueeze(-1).to(side.hidden.dtype)
            return ((side.hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).norm(dim=-1)

        gap = (norms(student) - norms(teacher).to(student.hidden.dtype)) ** 2
        n = denominators.get("samples", float(gap.numel())) if denominators is not None else float(gap.numel())
        loss = self.scale * gap.sum() / n
        return LossOutput(loss, {"loss": loss.detach()})


class Undeclared(NormGapLoss):
    teacher_fields = None


@pytest.fixture
def norm_gap():
    register(NAME)(NormGapLoss)
    yield NormGapLoss
    unregister(NAME)


def test_every_registered_loss_declares_a_known_unit_and_its_teacher_fields():
    import evl_ecg.distill  # noqa: F401  (registers the built-in losses)

    for name, cls in registered().items():
        assert cls.unit in units(), name
        if cls.needs_teacher:
            reads = cls.teacher_reads(cls.defaults())
            assert reads is not None, f"{name} does not declare its teacher fields"
    # the options each built-in declares are its constructor's, context aside
    mhca = registered()["mhca"]
    assert "heads" in mhca.option_names() and "context" not in mhca.option_names()
    assert registered()["tinybert"].teacher_reads({"pred_weight": 0.0}) == {"all_hidden", "attentions"}
    assert registered()["tinybert"].teacher_reads({"pred_weight": 1.0}) == {"all_hidden", "attentions", "logits"}
    assert registered()["emkd"].teacher_reads({"rld_weight": 0.5}) == {"hidden", "lm_head_weight", "logits"}
    assert {n for n, u in units().items() if u.positions} == {"student_positions", "student_pairs"}


def test_a_unit_outside_the_known_ones_is_refused_at_registration():
    class Odd(NormGapLoss):
        unit = "tokens_of_the_moon"

    with pytest.raises(ValueError, match="unit 'tokens_of_the_moon'"):
        register("test_odd_unit")(Odd)
    assert "test_odd_unit" not in registered()


def test_a_new_unit_brings_its_count_and_the_trainer_counts_it():
    """A plugin loss that averages over something new registers the unit with its count; the trainer's
    denominators then hold it (counted by hand here: supervised tokens of the first half of each sequence)."""
    from evl_ecg.train.trainer import count_denominators

    def early(batch, positions):
        half = batch["labels"].shape[1] // 2
        return (batch["labels"][:, 1:half] != -100).sum()

    register_unit(Unit("test_early_tokens", early, help="supervised tokens in the first half"))
    try:
        labels = torch.tensor([[-100, 5, 6, -100, 7, 8], [-100, -100, 1, 2, 3, 4]])
        counts = count_denominators([{"labels": labels, "attention_mask": torch.ones_like(labels)}])
        assert counts["test_early_tokens"] == 2 + 1 and counts["response_tokens"] == 4 + 4
        assert Denominators(test_early_tokens=3.0).get("test_early_tokens", 1.0) == 3.0
        with pytest.raises(ValueError, match="unknown unit"):
            Denominators(moon_tokens=1.0)
        with pytest.raises(ValueError, match="already registered"):
            register_unit(Unit("response_tokens", early))
    finally:
        unregister_unit("test_early_tokens")
    assert "test_early_tokens" not in units() and "response_tokens" in units()


def test_the_new_loss_declares_its_options_and_fields(norm_gap):
    assert norm_gap.option_names() == {"scale"} and norm_gap.defaults() == {"scale": 1.0}
    spec = {"alpha": 0.5, "terms": {NAME: {"weight": 1.0, "scale": 2.0}}}
    assert spec_fields(spec) == {"hidden"}
    assert build_loss(NAME, scale=3.0).scale == 3.0


def test_an_undeclared_loss_is_refused_by_the_cache_by_name():
    register("test_undeclared")(Undeclared)
    try:
        with pytest.raises(TeacherCacheError, match="'test_undeclared' does not declare"):
            spec_fields({"alpha": 0.5, "terms": {"test_undeclared": {"weight": 1.0}}})
    finally:
        unregister("test_undeclared")


def test_the_new_loss_trains_from_the_cache_as_from_the_live_teacher(
    norm_gap, tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    """Through EvlTrainer (its collator, denominators and compute_loss): one step with the live teacher and one
    from a cache built for this loss alone give the same loss and the same gradients."""
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import build_objective, image_loader, load_training_records
    from evl_ecg.train.teacher_cache import open_or_build
    from evl_ecg.train.trainer import DistillModule, EvlTrainer

    cfg = tiny_config(
        tmp_path / "run",
        tiny_corpus,
        phase="kd",
        method="ot",
        objective={"terms": {"ot": None, NAME: {"weight": 1.0, "scale": 0.5}}},
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
        teacher_cache=str(tmp_path / "cache"),
        max_train_samples=6,
        per_device_train_batch_size=3,
    )
    records, loader = load_training_records(cfg), image_loader(cfg)
    cache = open_or_build(cfg, records, loader, log=None)
    assert cache.fields == {"hidden"}
    student, teacher = load_adapter(tiny_checkpoints["student"]), load_adapter(tiny_checkpoints["teacher"])

    def one_step(live: bool):
        side = teacher if live else cache  # one teacher side, held by the dataset, the collator and the trainer
        objective = build_objective(cfg, student, side)
        assert list(objective.terms) == [NAME]
        module = DistillModule(student, objective, requires=objective.requires)
        dataset = PairedDataset(records, loader, side, student)
        trainer = EvlTrainer(
            model=module, args=cfg, train_dataset=dataset, data_collator=PairedCollator(student, side), teacher=side
        )
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        denominators = trainer._get_num_items_in_batch([inputs], trainer.args.device)
        module.zero_grad(set_to_none=True)
        loss, out = trainer.compute_loss(module, inputs, return_outputs=True, num_items_in_batch=denominators)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None}
        return float(out.logs[f"loss/{NAME}"]), grads

    live_loss, live_grads = one_step(live=True)
    cached_loss, cached_grads = one_step(live=False)
    assert live_loss > 0 and cached_loss == pytest.approx(live_loss, rel=1e-6)
    assert live_grads.keys() == cached_grads.keys() and live_grads
    for name, grad in live_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_new_loss_s_preset_joins_the_study_and_its_cache_without_an_edit_elsewhere(norm_gap):
    """The third place a new loss used to fail: the study's method list. A preset registered here is a study method,
    served by the shared teacher cache because the loss declares what it reads; TinyBERT's attention maps stay live."""
    from evl_ecg.distill.presets import register_preset, unregister_preset
    from evl_ecg.experiments.study import StudySettings, cached, known_methods

    register_preset("test-norm-gap", {"alpha": 0.5, "terms": {NAME: {"weight": 1.0}}})
    try:
        assert "test-norm-gap" in known_methods()
        assert StudySettings(methods=("control", "test-norm-gap")).methods == ("control", "test-norm-gap")
        assert cached("test-norm-gap") and cached("evl-ecg") and not cached("tinybert") and not cached("control")
        with pytest.raises(ValueError, match="already exists"):
            register_preset("evl-ecg", {"alpha": 0.5, "terms": {}})
    finally:
        unregister_preset("test-norm-gap")
    assert "test-norm-gap" not in known_methods()
