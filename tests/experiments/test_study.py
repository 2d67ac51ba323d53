"""``evl-ecg study --quick``: the whole grid of methods runs, writes its tables and figures, and resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from evl_ecg.experiments.study import (
    STUDY_METHODS,
    TINY_METHOD_SETS,
    StudyError,
    StudySettings,
    add_gap_closed,
    method_settings,
    run_study,
)

pytestmark = pytest.mark.slow


#: the quick study's methods: the control, a Table 1 logit baseline and EVL-ECG (the three Table 7 times). Every
#: preset's KD step runs in tests/train/test_trainer.py; the study's code is the same for each method, and all 11 here
#: took 5 of the suite's 15 minutes.
QUICK_METHODS = ("control", "vanilla-kl", "evl-ecg")


def test_quick_study_runs_every_method_writes_its_tables_and_a_rerun_redoes_nothing(tmp_path):
    out = tmp_path / "study"
    settings = StudySettings(
        seeds=(0,), methods=QUICK_METHODS, n_train=48, n_val=4, test_ptb=8, quick=True, threads=2, curve_points=1
    )
    assert set(QUICK_METHODS) <= set(STUDY_METHODS)
    res = run_study(out, settings, log=lambda _m: None)
    assert set(res["table"]) == {*QUICK_METHODS, "teacher"}  # the teacher once, for the control -> teacher gap
    for method in QUICK_METHODS:
        row = res["table"][method]["ptb-test"]
        assert row["seeds"] == [0] and 0 <= row["auc_mean"] <= 100
        if method != "control":
            b = row["vs_control"]
            assert b["n_records"] == 8 and b["n_seeds"] == 1 and b["lo"] <= b["diff"] <= b["hi"]
        cost = res["table7"][method]
        assert cost["peak_rss_mb"][0] > 50 and cost["seconds_per_step"][0] > 0
    run = next(r for r in res["runs"] if r["method"] == "evl-ecg")
    assert [p["step"] for p in run["curve"]] == [0, 3]  # the learning curve on the validation split
    t7 = res["table7_runs"]
    assert set(t7) == {"control", "evl-ecg", "vanilla-kl"}
    assert "cache" not in t7["control"] and t7["evl-ecg"]["cache"]["peak_rss_mb"] > 50  # the control needs no teacher
    assert t7["evl-ecg"]["live"]["seconds_per_step"] > 0 and res["teacher_cache"]["bytes"] > 0
    md = (out / "results.md").read_text()
    assert "| evl-ecg |" in md and "smoke test" in md and "Table 7" in md
    for name in ("learning_curves", "table1", "table6", "table7"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    # the test benchmark has its own seed and ECGBench's proportions; the training corpus has a validation split
    test_manifest = json.loads((out / "test" / "manifest.json").read_text())
    assert test_manifest["seed"] == settings.test_seed and test_manifest["counts"]["ptb-test"] == 8
    assert (out / "data" / "val" / "ptb-test.json").is_file()

    # the teacher: one evaluation, its difference to the control paired over records x seeds; the gap closed
    teacher = res["table"]["teacher"]["ptb-test"]
    assert teacher["auc_std"] == 0.0 and teacher["vs_control"]["n_records"] == 8
    if teacher["vs_control"]["lo"] <= 0:  # a gap that may be 0: no share of it is reported
        assert not any("gap_closed" in res["table"][m]["ptb-test"] for m in QUICK_METHODS)
    # the tiny preset's settings reached EVL-ECG's runs, and only the methods they name
    provenance = json.loads((out / "runs" / "evl-ecg" / "seed-0" / "train" / "provenance.json").read_text())
    assert provenance["config"]["hidden_positions"] == "response"
    assert provenance["config"]["objective"] == {"alpha_warmup": 150, "terms": {"mhca": {"reduction": "mean"}}}
    control = json.loads((out / "runs" / "control" / "seed-0" / "train" / "provenance.json").read_text())
    assert control["config"]["hidden_positions"] == "all"
    summary = json.loads((out / "summary.json").read_text())  # the compact form: rounded means, settings kept
    for method in ("control", "evl-ecg", "teacher"):
        row = res["table"][method]["ptb-test"]
        assert summary["table"][method]["ptb-test"]["mean"] == round(row["auc_mean"], 2)
    assert summary["settings"]["test_seed"] == settings.test_seed and summary["settings"]["seeds"] == [0]
    assert summary["settings"]["method_overrides"] == list(TINY_METHOD_SETS)

    done = {p: p.stat().st_mtime_ns for p in out.rglob("done.json")}
    assert len(done) == 1 + len(QUICK_METHODS) + 1 + 5  # phase 1, the grid, the teacher, Table 7 (3 live, 2 cached)
    again = run_study(out, settings, log=lambda _m: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("done.json")} == done
    assert again["table"] == res["table"]

    # another override of one method reruns that method's runs only
    other = dataclasses.replace(
        settings, method_overrides=(*settings.method_overrides, "vanilla-kl:objective={alpha: 0.25}")
    )
    run_study(out, other, log=lambda _m: None)
    changed = {p for p, t in done.items() if not p.exists() or p.stat().st_mtime_ns != t}
    # its phase-2 run and its Table 7 runs (timed with its objective), nothing else
    timed = {out / "table7" / "vanilla-kl" / side / "done.json" for side in ("live", "cache")}
    assert changed == {out / "runs" / "vanilla-kl" / "seed-0" / "done.json", *timed}
    objective = json.loads((out / "runs" / "vanilla-kl" / "seed-0" / "train" / "provenance.json").read_text())
    assert "0.25*(" in objective["objective"]


def test_a_study_folder_refuses_other_settings(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({**StudySettings(quick=True).to_json(), "test_seed": 5}))
    with pytest.raises(StudyError, match="test_seed"):
        run_study(out, StudySettings(quick=True), log=lambda _m: None)


def test_unknown_method_or_no_control_is_refused():
    with pytest.raises(StudyError, match="unknown study method"):
        StudySettings(methods=("control", "evl-ecgg"))
    with pytest.raises(StudyError, match="control"):
        StudySettings(methods=("evl-ecg",))


def test_method_sets_name_their_methods_and_bad_entries_are_refused():
    assert method_settings(TINY_METHOD_SETS, "control") == [] and method_settings(TINY_METHOD_SETS, "vanilla-kl") == []
    assert method_settings(TINY_METHOD_SETS, "ot+mhca") == method_settings(TINY_METHOD_SETS, "evl-ecg")
    assert method_settings(("a,b:x=1", "b:y={k: 2}"), "b") == ["x=1", "y={k: 2}"]
    assert StudySettings().method_sets("ot") == ["--set", "objective={alpha_warmup: 150}"]
    for bad in ("evl-ecg", "evl-ecg:alpha", ":x=1", "evl-ecg:=1"):
        with pytest.raises(StudyError, match="METHOD"):
            StudySettings(method_overrides=(bad,))
    with pytest.raises(StudyError, match="unknown method"):
        StudySettings(method_overrides=("evl-ecgg:x=1",))


def test_gap_closed_is_the_difference_over_the_teachers_only_where_the_teacher_is_surely_above():
    def cell(diff, lo, hi):
        return {"vs_control": {"diff": diff, "lo": lo, "hi": hi}}

    table = {
        "teacher": {"ptb-test": cell(4.0, 1.0, 7.0), "cpsc-test": cell(2.0, -1.0, 5.0)},
        "control": {"ptb-test": {}, "cpsc-test": {}},
        "evl-ecg": {"ptb-test": cell(1.0, -0.5, 2.5), "cpsc-test": cell(1.0, 0.1, 2.0)},
        "ot": {"ptb-test": cell(-2.0, -3.0, -1.0)},
    }
    add_gap_closed(table)
    assert table["evl-ecg"]["ptb-test"]["gap_closed"] == 0.25 and table["ot"]["ptb-test"]["gap_closed"] == -0.5
    assert "gap_closed" not in table["evl-ecg"]["cpsc-test"]  # the teacher's CPSC interval includes 0
    assert "gap_closed" not in table["teacher"]["ptb-test"] and "gap_closed" not in table["control"]["ptb-test"]


def test_the_cache_holds_what_each_method_reads_with_its_own_overrides(tmp_path):
    """A ``--method-set`` that adds a logit term to EVL-ECG makes the cache hold the teacher's logits as well; the
    presets alone read hidden states and visual tokens (SPEC: MHCA, OT; relation reads MHCA's output)."""
    from evl_ecg.experiments.study import Study

    plain = Study(tmp_path, StudySettings(method_overrides=()))._cache_fields(["evl-ecg"])
    assert plain == {"hidden", "visual"}
    extra = StudySettings(method_overrides=("evl-ecg:objective={terms: {vanilla_kl: {weight: 0.5}}}",))
    assert Study(tmp_path, extra)._cache_fields(["evl-ecg"]) == {"hidden", "visual", "logits"}
    assert Study(tmp_path, extra)._cache_fields(["ot"]) == {"visual"}  # the setting names evl-ecg only
