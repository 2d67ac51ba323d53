"""Hostile input and faults in ``evl-ecg eval``: a bench file the scorer cannot score stops ``eval run`` (exit 1, one
line naming the file and the problem) before the model is loaded, a gpt turn first is refused, the stdout JSON is
whole, a resume is keyed on the model's fingerprint, figures follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evl_ecg.eval.commands import app
from evl_ecg.eval.predictions import EvalInputError, load_bench

runner = CliRunner()
PTB_PROMPT = "Which superclasses (NORM, MI, STTC, CD, HYP) does this ECG show?"


def item(rid: str, answer: Any = "NORM", roles: tuple[str, ...] = ("human", "gpt")) -> dict[str, Any]:
    values = ["<image>\n" + PTB_PROMPT, answer, "And now?", "CD"]
    return {
        "id": rid,
        "image": f"ptb-test/{rid}.png",
        "conversations": [{"from": role, "value": values[k]} for k, role in enumerate(roles)],
    }


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture
def model_dir(tmp_path):
    """A copy of the shipped tiny teacher."""
    from evl_ecg.models.tiny import shipped_teacher

    src = shipped_teacher()
    if src is None:
        pytest.skip("no shipped tiny teacher")
    return Path(shutil.copytree(src, tmp_path / "a" / "student"))


def run_args(model: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--bench", str(bench), "--out", str(out), "--subset", "ptb-test",
            "--max-new-tokens", "2", "--batch-size", "4", "--no-likelihood", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# 4. A bench item whose first turn is gpt is refused, not scored with the question as its gold answer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "k", "found", "want"),
    [
        (("gpt", "human", "gpt"), 0, "gpt", "human"),
        (("gpt", "gpt"), 0, "gpt", "human"),
        (("human", "human"), 1, "human", "gpt"),
    ],
    ids=["gpt-human-gpt", "gpt-gpt", "human-human"],
)
def test_a_bench_item_without_question_then_answer_is_refused_naming_file_and_id(tmp_path, roles, k, found, want):
    path = tmp_path / "ptb-test.json"
    path.write_text(json.dumps([item("p1"), item("p2", roles=roles)]))
    with pytest.raises(EvalInputError) as exc:
        load_bench(path)
    assert str(exc.value) == (
        f"{path}: item 2 (id 'p2'): field conversations[{k}].from is {found!r}, expected {want!r} (the question comes "
        "first, then the gold answer)"
    )


def test_eval_score_refuses_a_gpt_turn_first_instead_of_scoring_the_question(tmp_path):
    bench = tmp_path / "ptb-test.json"
    bench.write_text(json.dumps([item("p1"), item("p2", roles=("gpt", "human", "gpt"))]))
    pred = tmp_path / "ptb-test.jsonl"
    pred.write_text("".join(json.dumps({"question_id": r, "text": "NORM"}) + "\n" for r in ("p1", "p2")))
    result = runner.invoke(app, ["score", "--bench", str(bench), "--pred", str(pred)])
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"error: {bench}: item 2 (id 'p2'): field conversations[0].from is 'gpt', expected 'human' (the question "
        "comes first, then the gold answer)"
    ]
    assert json.loads(result.stdout[: result.stdout.rindex("}") + 1])["results"] == []


# --------------------------------------------------------------------------------------------------
# 3. `eval run` exits non-zero when a bench file cannot be scored, before the model is loaded
# --------------------------------------------------------------------------------------------------

BAD_BENCH = {
    "duplicate-ids": (json.dumps([item("p1"), item("p1", "MI")]), "item 2: duplicate id 'p1'"),
    "list-of-strings": (json.dumps(["NORM", "MI"]), "item 1: expected an object, got str"),
    "object": (json.dumps({"p1": item("p1")}, indent=1), "is one JSON object, expected a JSON list of records"),
    "empty-list": ("[]", "no gold items"),
    "gpt-first": (json.dumps([item("p1", roles=("gpt", "human", "gpt"))]), "conversations[0].from is 'gpt'"),
    "not-json": ("[{", "invalid JSON at line 1"),
}


@pytest.mark.parametrize("case", list(BAD_BENCH))
def test_eval_run_refuses_a_bench_file_it_cannot_score_in_one_line(tmp_path, model_dir, monkeypatch, case):
    text, problem = BAD_BENCH[case]
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "ptb-test.json").write_text(text)
    loaded = []
    monkeypatch.setattr("evl_ecg.models.load_adapter", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    out = tmp_path / "out"
    result = runner.invoke(app, run_args(model_dir, bench, out))
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"error: {bench / 'ptb-test.json'}: ") and problem in line, line
    assert "Traceback" not in result.output and not loaded and not out.exists()  # refused before any work


def test_eval_run_refuses_a_bench_folder_that_is_not_a_folder(tmp_path, model_dir):
    (tmp_path / "bench.json").write_text("[]")
    result = runner.invoke(app, run_args(model_dir, tmp_path / "bench.json", tmp_path / "out"))
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {tmp_path / 'bench.json'}: no such folder (--bench takes a folder of "
                                   "<subset>.json bench files)"]  # fmt: skip


def test_string_items_of_a_json_list_are_not_parsed_as_records(tmp_path):
    from evl_ecg.eval.run import read_bench_records

    path = tmp_path / "ptb-test.json"
    path.write_text(json.dumps([item("p1"), json.dumps(item("p2"))]))  # the second item is a string
    records, failed = read_bench_records(path)
    assert [r.id for r in records] == ["p1"]
    assert failed == [("ptb-test.json:2", f"{path}: item 2: record is a str, expected an object")]


def _fake_doc(n_results: int, errors: list[str]) -> dict[str, Any]:
    results = [
        {"subset": "ptb-test", "scorer": "strict", "metrics": {"AUC": 50.0 + i / 100}, "note": "x" * 200}
        for i in range(n_results)
    ]
    return {"format": 1, "results": results, "errors": errors, "likelihood": {}}


def test_eval_run_prints_its_whole_summary_as_json(tmp_path, monkeypatch):
    doc = _fake_doc(300, [])  # about 80,000 characters of JSON: it was cut at 20,000
    monkeypatch.setattr("evl_ecg.eval.run.evaluate_model", lambda *a, **k: doc)
    result = runner.invoke(app, run_args(tmp_path / "m", tmp_path / "b", tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert len(result.stdout) > 20_000
    summary = json.loads(result.stdout)
    assert summary == {"scores": str(tmp_path / "out" / "scores.json"), "results": doc["results"], "errors": [],
                       "likelihood": {}}  # fmt: skip


def test_eval_run_exits_non_zero_when_scoring_reports_errors(tmp_path, monkeypatch):
    errors = [f"{tmp_path}/ptb-test/predictions.jsonl: none of its 3 ids is in ptb-test; is it another subset's file?"]
    monkeypatch.setattr("evl_ecg.eval.run.evaluate_model", lambda *a, **k: _fake_doc(1, errors))
    result = runner.invoke(app, run_args(tmp_path / "m", tmp_path / "b", tmp_path / "out"))
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {errors[0]}"]
    assert json.loads(result.stdout)["errors"] == errors  # the summary still says what was scored


# --------------------------------------------------------------------------------------------------
# 3. A resume is keyed on the model's fingerprint, not on the folder's name
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_bench(tmp_path_factory) -> Path:
    """A 2-record synthetic ptb-test with its images (bench/ptb-test.json, images/ptb-test/...)."""
    from evl_ecg.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("faults-bench")
    build_corpus(root, n_train=0, n_bench=2, seed=0, size=(128, 96), progress=False)
    return root / "bench"


def test_eval_run_refuses_an_out_folder_written_for_another_model_of_the_same_name(tmp_path, model_dir, corpus_bench):
    out = tmp_path / "out"
    result = runner.invoke(app, run_args(model_dir, corpus_bench, out, "--scorer", "strict"))
    assert result.exit_code == 0, result.output
    rows = (out / "ptb-test" / "predictions.jsonl").read_text()
    assert len(rows.splitlines()) == 2
    other = Path(shutil.copytree(model_dir, tmp_path / "b" / "student"))  # same folder name, other model
    config = json.loads((other / "generation_config.json").read_text())
    config["max_length"] = 77
    (other / "generation_config.json").write_text(json.dumps(config))
    result = runner.invoke(app, run_args(other, corpus_bench, out, "--scorer", "strict"))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out} holds the evaluation of model {model_dir} (fingerprint ")
    assert f"not of {other} (" in line and "generation_config.json" in line and line.endswith("use another --out")
    assert (out / "ptb-test" / "predictions.jsonl").read_text() == rows  # nothing appended, nothing mixed
    result = runner.invoke(app, run_args(model_dir, corpus_bench, out, "--scorer", "strict"))
    assert result.exit_code == 0, result.output  # the same model resumes
    assert (out / "ptb-test" / "predictions.jsonl").read_text() == rows


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "unreadable model fingerprint"), ("[1, 2]", "no 'digest'")],
    ids=["json", "list"],
)
def test_a_corrupt_fingerprint_file_is_one_line_naming_it(tmp_path, model_dir, corpus_bench, text, problem):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_fingerprint.json").write_text(text)
    result = runner.invoke(app, run_args(model_dir, corpus_bench, out))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out / 'model_fingerprint.json'}: ") and problem in line
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------
# 5. Figures follow the umask
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_figures_get_mode_0666_less_the_umask(tmp_path, umask):
    from evl_ecg.eval import figures

    plt = figures._pyplot()
    fig = plt.figure(figsize=(1, 1))
    old = os.umask(umask)
    try:
        figures._save(fig, tmp_path / "fig.png", dpi=20)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fig.png").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
