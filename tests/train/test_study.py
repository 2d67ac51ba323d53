"""``evl-ecg study --quick``: the whole grid of methods runs, writes its tables and figures, and resumes."""

from __future__ import annotations

import json

import pytest

from evl_ecg.train.study import STUDY_METHODS, StudyError, StudySettings, run_study

pytestmark = pytest.mark.slow


def test_quick_study_runs_every_method_writes_its_tables_and_a_rerun_redoes_nothing(tmp_path):
    out = tmp_path / "study"
    settings = StudySettings(seeds=(0,), n_train=48, n_val=4, test_ptb=8, quick=True, threads=2, curve_points=1)
    res = run_study(out, settings, log=lambda _m: None)
    assert set(res["table"]) == set(STUDY_METHODS)
    for method in STUDY_METHODS:
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

    done = {p: p.stat().st_mtime_ns for p in out.rglob("done.json")}
    assert len(done) == 1 + len(STUDY_METHODS) + 5  # phase 1, the grid, Table 7 (3 live, 2 cached)
    again = run_study(out, settings, log=lambda _m: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("done.json")} == done
    assert again["table"] == res["table"]


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
