"""Hostile input and faults in `train`, `distill` and the CLI: one clear line and a non-zero exit, never a wrong result.

Config values of the wrong type or out of range, a model folder of another model, the same model as student and
teacher, a diverging run, a checkpoint cut short by a kill, an unwritable run directory, and any unexpected exception
(one line unless ``--debug``). Each case runs in-process on the tiny corpus, a few steps at most.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from evl_ecg.cli import app

TINY = ["--set", "max_steps=1", "--set", "save_strategy=no", "--set", "disable_tqdm=true"]
TINY += ["--set", "per_device_train_batch_size=2", "--set", "logging_steps=1"]


def _cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def _assert_one_error(result, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one ``error:`` line, holding every fragment; returns that line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = _errors(result)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# ---- 4. config values against their declared types and ranges ------------------------------------------------
CONFIG_CASES = {
    "negative-max-train-samples": ("max_train_samples: -1\n", "max_train_samples: must be >= 1, got -1"),
    "zero-max-steps": ("max_steps: 0\n", "max_steps: must be -1 (train num_train_epochs) or >= 1, got 0"),
    "string-as-bool": ('freeze_vision: "yes please"\n', "freeze_vision: expected true or false, got 'yes please'"),
    "word-as-int": ('max_steps: "two"\n', "max_steps: expected an integer, got 'two'"),
    "fraction-as-int": ("max_steps: 2.5\n", "max_steps: expected an integer, got 2.5"),
    "word-as-seed": ('seed: "abcd"\n', "seed: expected an integer, got 'abcd'"),
    "zero-accumulation": ("gradient_accumulation_steps: 0\n", "gradient_accumulation_steps: must be >= 1, got 0"),
    "number-as-objective": ("objective: 5\n", "objective: expected a mapping or null, got 5"),
    "option-typo": ("max_step: 2\n", "unknown config key(s) max_step (did you mean max_steps?)"),
    "yaml-syntax": ("max_steps: [1\n", "not valid YAML (line 2, column 1"),
    "not-a-mapping": ("- 1\n- 2\n", "a config file must be a mapping of keys to values, got list"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_bad_config_value_is_one_line_naming_the_file_and_option(case, tmp_path, tiny_corpus):
    text, message = CONFIG_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = _cli("train", "sft", "--config", path, "--data", tiny_corpus / "train.json", "--out", tmp_path / "run")
    _assert_one_error(result, f"{path}: {message}")
    assert not (tmp_path / "run").exists()  # refused before anything is written


OBJECTIVE_CASES = {
    "unknown-term": (
        "objective: {terms: {foo: {weight: 1}}}\n",
        "objective: unknown term 'foo'; registered terms: ce, ",
    ),
    "term-option-typo": (
        "objective: {terms: {ot: {wieght: 0.1}}}\n",
        "objective: terms.ot: unknown option 'wieght' (did you mean 'weight'?)",
    ),
    "term-option-type": (
        "objective: {terms: {ot: {epsilon: big}}}\n",
        "objective: terms.ot.epsilon: expected a number",
    ),
    "negative-weight": ("objective: {terms: {ot: {weight: -1}}}\n", "objective: terms.ot.weight: expected a finite"),
    "alpha-out-of-range": ("objective: {alpha: 2}\n", "objective: alpha must be in [0, 1], got 2"),
    "unknown-method": ("method: evl\n", "method: unknown method 'evl'; choose one of "),
}


@pytest.mark.parametrize("case", sorted(OBJECTIVE_CASES))
def test_a_bad_objective_is_one_line_before_any_model_loads(case, tmp_path, tiny_corpus, tiny_checkpoints):
    text, message = OBJECTIVE_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text("phase: kd\n" + text)
    result = _cli(
        "distill",
        "--config",
        path,
        "--data",
        tiny_corpus / "train.json",
        "--student",
        tiny_checkpoints["student"],
        "--teacher",
        tiny_checkpoints["teacher"],
        "--out",
        tmp_path / "run",
        *TINY,
    )
    _assert_one_error(result, f"{path}: {message}")


def test_a_config_path_that_is_a_directory_or_absent_is_one_line(tmp_path, tiny_corpus):
    result = _cli("train", "sft", "--config", tmp_path, "--data", tiny_corpus / "train.json")
    _assert_one_error(result, f"{tmp_path}: is a folder, not a YAML config file")
    result = _cli("train", "sft", "--config", tmp_path / "absent.yaml", "--data", tiny_corpus / "train.json")
    _assert_one_error(result, f"{tmp_path / 'absent.yaml'}: YAML config file not found")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_steps=abc", "--set max_steps=abc: expected an integer, got 'abc'"),
        ("seed=-1", "--set seed=-1: must be in [0, 2**32), got -1"),
        ("learning_rate=fast", "--set learning_rate=fast: expected a number, got 'fast'"),
        ("objective={terms: {ot: {", "--set objective={terms: {ot: {: the value is not valid YAML"),
        ("wieght=1", "--set wieght=1: unknown config key(s) wieght"),
        ("max_steps", "--set max_steps: an override must look like key=value"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(setting, message, tmp_path, tiny_corpus, tiny_checkpoints):
    args = ["--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"], "--out", tmp_path, *TINY]
    result = _cli("train", "sft", *args, "--set", setting)
    _assert_one_error(result, message)


def test_values_of_the_right_type_still_load(tmp_path):
    from evl_ecg.train.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("learning_rate: 2e-4\nmax_steps: 3.0\nmax_train_samples: 4\nfreeze_vision: true\nseed: 7\n")
    cfg = load_config(path, output_dir=str(tmp_path), use_cpu=True)
    assert cfg.learning_rate == 2e-4 and cfg.max_steps == 3 and isinstance(cfg.max_steps, int)
    assert cfg.max_train_samples == 4 and cfg.freeze_vision is True and cfg.seed == 7


# ---- 2. distill: the method of the config, the same model twice, a student larger than its teacher -------------
@pytest.fixture
def captured_run(monkeypatch):
    """Replace the training run by one that records its config (the CLI's choice of settings is under test)."""
    from evl_ecg.train import pipeline

    seen: list = []

    def fake_run(cfg, **_):
        seen.append(cfg)
        return pipeline.RunResult(Path(cfg.output_dir), Path(cfg.output_dir) / "student", objective=cfg.method)

    monkeypatch.setattr(pipeline, "run", fake_run)
    return seen


@pytest.mark.parametrize(
    ("yaml_method", "args", "expected"),
    [
        ("uld", [], "uld"),  # the config's method, not the option's default
        (None, ["--set", "method=uld"], "uld"),
        ("uld", ["--set", "method=rkd"], "rkd"),  # --set over the file
        ("uld", ["--method", "ot", "--set", "method=rkd"], "ot"),  # the option, when given, over both
        (None, [], "evl-ecg"),  # the tiny kd config's
    ],
)
def test_distill_takes_the_method_of_the_config_unless_the_option_is_given(
    yaml_method, args, expected, tmp_path, tiny_corpus, tiny_checkpoints, captured_run
):
    from evl_ecg.train.config import tiny_config_path

    config = tiny_config_path("kd")
    if yaml_method is not None:
        config = tmp_path / "kd.yaml"
        config.write_text(tiny_config_path("kd").read_text() + f"\nmethod: {yaml_method}\n")
    student, teacher = tiny_checkpoints["student"], tiny_checkpoints["teacher"]
    result = _cli("distill", "--config", config, "--student", student, "--teacher", teacher, "--out", tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert [cfg.method for cfg in captured_run] == [expected]


def test_distill_refuses_the_same_model_as_student_and_teacher(tmp_path, tiny_corpus, tiny_checkpoints):
    student = tiny_checkpoints["student"]
    link = tmp_path / "also-the-student"
    link.symlink_to(student, target_is_directory=True)
    for teacher in (student, Path(f"{student}/"), link):
        result = _cli(
            "distill", "--data", tiny_corpus / "train.json", "--student", student, "--teacher", teacher,
            "--out", tmp_path / "run", *TINY,
        )  # fmt: skip
        _assert_one_error(result, "--student and --teacher are the same model folder")
    assert not (tmp_path / "run").exists()


def test_distill_refuses_a_copy_of_the_student_as_teacher(tmp_path, tiny_corpus, tiny_checkpoints, mixed_folder):
    student = tiny_checkpoints["student"]
    copy = Path(shutil.copytree(student, tmp_path / "copy"))
    result = _cli(
        "distill", "--data", tiny_corpus / "train.json", "--student", student, "--teacher", copy,
        "--out", tmp_path / "run", *TINY,
    )  # fmt: skip
    _assert_one_error(result, f"--student {student} and --teacher {copy} hold the same weights (a copy of one model)")
    from evl_ecg.train.pipeline import same_weights

    assert same_weights(student, copy) and not same_weights(student, tiny_checkpoints["teacher"])
    assert not same_weights(student, mixed_folder)  # same file name and folder layout, other weights


def test_distill_warns_once_when_the_student_is_larger_than_the_teacher(
    tmp_path, tiny_corpus, tiny_checkpoints, monkeypatch
):
    from evl_ecg.train import pipeline

    def stop(_config):
        raise ValueError("stopped after the checks")

    monkeypatch.setattr(pipeline, "load_training_records", stop)
    small, large = tiny_checkpoints["student"], tiny_checkpoints["teacher"]
    for student, teacher, warned in ((large, small, True), (small, large, False)):
        result = _cli(
            "distill", "--data", tiny_corpus / "train.json", "--student", student, "--teacher", teacher,
            "--out", tmp_path / "run", *TINY,
        )  # fmt: skip
        _assert_one_error(result, "stopped after the checks")
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        if warned:
            assert len(warnings) == 1 and "is larger than the teacher" in warnings[0] and "swapped" in warnings[0]
            assert str(student) in warnings[0] and str(teacher) in warnings[0]
        else:
            assert warnings == []


# ---- 1. / 6. a model folder of another model, or broken, in every command that loads one ---------------------
@pytest.fixture
def mixed_folder(tmp_path, tiny_checkpoints) -> Path:
    """The tiny student's folder holding weights of a teacher-like model (the tiny teacher's, one of them moved)."""
    from safetensors.torch import save_file

    folder = Path(shutil.copytree(tiny_checkpoints["student"], tmp_path / "mixed"))
    state = load_file(str(tiny_checkpoints["teacher"] / "model.safetensors"))
    first = sorted(state)[0]
    state[first] = state[first] + 1.0  # not a byte copy of the teacher: that is refused as such
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_weights_of_another_model_are_refused_by_train_sft(tmp_path, tiny_corpus, mixed_folder):
    result = _cli(
        "train", "sft", "--data", tiny_corpus / "train.json", "--student", mixed_folder, "--out", tmp_path / "r", *TINY
    )
    _assert_one_error(result, f"{mixed_folder}: the weights do not belong to the model config.json describes")
    assert not (tmp_path / "r" / "student").exists()


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_weights_of_another_model_are_refused_by_distill(side, tmp_path, tiny_corpus, tiny_checkpoints, mixed_folder):
    models = {"student": tiny_checkpoints["student"], "teacher": tiny_checkpoints["teacher"], side: mixed_folder}
    result = _cli(
        "distill", "--data", tiny_corpus / "train.json", "--student", models["student"],
        "--teacher", models["teacher"], "--out", tmp_path / "r", *TINY,
    )  # fmt: skip
    _assert_one_error(result, f"{mixed_folder}: the weights do not belong to the model config.json describes")
    assert not (tmp_path / "r" / "student").exists()


def test_weights_of_another_model_are_refused_by_eval_run(tmp_path, tiny_corpus, mixed_folder):
    args = ["--bench", tiny_corpus / "bench", "--out", tmp_path / "ev", "--max-new-tokens", 2, "--no-likelihood"]
    result = _cli("eval", "run", "--model", mixed_folder, *args)
    _assert_one_error(result, f"{mixed_folder}: the weights do not belong to the model config.json describes")


def test_a_corrupt_config_json_is_one_line_in_train_sft(tmp_path, tiny_corpus, tiny_checkpoints):
    folder = Path(shutil.copytree(tiny_checkpoints["student"], tmp_path / "corrupt"))
    (folder / "config.json").write_text("{")
    result = _cli("train", "sft", "--data", tiny_corpus / "train.json", "--student", folder, "--out", tmp_path / "r")
    _assert_one_error(result, f"{folder / 'config.json'}: the model configuration is not valid JSON")


# ---- 3. a diverging run stops and exports nothing -------------------------------------------------------------
def test_a_non_finite_loss_or_weights_stop_at_a_logging_step(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.train.pipeline import run
    from evl_ecg.train.trainer import NonFiniteError

    cfg = tiny_config(
        tmp_path / "nan", tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), learning_rate=1e9,
        max_steps=4,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"training diverged at step \d: .*learning_rate=1e\+09"):
        run(cfg)
    assert not (tmp_path / "nan" / "student").exists() and not (tmp_path / "nan" / "log_history.json").exists()


def test_non_finite_weights_are_never_written_to_a_checkpoint(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.train.pipeline import run
    from evl_ecg.train.trainer import NonFiniteError

    out = tmp_path / "nan"
    cfg = tiny_config(
        out, tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), learning_rate=1e9, max_steps=4,
        logging_strategy="no", save_strategy="steps", save_steps=1,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"before writing checkpoint-\d"):
        run(cfg)
    assert not (out / "student").exists()
    for checkpoint in out.glob("checkpoint-*"):
        assert all(bool(torch.isfinite(t).all()) for t in _weights(checkpoint / "student").values()), checkpoint


def test_non_finite_weights_are_never_exported_even_without_logging_steps(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    from evl_ecg.train.pipeline import run
    from evl_ecg.train.trainer import NonFiniteError

    cfg = tiny_config(
        tmp_path / "nan", tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), learning_rate=1e9,
        max_steps=3, logging_strategy="no",
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match="training diverged at step 3"):  # the end-of-training log, or export
        run(cfg)
    assert not (tmp_path / "nan" / "student").exists()


def test_the_export_checks_the_weights_itself(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, monkeypatch):
    from transformers import Trainer

    from evl_ecg.train.pipeline import run
    from evl_ecg.train.trainer import EvlTrainer, NonFiniteError

    monkeypatch.setattr(EvlTrainer, "log", Trainer.log)  # no check at the logging steps: the export's own remains
    cfg = tiny_config(
        tmp_path / "nan", tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), learning_rate=1e9,
        max_steps=3,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"step 3 \(before exporting the student\): .*non-finite weights"):
        run(cfg)
    assert not (tmp_path / "nan" / "student").exists()


def test_a_diverging_train_command_is_one_line_and_exit_1(tmp_path, tiny_corpus, tiny_checkpoints):
    out = tmp_path / "nan"
    result = _cli(
        "train", "sft", "--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"], "--out", out,
        *TINY, "--set", "max_steps=4", "--set", "learning_rate=1e9", "--set", "warmup_steps=0",
    )  # fmt: skip
    _assert_one_error(result, "training diverged at step", "without saving or exporting")
    assert not (out / "student").exists()


