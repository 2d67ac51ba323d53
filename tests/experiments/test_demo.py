"""`evl-ecg demo --quick`: every stage runs end to end on a tiny corpus and leaves its table, figures and cards."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def test_quick_demo_runs_every_stage_and_writes_its_results(tmp_path):
    from evl_ecg.cli import app

    out = tmp_path / "demo"
    # a study summary written by hand: the demo prints its mean +- std beside this run's seed
    study = tmp_path / "study.json"
    cell = {"mean": 77.25, "std": 1.12, "seeds": [0, 1, 2]}
    study.write_text(
        json.dumps(
            {
                "summary_of": "evl-ecg study",
                "settings": {"seeds": [0, 1, 2], "phase2_steps": 300, "test_seed": 1000, "test_ptb": 500},
                "table": {
                    "control": {"ptb-test": cell, "code15-test": {**cell, "mean": 73.94}},
                    "evl-ecg": {"ptb-test": {**cell, "mean": 75.5, "std": 0.4}},
                    "teacher": {"ptb-test": {"mean": 81.0, "std": 0.0, "seeds": []}},
                },
            }
        )
    )
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--study", str(study), "--labels", "all"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["timings_s"]) >= {"synth", "teacher", "sft", "control", "kd", "eval teacher", "figures"}
    rows = summary["table"]["rows"] if isinstance(summary["table"], dict) else summary["table"]
    methods = {(r["method"], r["scorer"]) for r in rows}
    assert methods == {(m, s) for m in ("teacher", "control-student", "evl-ecg-student") for s in ("pulse", "strict")}
    markdown = (out / "results.md").read_text()
    assert "| evl-ecg-student | strict |" in markdown and "Stage times" in markdown
    beside = markdown.split("This seed beside the study")[1].split("Stage times")[0]
    lines = {line.split("|")[1].strip(): line for line in beside.splitlines() if line.startswith("| ")}
    assert "77.2 +- 1.1" in lines["control-student"] and "73.9 +- 1.1" in lines["control-student"]
    assert "75.5 +- 0.4" in lines["evl-ecg-student"] and "81.0 (one model)" in lines["teacher"]
    assert "seeds [0, 1, 2]" in beside and "test benchmark seed 1000" in beside
    # the demo draws generator 2 by default; the hand-written study names no generator (a study made before the
    # setting: generator 1), so the table says the two settings differ
    assert "generator 2. Study:" in beside and "Not the same setting" in beside and "generator-1 corpora" in beside
    # the KD stage trains EVL-ECG with the tiny preset's settings (evl_ecg.experiments.study.TINY_METHOD_SETS)
    config = json.loads((out / "kd" / "provenance.json").read_text())["config"]
    assert config["hidden_positions"] == "response" and config["objective"]["alpha_warmup"] == 150
    for name in ("transport_plan", "singular_values", "loss_curves"):
        path = out / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    card = (out / "kd" / "student" / "README.md").read_text()
    assert "not a medical device" in card and "| ptb-test | strict |" in card  # scored by the demo's evaluation
    # a second run reuses every finished stage
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--labels", "all"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["timings_s"].get("kd", 0) < 1.0
    # the same folder with the paper's objective would relabel the tiny-settings student: refused
    other = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--paper-objective", "--labels", "all"])
    assert other.exit_code != 0 and "other settings" in other.output and "--out" in other.output


def test_quick_demo_runs_the_label_budget_regime_by_default(tmp_path):
    """The default demo: 10 % labels, the teacher's pool answers, the control, the label study's primary method and
    it with EVL-ECG's terms, each keeping its best validation point; the label study's numbers beside them."""
    from evl_ecg.cli import app

    out = tmp_path / "demo"
    cell = {"auc_mean": 66.25, "auc_std": 1.5}
    summary = {
        "settings": {"seeds": [0, 1, 2, 3, 4], "other_seeds": 3, "main_budget": "10%", "test_seed": 2100,
                     "test_ptb": 500, "data_seed": 21},
        "primary": {"row": "seq-kd", "rule": "by hand"},
        "choices": {"10%": {"phase1_steps": 3}},
        "table": {"10%": {"control": {"ptb-test": cell}, "seq-kd": {"ptb-test": {**cell, "auc_mean": 74.5}}}},
        "teacher": {"ptb-test": 91.7},
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--study", str(tmp_path), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["labels"] == "10%"
    # the three phase-2 runs in two worker processes, the teacher answering the pool beside the control
    times = doc["timings_s"]
    assert "teacher answers" in times and {"control (worker)", "seq-kd (worker)"} <= set(times)
    wall = times["phase 2 (3 runs, 2 at a time; wall)"]
    assert max(times["control (worker)"], times["seq-kd+evl-ecg (worker)"]) <= wall  # overlapped, not summed
    assert "| total (wall) |" in doc["table_markdown"] and "side by side" in doc["table_markdown"]
    assert "2 at a time with" in result.output
    methods = {r["method"] for r in doc["table"]["rows"]}
    assert methods == {"teacher", "control-student", "seq-kd-student", "seq-kd+evl-ecg-student"}
    # EVL-ECG's terms read the teacher from a cache built once, deleted after training
    kd_run = json.loads((out / "seq-kd+evl-ecg" / "provenance.json").read_text())
    assert kd_run["teacher_cache"]["fields"] and not (out / "seq-kd+evl-ecg" / "teacher-cache").exists()
    budget = json.loads((out / "budget" / "budget.json").read_text())
    assert (budget["labelled"], budget["pool"], budget["records"]) == (5, 43, 48)
    pool = json.loads((out / "budget" / "pool.json").read_text())
    assert all("labels" not in p and "meta" not in p for p in pool)  # the pool carries no label
    # phase 1 read the labelled records only, for the study's phase-1 choice of steps
    sft = json.loads((out / "sft" / "provenance.json").read_text())["config"]
    assert sft["train_file"].endswith("labelled.json") and sft["pretrain_vision_data"] == "train"
    assert sft["max_steps"] == 4  # --quick shortens every run
    seq = json.loads((out / "seq-kd" / "provenance.json").read_text())["config"]
    assert seq["train_file"].endswith("train-teacher.json") and seq["curve_keep_best"]
    kd = json.loads((out / "seq-kd+evl-ecg" / "provenance.json").read_text())["config"]
    assert kd["method"] == "evl-ecg" and kd["objective"]["alpha_warmup"] == 150
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# evl-ecg demo, 10% labels") and "5 of 48 training records labelled" in markdown
    beside = markdown.split("beside the label study")[1].split("Stage times")[0]
    lines = {line.split("|")[1].strip(): line for line in beside.splitlines() if line.startswith("| ")}
    assert "66.2 +- 1.5" in lines["control-student"] and "74.5 +- 1.5" in lines["seq-kd-student"]
    assert "91.7 (one model)" in lines["teacher"] and "seeds [0, 1, 2, 3, 4]" in beside


def test_demo_refuses_a_label_budget_it_cannot_read(tmp_path):
    from evl_ecg.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--labels", "ten"])
    assert result.exit_code != 0 and "ten" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--jobs", "0"])
    assert result.exit_code != 0 and "--jobs" in result.output and "Traceback" not in result.output


def test_demo_names_a_study_folder_without_results(tmp_path):
    from evl_ecg.cli import app

    d = str(tmp_path / "d")
    result = CliRunner().invoke(app, ["demo", "--out", d, "--quick", "--study", str(tmp_path), "--labels", "all"])
    assert result.exit_code != 0 and "--study" in result.output and "results.json" in result.output
    result = CliRunner().invoke(app, ["demo", "--out", d, "--quick", "--study", str(tmp_path)])
    assert result.exit_code != 0 and "--study" in result.output and "summary.json" in result.output


def test_beside_study_says_when_the_study_ran_another_generator_or_teacher():
    from evl_ecg.experiments.demo import beside_study

    cell = {"mean": 70.0, "std": 1.0}
    rows = {"rows": [{"method": "control-student", "scorer": "strict", "cells": {"ptb-test/AUC": {"mean": 71.0}}}]}
    settings = {"seeds": [0], "phase2_steps": 300, "test_seed": 1000, "test_ptb": 500}
    same = {"settings": {**settings, "generator": 2}, "table": {"control": {"ptb-test": cell}}}
    assert "Not the same setting" not in beside_study(rows, same, 0, generator=2)
    old = {"settings": {**settings, "teacher": "the v1 tiny teacher"}, "table": {"control": {"ptb-test": cell}}}
    text = beside_study(rows, old, 0, generator=2)
    assert "Not the same setting" in text and "generator-1 corpora with the v1 tiny teacher" in text


def test_demo_teacher_option_refuses_a_folder_that_is_not_a_model(tmp_path):
    from evl_ecg.cli import app

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--teacher", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "--teacher" in result.output and "not a model folder" in result.output
