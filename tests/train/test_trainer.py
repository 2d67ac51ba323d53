"""The Trainer subclass: denominators, optimizer groups, every method's KD step, exports and provenance."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from evl_ecg.distill.presets import list_presets
from evl_ecg.distill.registry import LossOutput
from evl_ecg.train.trainer import EvlTrainer, count_denominators


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


def test_logged_terms_are_the_means_over_micro_steps_and_stay_on_the_device_until_logged() -> None:
    state = SimpleNamespace(_term_sums=defaultdict(float), _term_count=0, _tokens_seen=0, _t0=time.perf_counter())
    steps = [({"loss": torch.tensor(1.0), "ot/iterations": 5}, 3), ({"loss": torch.tensor(4.0), "ot/iterations": 8}, 2)]
    for logs, tokens in steps:
        mask = torch.ones(1, tokens, dtype=torch.long)
        EvlTrainer._record(state, LossOutput(loss=torch.tensor(0.0), logs=logs), {"student": {"attention_mask": mask}})
    assert torch.is_tensor(state._term_sums["loss"]) and torch.is_tensor(state._tokens_seen)  # no sync per step
    means = EvlTrainer._term_means(state)
    assert means["loss"] == 2.5 and means["ot/iterations"] == 6.5
    assert means["throughput/student_tokens_per_s"] > 0
    assert state._term_count == 0 and not state._term_sums and EvlTrainer._term_means(state) == {}


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
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedCollator, PairedDataset
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
    module = DistillModule(student, objective, requires=objective.requires)
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


def test_hidden_positions_reach_the_hidden_state_losses_or_are_refused(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
) -> None:
    """The trainer counts MHCA/relation denominators over hidden_positions: the terms must average over the same."""
    from evl_ecg.models import load_adapter
    from evl_ecg.train.pipeline import build_objective

    def config(**kw):
        paths = {"student": str(tiny_checkpoints["student"]), "teacher": str(tiny_checkpoints["teacher"])}
        return tiny_config(tmp_path, tiny_corpus, phase="kd", **paths, **kw)

    cfg = config(hidden_positions="response")
    student, teacher = load_adapter(cfg.student), load_adapter(cfg.teacher)
    objective = build_objective(cfg, student, teacher)
    assert objective.terms["mhca"].positions == "response" and objective.terms["relation"].positions == "response"
    assert objective.terms["mhca"].teacher_positions == "response"
    dropped = build_objective(config(objective={"terms": {"relation": None}}), student, teacher)
    assert set(dropped.terms) == {"mhca", "ot"}  # a removed term stays removed
    mismatch = config(hidden_positions="response", objective={"terms": {"mhca": {"positions": "all"}}})
    with pytest.raises(ValueError, match="'mhca' averages over positions='all' but hidden_positions='response'"):
        build_objective(mismatch, student, teacher)
    with pytest.raises(ValueError, match="'tinybert'"):  # no positions option: it averages over all positions
        build_objective(config(method="tinybert", hidden_positions="response"), student, teacher)
    aligned = config(
        method="tinybert", hidden_positions="response", objective={"terms": {"tinybert": {"hidden_align": "response"}}}
    )
    assert build_objective(aligned, student, teacher).terms["tinybert"].unit == "response_tokens"  # counts no positions
    rkd = build_objective(config(method="rkd", hidden_positions="response"), student, teacher)
    assert rkd.terms["rkd"].positions == "all"  # per-sample unit: hidden_positions is not its business


def test_text_positions_are_counted_as_the_adapter_marks_them(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import image_loader, load_training_records

    cfg = tiny_config(tmp_path, tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]))
    student = load_adapter(cfg.student)
    dataset = PairedDataset(load_training_records(cfg), image_loader(cfg), None, student)
    batch = PairedCollator(student)([dataset[i] for i in range(3)])["student"]
    with torch.no_grad():
        marked = student.forward(batch).position_mask("text")
    counts = count_denominators([batch], "text", student.image_token_id)
    n = marked.sum(1).to(torch.float64)
    assert counts["student_positions"] == float(n.sum()) < float(batch["attention_mask"].sum())
    assert counts["student_pairs"] == float((n * (n - 1)).sum())
    with pytest.raises(ValueError, match="image_token_id"):
        count_denominators([batch], "text")


def test_export_writes_a_model_card_that_evaluation_completes(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.eval.run import evaluate_model
    from evl_ecg.models.card import NOT_A_DEVICE, has_model_card
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(
        tmp_path / "card", tiny_corpus, phase="sft", max_steps=1, student=str(tiny_checkpoints["student"])
    )
    student_dir = run(cfg).student_dir
    card = (student_dir / "README.md").read_text()
    assert has_model_card(student_dir) and NOT_A_DEVICE in card
    assert "Qwen3VLForConditionalGeneration" in card and str(cfg.train_file) in card
    assert "Not evaluated yet" in card and "Trained and scored on **synthetic** ECGs" in card  # from the manifest
    doc = evaluate_model(
        student_dir,
        tiny_corpus / "bench",
        tmp_path / "eval",
        subsets=["ptb-test"],
        max_new_tokens=4,
        likelihood=False,
        image_root=tiny_corpus / "images",
        progress=False,
        update_card=True,  # an evaluation writes into the model folder only when asked
    )
    card = (student_dir / "README.md").read_text()
    assert "Not evaluated yet" not in card and NOT_A_DEVICE in card
    strict = next(r for r in doc["results"] if r["scorer"] == "strict")
    assert f"| ptb-test | strict | AUC {strict['metrics']['AUC']}" in card


def test_frozen_vision_tower_stays_fixed_and_in_eval_mode(tmp_path, tiny_corpus, tiny_config):
    import torch

    from evl_ecg.data.records import load_records
    from evl_ecg.models.tiny import build_tiny_teacher
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train.pipeline import freeze_vision_encoder
    from evl_ecg.train.trainer import DistillModule

    teacher = build_tiny_teacher(corpus_from_records(load_records(tiny_corpus / "train.json")), seed=0)
    frozen = freeze_vision_encoder(teacher)
    tower = teacher.model.model.vision_tower
    assert frozen == [tower] and not any(p.requires_grad for p in tower.parameters())
    assert all(p.requires_grad for p in teacher.model.model.multi_modal_projector.parameters())
    module = DistillModule(teacher, torch.nn.Identity(), frozen=frozen).train()
    assert module.training and module.student.training and not tower.training


def test_frozen_projector_is_left_out_of_training(tmp_path, tiny_corpus, tiny_config):
    """``freeze_projector``: a teacher run trains its language model only; the projector's weights after two steps
    are the ones it started with, bit for bit, and the language model's moved."""
    from evl_ecg.data.records import load_records
    from evl_ecg.models import load_adapter
    from evl_ecg.models.tiny import build_tiny_student
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train import pipeline
    from evl_ecg.train.pipeline import freeze_projector

    student = build_tiny_student(corpus_from_records(load_records(tiny_corpus / "train.json")), seed=0)
    merger = student.model.model.visual.merger
    assert freeze_projector(student) == [merger] and not any(p.requires_grad for p in merger.parameters())
    settings = dict(phase="teacher", max_steps=2, freeze_vision=True, freeze_projector=True)
    cfg = tiny_config(tmp_path / "run", tiny_corpus, **settings)
    start = tmp_path / "start"
    pipeline._student_adapter(cfg, pipeline.load_training_records(cfg)).save_pretrained(start)
    result = pipeline.run(tiny_config(tmp_path / "run", tiny_corpus, student=str(start), **settings))
    before, after = load_adapter(start).model.state_dict(), load_adapter(result.student_dir).model.state_dict()
    projector = [k for k in before if "multi_modal_projector" in k]
    language = [k for k in before if "language_model" in k]
    assert projector and all(torch.equal(before[k], after[k]) for k in projector)
    assert any(not torch.equal(before[k], after[k]) for k in language)