def test_finite_logs_and_weights_pass_the_check(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(tmp_path / "ok", tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]))
    result = run(cfg)
    assert all(math.isfinite(h["loss/total"]) for h in result.log_history if "loss/total" in h)
    assert (tmp_path / "ok" / "student" / "model.safetensors").exists()


# ---- 5. a checkpoint cut short by a kill is skipped on resume -------------------------------------------------
def _complete_checkpoint(path: Path, step: int) -> Path:
    (path / "student").mkdir(parents=True)
    (path / "student" / "model.safetensors").write_bytes(b"weights")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_resume_skips_incomplete_checkpoints_with_a_warning_naming_each(tmp_path):
    from evl_ecg.train.pipeline import last_complete_checkpoint

    good = _complete_checkpoint(tmp_path / "checkpoint-2", 2)
    _complete_checkpoint(tmp_path / "checkpoint-10", 10)
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()  # killed before the Trainer wrote its state
    _complete_checkpoint(tmp_path / "checkpoint-8", 8)
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # killed inside that write
    _complete_checkpoint(tmp_path / "checkpoint-6", 6)
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text("[]")
    (tmp_path / "checkpoint-4.tmp").mkdir()  # not a checkpoint name
    warned: list[str] = []
    assert last_complete_checkpoint(tmp_path, warned.append) == str(good)
    assert [w.split(" is incomplete")[0] for w in warned] == [str(tmp_path / f"checkpoint-{n}") for n in (10, 8, 6)]
    assert "no trainer_state.json" in warned[0] and "cut short" in warned[1] and "no trainer state" in warned[2]
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_a_run_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, capsys):
    from evl_ecg.train.pipeline import run

    out = tmp_path / "run"
    cfg = tiny_config(
        out, tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), save_strategy="steps",
        save_steps=1,
    )  # fmt: skip
    run(cfg)
    whole = _weights(out / "student")
    # what a SIGKILL while checkpoint-2 was written leaves: no trainer_state.json (written last), no export
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    shutil.rmtree(out / "student")
    capsys.readouterr()
    result = run(cfg)
    err = capsys.readouterr().err
    assert f"warning: {out / 'checkpoint-2'} is incomplete (no trainer_state.json" in err
    assert [h["step"] for h in result.log_history if "loss" in h] == [1, 2]  # resumed at step 1, step 2 redone
    assert (out / "checkpoint-2" / "trainer_state.json").exists()  # written again, whole
    resumed = _weights(out / "student")
    assert whole.keys() == resumed.keys()
    assert max(float((whole[k] - resumed[k]).abs().max()) for k in whole) <= 1e-6


