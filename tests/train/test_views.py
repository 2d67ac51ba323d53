"""The view policy of training (``views``, ``--views``): deterministic, one image for both models, fresh at every
epoch, refused with the teacher-output cache, and off by default (training unchanged)."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.train.views import ViewPolicy

VIEWS = {"names": ["rotation", "baseline_wander"], "severity": [0.5, 1.0], "p": 1.0}


def weights(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "student" / "model.safetensors").read_bytes()).hexdigest()


def sft(tmp: Path, corpus: Path, checkpoints: dict[str, Path], tiny_config, **kwargs):
    from evl_ecg.train.pipeline import run

    config = tiny_config(tmp, corpus, phase="sft", student=str(checkpoints["student"]), **kwargs)
    run(config)
    return weights(tmp)


def test_the_same_config_and_seed_give_the_same_weights(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    first = sft(tmp_path / "a", tiny_corpus, tiny_checkpoints, tiny_config, views=VIEWS)
    second = sft(tmp_path / "b", tiny_corpus, tiny_checkpoints, tiny_config, views=VIEWS)
    assert first == second


def test_the_policy_off_leaves_training_as_it_was(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    plain = sft(tmp_path / "plain", tiny_corpus, tiny_checkpoints, tiny_config)
    never = sft(tmp_path / "never", tiny_corpus, tiny_checkpoints, tiny_config, views={**VIEWS, "p": 0.0})
    null = sft(tmp_path / "null", tiny_corpus, tiny_checkpoints, tiny_config, views=None)
    viewed = sft(tmp_path / "viewed", tiny_corpus, tiny_checkpoints, tiny_config, views=VIEWS)
    assert plain == never == null
    assert viewed != plain  # the policy does change what trains


def test_teacher_and_student_see_the_same_fresh_view(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, monkeypatch):
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.train import paired
    from evl_ecg.train.pipeline import run

    seen: list[tuple[str, str, str]] = []
    encode = paired.encode_truncated

    def spy(adapter, record, image, max_length, *, train=True, side=""):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        seen.append((side, record.id, hashlib.sha256(buf.getvalue()).hexdigest()))
        return encode(adapter, record, image, max_length, train=train, side=side)

    monkeypatch.setattr(paired, "encode_truncated", spy)
    config = tiny_config(tmp_path, tiny_corpus, phase="kd", method="evl-ecg", student=str(tiny_checkpoints["student"]),
                         teacher=str(tiny_checkpoints["teacher"]), max_train_samples=2, max_steps=3,
                         views=VIEWS)  # fmt: skip
    run(config)  # 2 records, a batch of 2: one step per epoch, three epochs
    students = [(rid, digest) for side, rid, digest in seen if side == "student"]
    teachers = [(rid, digest) for side, rid, digest in seen if side == "teacher"]
    assert len(students) == 6 and students == teachers  # each sample: one image, encoded by both models
    records = load_records(tiny_corpus / "train.json")[:2]
    for record in records:
        buf = io.BytesIO()
        open_image(record, tiny_corpus / "images").save(buf, format="PNG")
        views = [digest for rid, digest in students if rid == record.id]
        assert len(set(views)) == 3  # a fresh view at every epoch
        assert hashlib.sha256(buf.getvalue()).hexdigest() not in views  # p = 1: never the stored page


def test_a_view_policy_with_the_teacher_cache_is_refused_in_one_line(tmp_path, tiny_corpus, tiny_checkpoints):
    from evl_ecg.cli import app
    from evl_ecg.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="teacher_cache") as err:
        load_config(None, output_dir=str(tmp_path / "x"), phase="kd", teacher_cache=str(tmp_path / "c"), views=VIEWS)
    assert str(err.value).startswith("views:") and "\n" not in str(err.value)
    args = ["distill", "--data", str(tiny_corpus / "train.json"), "--student", str(tiny_checkpoints["student"]),
            "--teacher", str(tiny_checkpoints["teacher"]), "--teacher-cache", str(tmp_path / "cache"),
            "--views", "rotation,jpeg", "--out", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "teacher_cache" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "student").exists()


def test_views_sets_the_policy_and_unknown_names_fail_in_one_line(tmp_path, tiny_corpus):
    from evl_ecg.cli import app

    result = CliRunner().invoke(app, ["train", "sft", "--data", str(tiny_corpus / "train.json"), "--out",
                                      str(tmp_path / "run"), "--views", "rotation,wobble"])  # fmt: skip
    assert result.exit_code == 1 and "--views wobble" in result.output and "Traceback" not in result.output
    from evl_ecg.train.config import load_config

    config = load_config(None, ["views={p: 0.25}", "views={names: [image, mains]}"], output_dir=str(tmp_path / "r"))
    policy = ViewPolicy.from_config(config.views)
    assert policy.p == 0.25 and policy.names[-1] == "mains" and "rotation" in policy.names  # merged, families expanded


def test_signal_views_of_a_corpus_without_signals_are_refused_before_training(tmp_path, tiny_corpus, tiny_config):
    from evl_ecg.train.pipeline import run

    folder = tmp_path / "pages"
    folder.mkdir()
    shutil.copy(tiny_corpus / "train.json", folder / "train.json")
    shutil.copytree(tiny_corpus / "images", folder / "images")
    config = tiny_config(tmp_path / "run", folder, phase="sft", views={"names": ["jpeg", "mains"]})
    with pytest.raises(ValueError, match="views: mains need the records' signals") as err:
        run(config)
    assert "image views only" in str(err.value)
    ok = tiny_config(tmp_path / "ok", folder, phase="sft", views={"names": ["jpeg"]})  # image views: the pages suffice
    assert ViewPolicy.from_config(ok.views).needs_signals == ()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"names": ["wobble"]}, "'wobble' is not a view"),
        ({"names": []}, "names"),
        ({"names": ["blur"], "severity": [0.8, 0.2]}, "severity"),
        ({"names": ["blur"], "severity": [0.0, 1.5]}, "severity"),
        ({"names": ["blur"], "p": 2}, "p: a probability"),
        ({"names": ["blur"], "chance": 0.5}, "unknown key 'chance'"),
    ],
)
def test_a_bad_policy_is_a_config_error_naming_the_key(value, match, tmp_path):
    from evl_ecg.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, output_dir=str(tmp_path), views=value)
    assert str(err.value).startswith("views:")


def test_the_draw_depends_on_the_seed_the_record_and_the_epoch_alone():
    policy = ViewPolicy.from_config({"names": ["image"], "severity": [0.2, 1.0], "p": 0.5})
    draws = [policy.draw(0, f"r{i}", e) for i in range(200) for e in range(2)]
    assert draws == [policy.draw(0, f"r{i}", e) for i in range(200) for e in range(2)]
    applied = [d for d in draws if d is not None]
    assert 150 < len(applied) < 250  # p = 0.5 of 400
    assert all(0.2 <= s <= 1.0 for _, s, _ in applied) and {n for n, _, _ in applied} == set(policy.names)
    assert draws != [policy.draw(1, f"r{i}", e) for i in range(200) for e in range(2)]