def test_train_command_defaults_to_the_tiny_config(tmp_path, tiny_corpus, tiny_checkpoints):
    """`evl-ecg train sft` without --config runs configs/tiny/sft.yaml (its projector_lr, schedule, seed)."""
    import yaml
    from typer.testing import CliRunner

    from evl_ecg.cli import app
    from evl_ecg.train.config import tiny_config_path

    out = tmp_path / "cli-sft"
    args = ["train", "sft", "--data", str(tiny_corpus / "train.json"), "--out", str(out)]
    args += ["--student", str(tiny_checkpoints["student"])]
    args += ["--set", "max_steps=1", "--set", "save_strategy=no", "--set", "disable_tqdm=true"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    used = json.loads((out / "provenance.json").read_text())["config"]
    tiny = yaml.safe_load(tiny_config_path("sft").read_text())
    assert used["projector_lr"] == tiny["projector_lr"] != 5e-4  # 5e-4: the dataclass default
    assert used["lr_scheduler_type"] == tiny["lr_scheduler_type"] and used["max_steps"] == 1


def test_overrides_and_yaml_keep_no_as_a_strategy_not_a_boolean(tmp_path):
    from evl_ecg.train.config import load_config

    cfg = load_config(
        None, ["save_strategy=no", "bf16=false", "learning_rate=2e-4"], output_dir=str(tmp_path), use_cpu=True
    )
    assert cfg.save_strategy == "no" and cfg.bf16 is False and cfg.learning_rate == 2e-4
    path = tmp_path / "c.yaml"
    path.write_text("save_strategy: no\nlogging_strategy: no\nuse_cpu: true\n")
    cfg = load_config(path, output_dir=str(tmp_path))
    assert cfg.save_strategy == "no" and cfg.logging_strategy == "no"
    with pytest.raises(ValueError, match="c.yaml: unknown config key"):
        path.write_text("not_a_key: 1\n")
        load_config(path)


def test_label_smoothing_is_the_ce_terms_option_in_every_phase(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    """The label-smoothing control: CE's own option, read in phase sft as in kd; the Trainer's
    label_smoothing_factor (which our compute_loss would silently skip) is refused, naming the option to use."""
    from evl_ecg.models import load_adapter
    from evl_ecg.train.config import ConfigError
    from evl_ecg.train.pipeline import build_objective

    student = load_adapter(str(tiny_checkpoints["student"]))
    sft = tiny_config(tmp_path, tiny_corpus, phase="sft", objective={"ce": {"label_smoothing": 0.1}})
    assert build_objective(sft, student, None).ce.label_smoothing == 0.1
    assert build_objective(tiny_config(tmp_path, tiny_corpus, phase="sft"), student, None).ce.label_smoothing == 0.0
    with pytest.raises(ValueError, match=r"objective may set 'ce' only, not \['terms'\]"):
        build_objective(tiny_config(tmp_path, tiny_corpus, phase="sft", objective={"terms": {}}), student, None)
    with pytest.raises(ConfigError, match=r"label_smoothing_factor.*objective=\{ce: \{label_smoothing: 0.1\}\}"):
        tiny_config(tmp_path, tiny_corpus, phase="sft", label_smoothing_factor=0.1)


def test_keeping_the_best_point_needs_a_learning_curve(tmp_path, tiny_corpus, tiny_config):
    from evl_ecg.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"curve_keep_best.*curve_every > 0"):
        tiny_config(tmp_path, tiny_corpus, phase="sft", curve_keep_best=True)