KILL_SCRIPT = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from transformers import Trainer
from evl_ecg.train.config import load_config
from evl_ecg.train.pipeline import run

if os.environ.get("KILL_IN_SAVE"):
    original = Trainer._save_optimizer_and_scheduler
    def killed(self, output_dir):
        if self.state.global_step == int(os.environ["KILL_IN_SAVE"]):
            os.kill(os.getpid(), signal.SIGKILL)  # inside the checkpoint write, after the student weights
        return original(self, output_dir)
    Trainer._save_optimizer_and_scheduler = killed
run(load_config(None, **json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_then_the_same_command_resumes(tmp_path, tiny_corpus, tiny_checkpoints):
    cfg = dict(
        train_file=str(tiny_corpus / "train.json"), phase="sft", student=str(tiny_checkpoints["student"]),
        per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3, use_cpu=True, logging_steps=1,
        save_strategy="steps", save_steps=1, report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip

    def launch(out: Path, **env: str) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        args = [sys.executable, "-c", KILL_SCRIPT, json.dumps({**cfg, "output_dir": str(out)})]
        return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=600)

    whole = launch(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = launch(tmp_path / "killed", KILL_IN_SAVE="2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    torn = tmp_path / "killed" / "checkpoint-2"
    assert torn.is_dir() and not (torn / "trainer_state.json").exists()
    resumed = launch(tmp_path / "killed")  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"warning: {torn} is incomplete (no trainer_state.json" in resumed.stderr
    assert (torn / "trainer_state.json").exists()
    a, b = _weights(tmp_path / "whole" / "student"), _weights(tmp_path / "killed" / "student")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


# ---- 7. an unwritable or uncreatable run directory is one line, before any work -------------------------------
def test_a_run_directory_under_a_file_is_one_line(tmp_path, tiny_corpus, tiny_checkpoints):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"], *TINY]
    result = _cli("train", "sft", *args, "--out", blocker / "run")
    _assert_one_error(
        result, f"output_dir {blocker / 'run'}: cannot create or write the run directory (Not a directory"
    )
    result = _cli("distill", *args, "--teacher", tiny_checkpoints["teacher"], "--out", blocker)
    _assert_one_error(result, f"output_dir {blocker}: cannot create or write the run directory (File exists")
    assert blocker.read_text() == "not a folder"


def test_an_uncreatable_run_directory_is_one_line(tmp_path, tiny_corpus, tiny_checkpoints):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "at-all")
    args = ["--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"], *TINY]
    result = _cli("train", "sft", *args, "--out", dangling / "run")
    _assert_one_error(result, f"output_dir {dangling / 'run'}: cannot create or write the run directory (")


def test_a_read_only_run_directory_is_one_line(tmp_path, tiny_corpus, tiny_checkpoints, monkeypatch):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # as a read-only file system (or another user's folder) answers
        if str(self).startswith(str(read_only / "")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    args = ["--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"], *TINY]
    for command in (["train", "sft"], ["distill", "--teacher", tiny_checkpoints["teacher"]]):
        result = _cli(*command, *args, "--out", read_only / "run")
        _assert_one_error(result, f"output_dir {read_only / 'run'}: cannot create or write the run directory")
        assert "Permission denied" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_on_disk_is_one_line(tmp_path, tiny_corpus, tiny_checkpoints):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        result = _cli(
            "train", "sft", "--data", tiny_corpus / "train.json", "--student", tiny_checkpoints["student"],
            "--out", read_only / "run", *TINY,
        )  # fmt: skip
        _assert_one_error(result, "cannot create or write the run directory (Permission denied)")
    finally:
        read_only.chmod(0o700)


# ---- 8. no traceback reaches a user unless asked ---------------------------------------------------------------
@pytest.fixture
def broken_run(monkeypatch):
    from evl_ecg.train import pipeline

    def broken(*_args, **_kwargs):
        raise RuntimeError("an unexpected fault\nwith a second line")

    monkeypatch.setattr(pipeline, "run", broken)
    monkeypatch.delenv("EVL_ECG_DEBUG", raising=False)


def test_an_unexpected_exception_is_one_line_and_exit_1(broken_run, tmp_path):
    result = _cli("train", "sft", "--data", tmp_path / "train.json", "--out", tmp_path)
    line = _assert_one_error(result)
    assert line == "evl-ecg: error: RuntimeError: an unexpected fault (run with --debug for the traceback)"


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(how, broken_run, tmp_path, monkeypatch):
    args = ["train", "sft", "--data", tmp_path / "train.json", "--out", tmp_path]
    if how == "option":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("EVL_ECG_DEBUG", "1")
    result = _cli(*args)
    assert isinstance(result.exception, RuntimeError) and "unexpected fault" in str(result.exception)
    assert not any(line.startswith("evl-ecg: error:") for line in result.stderr.splitlines())


def test_the_installed_command_prints_no_traceback(tmp_path):
    code = (
        "import sys\n"
        "import evl_ecg.train.pipeline as p\n"
        "def broken(*a, **k):\n"
        "    raise KeyError('deep inside')\n"
        "p.run = broken\n"
        "from evl_ecg.cli import main\n"
        "sys.argv = ['evl-ecg', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EVL_ECG_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", code, "train", "sft", "--data", str(tmp_path / "x.json"), "--out", str(tmp_path)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "evl-ecg: error: KeyError: 'deep inside' (run with --debug for the traceback)" in proc.stderr
    debug = subprocess.run([*args[:3], "--debug", *args[3:]], env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "deep inside" in debug.stderr and "run with --debug" not in debug.stderr


def test_a_later_objective_setting_merges_into_the_earlier_ones():
    from evl_ecg.train.config import load_config, tiny_config_path

    cfg = load_config(
        tiny_config_path("kd"),
        [
            "objective={alpha_warmup: 150, terms: {mhca: {reduction: mean}}}",
            "objective={alpha: 0.5, terms: {mhca: {heads: 4}}}",
            "seed=3",
        ],
    )
    assert cfg.objective == {"alpha_warmup": 150, "alpha": 0.5, "terms": {"mhca": {"reduction": "mean", "heads": 4}}}
    assert cfg.seed == 3


def test_a_label_budget_trains_on_the_labelled_records_only(tmp_path, tiny_corpus, tiny_checkpoints):
    """`train sft --labels` and `distill --labels --answers`: the split is written under OUT/budget, the run trains
    on the labelled records (and the pool with the given answers), reads the corpus' images, pretrains vision on the
    labelled findings only, and records the budget in its provenance; misuses are one line each."""
    from evl_ecg.data.records import load_records

    train = tiny_corpus / "train.json"
    n = len(load_records(train))
    out = tmp_path / "sft"
    result = _cli(
        "train",
        "sft",
        "--data",
        train,
        "--out",
        out,
        "--labels",
        "50%",
        "--label-seed",
        "3",
        *TINY,
        "--set",
        "pretrain_vision_steps=1",
        "--set",
        "pretrain_vision_records=4",
    )
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["records"] == n // 2 and prov["config"]["train_file"] == str(out / "budget" / "labelled.json")
    assert prov["label_budget"]["budget"] == "50%" and prov["label_budget"]["seed"] == 3
    assert prov["config"]["pretrain_vision_data"] == "train"
    assert prov["config"]["image_root"] == str(tiny_corpus / "images")
    # distill with the pool's answers: the labelled records then the pool with those answers
    pool = json.loads((out / "budget" / "pool.json").read_text())
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": p["id"], "text": "NORM"}) + "\n" for p in pool))
    kd = tmp_path / "kd"
    result = _cli(
        "distill",
        "--method",
        "sft",
        "--data",
        train,
        "--out",
        kd,
        "--labels",
        "50%",
        "--label-seed",
        "3",
        "--answers",
        answers,
        "--student",
        out / "student",
        "--teacher",
        tiny_checkpoints["teacher"],
        *TINY,
    )
    assert result.exit_code == 0, result.output
    composed = load_records(kd / "budget" / "train.json")
    assert len(composed) == n and all(r.answer == "NORM" for r in composed[n // 2 :])
    _assert_one_error(_cli("distill", "--data", train, "--out", kd, "--answers", answers), "--answers", "--labels")
    _assert_one_error(_cli("train", "sft", "--data", train, "--labels", "10%"), "--labels needs --data")
    _assert_one_error(
        _cli(
            "train",
            "sft",
            "--data",
            train,
            "--out",
            tmp_path / "x",
            "--labels",
            "10%",
            "--set",
            "pretrain_vision_data=fresh",
        ),  # fmt: skip
        "pretrain_vision_data=fresh",
    )
    _assert_one_error(_cli("train", "sft", "--data", train, "--out", tmp_path / "y", "--labels", "lots"), "lots")


def test_a_run_killed_after_its_last_checkpoint_resumes_without_another_step(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    """A run killed after writing its checkpoint at max_steps (before its export) has nothing left to train:
    transformers' Trainer, resumed there, would run one more optimiser step (the label study saw a ``1201``-step
    run); the rerun exports the checkpoint's weights, and its log ends at max_steps."""
    from evl_ecg.train.pipeline import run

    out = tmp_path / "run"
    cfg = tiny_config(
        out, tiny_corpus, phase="sft", student=str(tiny_checkpoints["student"]), save_strategy="steps", save_steps=2
    )
    run(cfg)
    whole = _weights(out / "student")
    shutil.rmtree(out / "student")  # killed between the last checkpoint and the export
    result = run(cfg)
    assert max(h["step"] for h in result.log_history) == 2
    resumed = _weights(out / "student")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
