"""The label-budget study (evl_ecg.experiments.label_study): its grid, its refusals, and a label budget every stage
respects.

The end-to-end test runs a --quick study twice, the second time on a training corpus whose pool records carry other
answers, labels and findings: every file the stages write from the pool (pool.json, the answers), and every weight
byte of vision pretraining, phase 1 and each row, must be identical, because no stage may read a pool record's label.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from evl_ecg.data.budget import load_answers
from evl_ecg.eval.curves import BEST_DIR, best_point
from evl_ecg.experiments.label_study import (
    ALL_LABELLED_ROWS,
    CONSISTENT_ROWS,
    CONTROLS,
    MAIN_ROWS,
    ROWS,
    LabelStudy,
    LabelStudySettings,
)
from evl_ecg.experiments.study import StudyError


def test_the_grid_runs_every_row_at_the_main_budget_and_the_controls_elsewhere():
    s = LabelStudySettings()
    grid = {(b, r): seeds for b, r, seeds in s.grid()}
    assert {r for b, r in grid if b == "10%"} == set(MAIN_ROWS)
    assert all(len(grid["10%", r]) == 5 for r in MAIN_ROWS)
    assert {r for b, r in grid if b in ("5%", "25%")} == {"control", "seq-kd"}
    assert {r for b, r in grid if b == "50%"} == {"control"}
    # no pool: no pool rows; consistent teaching's rows only when asked for (their own long-schedule grid)
    assert {r for b, r in grid if b == "100%"} == set(ALL_LABELLED_ROWS) - set(CONSISTENT_ROWS)
    assert all(len(seeds) == 3 for (b, _), seeds in grid.items() if b != "10%")
    assert [r for b, r in grid if b == "10%"][0] == "control"  # the control runs first in each budget
    assert set(CONTROLS) <= set(MAIN_ROWS) and not any(ROWS[c].teacher for c in CONTROLS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": ("10%", "abc")}, "--labels"),
        ({"main_budget": "20%"}, "main budget 20% is not among"),
        ({"rows": ("control", "magic")}, "unknown row"),
        ({"rows": ("seq-kd",)}, "needs the control"),
        ({"test_seed": 1000}, "study's test set"),
        ({"data_seed": 5, "test_seed": 5}, "must differ"),
        ({"budgets": ("10%", "0.1")}, "given twice"),
        ({"phase1_steps": 0}, "phase1_steps must be >= 1"),
        ({"phase2_steps": 0}, "phase2_steps and choice_points"),
        ({"jobs": 0}, "jobs and threads"),
    ],
)
def test_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(StudyError, match=message):
        LabelStudySettings(**kwargs)


def test_consistent_teaching_rows_see_views_with_the_live_teacher_and_run_only_when_asked(tmp_path):
    from evl_ecg.experiments.label_study import CONSISTENT_VIEWS, teacher_sets
    from evl_ecg.train.config import load_config, tiny_config_path

    cache = tmp_path / "cache"
    assert teacher_sets(ROWS["consistent-seq-kd+label-kd"], True, cache) == [CONSISTENT_VIEWS]  # never the cache
    assert teacher_sets(ROWS["views-control"], True, cache) == [CONSISTENT_VIEWS]
    assert teacher_sets(ROWS["seq-kd+label-kd"], True, cache) == [f"teacher_cache={cache}"]
    assert teacher_sets(ROWS["seq-kd+label-kd"], False, cache) == [] and teacher_sets(ROWS["seq-kd"], True, cache) == []
    # the policy is a valid config (and the cache would be refused with it)
    cfg = load_config(tiny_config_path("kd"), [CONSISTENT_VIEWS], phase="kd", method="label-kd")
    assert cfg.views["names"] == ["image", "signal"] and cfg.views["p"] == 0.5
    # outside the default grid; asked for, at the main budget and where every record is labelled
    assert not set(CONSISTENT_ROWS) & {r for _, r, _ in LabelStudySettings().grid()}
    rows = ("control", "views-control", "seq-kd+label-kd", "consistent-seq-kd+label-kd")
    grid = LabelStudySettings(budgets=("10%", "100%"), rows=rows).grid()
    assert {r for b, r, _ in grid if b == "10%"} == set(rows)
    assert set(CONSISTENT_ROWS) <= {r for b, r, _ in grid if b == "100%"}


def test_a_run_keeps_its_best_validation_point_the_earliest_on_a_tie():
    curve = [{"step": 0, "auc": 63.1}, {"step": 300, "auc": 58.0}, {"step": 600, "auc": 63.1}]
    assert best_point(curve)["step"] == 0  # a control that only loses by training on keeps its phase-1 student
    curve += [{"step": 900, "auc": 70.3}, {"step": 1200, "auc": 70.3}]
    assert best_point(curve)["step"] == 900
    with pytest.raises(ValueError, match="empty"):
        best_point([])


def test_jobs_return_results_in_the_order_given(tmp_path):
    import time

    study = LabelStudy(tmp_path, LabelStudySettings(jobs=2), log=lambda m: None)
    tasks = [lambda d=d, i=i: (time.sleep(d), i)[1] for i, d in enumerate((0.2, 0.0, 0.1))]
    assert study._parallel(tasks) == [0, 1, 2]


def test_the_teacher_s_own_seeds_are_refused(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "card.json").write_text(json.dumps({"facts": {"data_seed": 21}, "scores": {"bench_seed": 77}}))
    with pytest.raises(StudyError, match="data_seed 21 is the seed of the teacher's training corpus"):
        LabelStudy(tmp_path / "s", LabelStudySettings()).check_teacher_seeds(teacher)
    with pytest.raises(StudyError, match="test_seed 77 is the seed of the teacher's test set"):
        LabelStudy(tmp_path / "s", LabelStudySettings(data_seed=22, test_seed=77)).check_teacher_seeds(teacher)
    LabelStudy(tmp_path / "s", LabelStudySettings(data_seed=22)).check_teacher_seeds(teacher)  # others pass


def _in_process(cmd: list[str], log_file: Path, threads: int) -> dict[str, float]:
    """The study's commands run in this process (the same code and seeds as their own processes, without the
    interpreter's start-up per command)."""
    from typer.testing import CliRunner

    from evl_ecg.cli import app

    result = CliRunner().invoke(app, cmd[3:])  # [python, -m, evl_ecg.cli, ...]
    assert result.exit_code == 0, result.output
    return {"seconds": 0.0, "peak_rss_mb": 0.0}


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.slow
def test_no_stage_reads_a_pool_label(tmp_path):
    settings = LabelStudySettings(
        budgets=("50%",),
        main_budget="50%",
        seeds=(0,),
        rows=("control", "self-training", "seq-kd", "label-kd"),
        n_train=12,
        n_val=2,
        test_ptb=2,
        phase1_steps=2,
        phase2_steps=2,
        quick=True,
        threads=1,
    )
    first = tmp_path / "first"
    res = LabelStudy(first, settings, log=lambda m: None, runner=_in_process).run()
    budget = first / "budgets" / "50pct" / "seed-0"
    pool = {row["id"] for row in json.loads((budget / "pool.json").read_text())}
    assert len(pool) == 6 and json.loads((budget / "budget.json").read_text())["labelled"] == 6
    # the same corpus, except that every pool record now says something else: answers, labels, findings, meta
    second = tmp_path / "second"
    second.mkdir()
    for name in ("data", "test"):
        shutil.copytree(first / name, second / name)
    shutil.copy2(first / "labels-study.json", second / "labels-study.json")  # the same settings, resumed
    train = json.loads((second / "data" / "train.json").read_text())
    changed = 0
    for record in train:
        if record["id"] in pool:
            record["conversations"][-1]["value"] = "MI(myocardial infarction), HYP(hypertrophy)"
            record["labels"] = {"findings": ["AMI", "LVH"], "ptbxl": ["MI", "HYP"]}
            record.setdefault("meta", {})["findings"] = ["AMI", "LVH"]
            changed += 1
    assert changed == 6
    (second / "data" / "train.json").write_text(json.dumps(train, indent=1))
    LabelStudy(second, settings, log=lambda m: None, runner=_in_process).run()

    for run in res["runs"]:  # each row's evaluated model is the student of its best validation point
        if run["row"] != "teacher":
            step = best_point(run["curve"])["step"]
            assert run["chosen_step"] == step
            assert Path(run["model"]).name == (BEST_DIR if step > 0 else "student"), run["row"]
    for name in ("pool.json", "labelled.json", "train-teacher.json", "train-self.json", "train-teacher-context.json"):
        assert (budget / name).read_bytes() == (second / budget.relative_to(first) / name).read_bytes(), name
    for folder in ("phase1", "runs/50pct"):
        assert _weights(first / folder) == _weights(second / folder), folder
    for folder in ("self/50pct/seed-0", "answers/teacher"):  # named by the model's fingerprint, which holds its paths
        (a,), (b,) = (sorted((root / folder).glob("answers-*.jsonl")) for root in (first, second))
        assert load_answers(a) == load_answers(b) and len(load_answers(a)) >= 6, folder
    assert len(_weights(first / "runs/50pct")) >= 4  # a student per row was compared
    # label-space KD: the pool's answers are context (no CE); the teacher's label-set scores come from a cache its
    # run built over its own training file, deleted once trained
    context = json.loads((budget / "train-teacher-context.json").read_text())
    assert {r["id"] for r in context if (r.get("meta") or {}).get("ce") is False} == pool
    assert all(r.get("meta", {}).get("ce") is not False for r in context if r["id"] not in pool)
    run = json.loads((first / "runs/50pct/label-kd/seed-0/done.json").read_text())
    assert run["train"]["teacher_cache_bytes"] > 0 and not (first / "runs/50pct/label-kd/seed-0/teacher-cache").exists()
    provenance = json.loads((first / "runs/50pct/label-kd/seed-0/train/provenance.json").read_text())
    assert provenance["teacher_cache"]["fields"] == ["label_logliks"] and provenance["teacher_cache"]["records"] == 12
    # the budget reaches every run's card, and the study's results
    card = json.loads((first / "runs/50pct/seq-kd/seed-0/train/student/card.json").read_text())
    assert card["facts"]["label_budget"]["budget"] == "50%" and card["facts"]["label_budget"]["pool"] == 6
    assert card["facts"]["label_budget"]["file"] == "train-teacher.json"
    assert res["settings"]["budgets"] == ["50%"] and res["labelled"] == {"50%": 6}
    assert res["primary"]["row"] == "seq-kd" and (first / "figures" / "labels.png").is_file()


