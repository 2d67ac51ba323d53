"""A study folder resumes only the study its settings describe (issue 30): study.json is its resume key (every
setting and the teacher's fingerprint); other settings, or another teacher under the same path, are refused in one
line naming the setting and both values; a study.json of an older evl-ecg (the settings as one object) is read."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from evl_ecg.experiments.study import Study, StudyError, StudySettings, run_study


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(autouse=True)
def _no_study_work(monkeypatch):
    """A study that is not refused would go on to build its corpora and train: here it stops there instead."""

    def started(self):
        raise AssertionError("the study started instead of refusing its folder")

    monkeypatch.setattr(Study, "_data", started)


@pytest.fixture
def teacher(tmp_path) -> Path:
    from evl_ecg.models.tiny import shipped_teacher

    src = shipped_teacher()
    if src is None:
        pytest.skip("no shipped tiny teacher")
    return Path(shutil.copytree(src, tmp_path / "teacher"))


def _settings(teacher: Path, **kw) -> StudySettings:
    return StudySettings(quick=True, teacher=str(teacher), **kw)


def test_study_json_is_a_resume_key_of_every_setting_and_the_teacher(tmp_path, teacher):
    from evl_ecg.models.fingerprint import model_fingerprint

    out = tmp_path / "s"
    settings = _settings(teacher)
    Study(out, settings, _quiet)._check_settings()
    doc = json.loads((out / "study.json").read_text())
    assert doc["format"] == "evl-ecg/resume-key" and doc["command"] == "study"
    want = {k: v for k, v in settings.to_json().items() if k not in ("methods", "method_overrides")}
    assert doc["settings"] == {**want, "teacher_fingerprint": model_fingerprint(teacher)["digest"][:16]}
    assert doc["info"] == {"methods": list(settings.methods), "method_overrides": list(settings.method_overrides)}


def test_other_settings_are_refused_naming_the_setting_and_both_values(tmp_path, teacher):
    out = tmp_path / "s"
    Study(out, _settings(teacher), _quiet)._check_settings()
    before = (out / "study.json").read_text()
    with pytest.raises(StudyError) as err:
        run_study(out, _settings(teacher, test_seed=5), log=_quiet)
    assert str(err.value) == f"{out}: was written with test_seed=1000, now 5; use another --out"
    with pytest.raises(StudyError, match=r"was written with n_train=2000, now 48 \(1 more differs: phase2_steps\)"):
        run_study(out, _settings(teacher, n_train=48, phase2_steps=7), log=_quiet)
    assert (out / "study.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]  # nothing else started


def test_methods_may_grow_between_runs_of_one_study(tmp_path, teacher):
    out = tmp_path / "s"
    Study(out, _settings(teacher, methods=("control", "ot")), _quiet)._check_settings()
    Study(out, _settings(teacher, methods=("control", "ot", "evl-ecg")), _quiet)._check_settings()
    assert json.loads((out / "study.json").read_text())["info"]["methods"] == ["control", "ot", "evl-ecg"]


def test_another_teacher_under_the_same_path_is_refused(tmp_path, teacher):
    out = tmp_path / "s"
    Study(out, _settings(teacher), _quiet)._check_settings()
    config = json.loads((teacher / "generation_config.json").read_text())
    config["max_length"] = 77
    (teacher / "generation_config.json").write_text(json.dumps(config))
    with pytest.raises(StudyError) as err:
        run_study(out, _settings(teacher), log=_quiet)
    assert str(err.value).startswith(f"{out}: was written with teacher_fingerprint=")
    assert str(err.value).endswith("; use another --out") and "\n" not in str(err.value)


def _legacy(teacher: Path, **changes) -> dict:
    """study.json as an evl-ecg before resume keys wrote it: the settings as one object, no generator (it drew
    generator 1's corpora) and no teacher fingerprint."""
    doc = {k: v for k, v in _settings(teacher, generator=1).to_json().items() if k != "generator"}
    return {**doc, **changes}


def test_a_legacy_study_json_resumes_with_a_warning_and_becomes_a_key(tmp_path, teacher, caplog):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(_legacy(teacher, methods=["control"])))
    with caplog.at_level(logging.WARNING, logger="evl_ecg.resume"):
        Study(out, _settings(teacher, generator=1), _quiet)._check_settings()
    assert any("teacher_fingerprint was not recorded" in r.getMessage() for r in caplog.records)
    doc = json.loads((out / "study.json").read_text())
    assert doc["format"] == "evl-ecg/resume-key" and doc["settings"]["generator"] == 1


def test_a_legacy_study_json_of_other_settings_is_refused_naming_both_values(tmp_path, teacher):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(_legacy(teacher, test_seed=5)))
    with pytest.raises(StudyError) as err:
        run_study(out, _settings(teacher, generator=1), log=_quiet)
    assert str(err.value) == f"{out}: was written with test_seed=5, now 1000; use another --out"
    with pytest.raises(StudyError, match=r"was written with test_seed=5, now 1000 \(1 more differs: generator\)"):
        run_study(out, _settings(teacher, generator=2), log=_quiet)  # the legacy corpora were drawn with 1


def test_an_unreadable_study_json_is_one_line_naming_it(tmp_path, teacher):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text("{not json")
    with pytest.raises(StudyError) as err:
        run_study(out, _settings(teacher), log=_quiet)
    assert str(err.value).startswith(f"{out / 'study.json'}: unreadable resume key (")
    assert str(err.value).endswith("; use another --out")
