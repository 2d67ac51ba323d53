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
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--study", str(study)])
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
    # the KD stage trains EVL-ECG with the tiny preset's settings (evl_ecg.train.study.TINY_METHOD_SETS)
    config = json.loads((out / "kd" / "provenance.json").read_text())["config"]
    assert config["hidden_positions"] == "response" and config["objective"]["alpha_warmup"] == 150
    for name in ("transport_plan", "singular_values", "loss_curves"):
        path = out / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    card = (out / "kd" / "student" / "README.md").read_text()
    assert "not a medical device" in card and "| ptb-test | strict |" in card  # scored by the demo's evaluation
    # a second run reuses every finished stage
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["timings_s"].get("kd", 0) < 1.0
    # the same folder with the paper's objective would relabel the tiny-settings student: refused
    other = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--paper-objective"])
    assert other.exit_code != 0 and "other settings" in other.output and "--out" in other.output


def test_demo_names_a_study_folder_without_results(tmp_path):
    from evl_ecg.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--study", str(tmp_path)])
    assert result.exit_code != 0 and "--study" in result.output and "results.json" in result.output


def test_beside_study_says_when_the_study_ran_another_generator_or_teacher():
    from evl_ecg.train.demo import beside_study

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