def test_a_partial_report_says_what_is_not_known_yet():
    """While budgets and controls are still to run, labels saved and the Required answer say so, not 'does not
    hold'; once a control's interval reaches 0 the answer is known."""
    from evl_ecg.experiments.label_study import label_markdown

    settings = {"n_train": 2000, "data_seed": 21, "generator": 2, "test_seed": 2100, "test_ptb": 500, "quick": False,
                "budgets": ["5%", "10%"], "main_budget": "10%"}  # fmt: skip
    above = {"diff": 10.5, "lo": 7.8, "hi": 13.1}
    res = {
        "settings": settings,
        "teacher": {"ptb-test": 92.1},
        "partial": True,
        "table": {"10%": {"control": {"ptb-test": {"auc_mean": 63.8, "auc_std": 3.0}}}},
        "choices": {},
        "labelled": {"10%": 200},
        "primary": {"rule": "by validation", "row": "seq-kd", "validation": {"seq-kd": 73.8}},
        "labels_saved": {"ptb-test": {"records": math.inf, "lo": math.inf, "hi": math.inf}},
        "answers": {"vs control": above, "vs self-training": above, "required_holds": False},
    }
    text = label_markdown(res)
    assert "budgets still to run: 5%" in text
    assert "not known yet (controls still to run: label-smoothing, shuffled-teacher)" in text
    res["answers"]["vs self-training"] = {"diff": 0.5, "lo": -0.4, "hi": 1.4}
    assert "Required (above every control, each interval excluding 0): does not hold" in label_markdown(res)
