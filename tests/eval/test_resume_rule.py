"""`evl-ecg eval run` resumes only what the same settings wrote (issue 30): a run killed part-way and rerun with another
--max-new-tokens, --batch-size or bench file is refused in one line naming the setting and both values (no rows
mixed), --fresh starts again, the same settings resume to the rows of one uninterrupted run; a folder holding files
an evaluation does not write is refused. And `eval score` reads a .jsonl line by line, naming the line that holds
an array."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.eval.commands import app

runner = CliRunner()
ADVICE = "use --fresh to start again, or another --out"
PTB_PROMPT = "Which superclasses (NORM, MI, STTC, CD, HYP) does this ECG show?"


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """A 3-record synthetic ptb-test with its images (bench/ptb-test.json, images/ptb-test/...)."""
    from evl_ecg.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("resume-bench")
    build_corpus(root, n_train=0, n_bench=3, seed=0, size=(128, 96), progress=False)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A copy of the shipped tiny teacher."""
    from evl_ecg.models.tiny import shipped_teacher

    src = shipped_teacher()
    if src is None:
        pytest.skip("no shipped tiny teacher")
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("resume-model") / "model"))


@pytest.fixture(scope="module")
def whole(model_dir, bench_root, tmp_path_factory) -> dict[str, str]:
    """The rows of one uninterrupted run with --max-new-tokens 2 (by id, answer_id aside)."""
    out = tmp_path_factory.mktemp("resume-whole") / "ev"
    result = runner.invoke(app, run_args(model_dir, bench_root / "bench", out))
    assert result.exit_code == 0, result.output
    return rows_of(out)


def run_args(model: Path, bench: Path, out: Path, *extra: str, tokens: str = "2", batch: str = "4") -> list[str]:
    return ["run", "--model", str(model), "--bench", str(bench), "--out", str(out), "--subset", "ptb-test",
            "--max-new-tokens", tokens, "--batch-size", batch, "--no-likelihood", "--scorer", "strict",
            *extra]  # fmt: skip


def predictions(out: Path) -> Path:
    return out / "ptb-test" / "predictions.jsonl"


def rows_of(out: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in predictions(out).read_text().splitlines() if line.strip()]
    ids = [r["question_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"a row written twice: {ids}"
    return {r["question_id"]: json.dumps({k: v for k, v in r.items() if k != "answer_id"}) for r in rows}


def killed_after_one_row(model: Path, bench: Path, out: Path) -> str:
    """What a run SIGKILLed after its first row leaves: that row, no scores.json. Returns the rows' text."""
    result = runner.invoke(app, run_args(model, bench, out))
    assert result.exit_code == 0, result.output
    first = predictions(out).read_text().splitlines(keepends=True)[0]
    predictions(out).write_text(first)
    (out / "scores.json").unlink()
    return first


@pytest.mark.parametrize(
    ("option", "value", "setting", "recorded"),
    [("--max-new-tokens", "3", "max_new_tokens", "2"), ("--batch-size", "1", "batch_size", "4")],
)
def test_a_killed_run_rerun_with_another_setting_is_refused_naming_it_and_both_values(
    tmp_path, model_dir, bench_root, option, value, setting, recorded
):
    out = tmp_path / "ev"
    rows = killed_after_one_row(model_dir, bench_root / "bench", out)
    args = run_args(model_dir, bench_root / "bench", out)
    args[args.index(option) + 1] = value
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert error_lines(result) == [f"error: {out}: was written with {setting}={recorded}, now {value}; {ADVICE}"]
    assert predictions(out).read_text() == rows and not (out / "scores.json").exists()  # nothing appended or mixed


def test_fresh_starts_again_with_the_new_setting(tmp_path, model_dir, bench_root):
    out = tmp_path / "ev"
    killed_after_one_row(model_dir, bench_root / "bench", out)
    result = runner.invoke(app, run_args(model_dir, bench_root / "bench", out, "--fresh", tokens="3"))
    assert result.exit_code == 0, result.output
    fresh = tmp_path / "ref"
    runner.invoke(app, run_args(model_dir, bench_root / "bench", fresh, tokens="3"))
    assert rows_of(out) == rows_of(fresh)  # every row generated again with 3 tokens, none kept from the first run
    assert json.loads((out / "resume-key.json").read_text())["settings"]["max_new_tokens"] == 3
    again = runner.invoke(app, run_args(model_dir, bench_root / "bench", out, tokens="3"))
    assert again.exit_code == 0, again.output  # the new key is the one a rerun is compared with


def test_the_same_settings_resume_to_the_rows_of_one_uninterrupted_run(tmp_path, model_dir, bench_root, whole):
    out = tmp_path / "ev"
    first = killed_after_one_row(model_dir, bench_root / "bench", out)
    result = runner.invoke(app, run_args(model_dir, bench_root / "bench", out))
    assert result.exit_code == 0, result.output
    assert predictions(out).read_text().startswith(first)  # the row already written is kept, not redone
    assert rows_of(out) == whole and len(whole) == 3
    assert json.loads((out / "scores.json").read_text())["results"]


def test_a_bench_file_whose_content_changed_is_refused_naming_it(tmp_path, model_dir, bench_root):
    out = tmp_path / "ev"
    bench = Path(shutil.copytree(bench_root, tmp_path / "c")) / "bench"
    killed_after_one_row(model_dir, bench, out)
    records = json.loads((bench / "ptb-test.json").read_text())
    records[2]["conversations"][1]["value"] = "NORM" if records[2]["conversations"][1]["value"] != "NORM" else "MI"
    (bench / "ptb-test.json").write_text(json.dumps(records))
    result = runner.invoke(app, run_args(model_dir, bench, out))
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out}: was written with bench:ptb-test=sha256:") and ", now sha256:" in line


def test_an_evaluation_without_a_key_is_refused_unless_fresh(tmp_path, model_dir, bench_root):
    out = tmp_path / "ev"
    killed_after_one_row(model_dir, bench_root / "bench", out)
    (out / "resume-key.json").unlink()  # as an evl-ecg before keys wrote it
    result = runner.invoke(app, run_args(model_dir, bench_root / "bench", out))
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out}: holds output without a resume key (resume-key.json), so the settings")
    assert runner.invoke(app, run_args(model_dir, bench_root / "bench", out, "--fresh")).exit_code == 0


@pytest.mark.parametrize("foreign", ["notes.txt", "ptb-test/mine.jsonl", "model.safetensors"])
def test_a_folder_holding_files_an_evaluation_does_not_write_is_refused_and_left_alone(
    tmp_path, model_dir, bench_root, foreign
):
    out = tmp_path / "ev"
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine")
    for fresh in ((), ("--fresh",)):
        result = runner.invoke(app, run_args(model_dir, bench_root / "bench", out, *fresh))
        assert result.exit_code == 1, result.output
        assert error_lines(result) == [
            f"error: {out}: holds files `evl-ecg eval run` does not write ({foreign}); use another --out"
        ]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [foreign]
    assert (out / foreign).read_text() == "mine"


@pytest.mark.parametrize("option", ["--max-new-tokens", "--batch-size"])
def test_zero_tokens_or_batch_is_a_usage_error_naming_the_option(tmp_path, option):
    args = ["run", "--model", "m", "--bench", "b", "--out", str(tmp_path / "o"), option, "0"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


# ---------------------------------------------------------------------------------------------------------------
# `eval score` reads a .jsonl line by line
# ---------------------------------------------------------------------------------------------------------------


def _bench(tmp_path: Path) -> Path:
    def record(rid: str, answer: str) -> dict:
        return {"id": rid, "image": f"x/{rid}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + PTB_PROMPT}, {"from": "gpt", "value": answer}]}  # fmt: skip

    path = tmp_path / "bench" / "ptb-test.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([record("p1", "NORM"), record("p2", "MI"), record("p3", "CD")]))
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _score(bench: Path, pred: Path):
    return runner.invoke(app, ["score", "--bench", str(bench), "--pred", str(pred), "--scorer", "strict"])


def test_score_names_line_2_of_a_jsonl_that_holds_an_array(tmp_path):
    bench = _bench(tmp_path)
    pred = _jsonl(tmp_path / "ptb-test.jsonl", [{"question_id": "p1", "text": "NORM"}, ["p2", "MI"],
                                                 {"question_id": "p3", "text": "CD"}])  # fmt: skip
    result = _score(bench, pred)
    assert result.exit_code == 0, result.output  # the bad line is counted and named, the others scored
    doc = json.loads(result.stdout)
    (strict,) = doc["results"]
    assert strict["input"]["counts"]["malformed"] == 1 and strict["n_scored"] == 3
    assert f"{pred}:2: holds an array, expected an object (one prediction per line)" in json.dumps(doc)
    # and the warning on the screen names the line and what it holds, not only a count
    assert f"1 rows: malformed (not scored): {pred}:2: holds an array" in result.stderr


@pytest.mark.parametrize("first", ["array", "object"])
def test_score_of_a_jsonl_whose_lines_hold_arrays_names_the_line_not_extra_data(tmp_path, first):
    bench = _bench(tmp_path)
    head = ["p1", "NORM"] if first == "array" else {"question_id": "p1", "text": "NORM"}
    pred = _jsonl(tmp_path / "ptb-test.jsonl", [head, ["p2", "MI"], ["p3", "CD"]])
    result = _score(bench, pred)
    assert "Extra data" not in result.output and "Traceback" not in result.output
    if first == "array":  # no line is a prediction row: one error naming the first line and what it holds
        assert result.exit_code == 1
        assert error_lines(result) == [
            f"error: {pred}:1: holds an array, expected an object (one prediction per line); none of its 3 line(s) "
            "is a prediction row"
        ]
    else:
        assert result.exit_code == 0, result.output
        text = json.dumps(json.loads(result.stdout))
        assert f"{pred}:2: holds an array" in text and f"{pred}:3: holds an array" in text


def test_a_jsonl_bench_file_names_the_line_that_holds_an_array(tmp_path):
    rows = json.loads(_bench(tmp_path).read_text())
    bench = _jsonl(tmp_path / "gold" / "ptb-test.jsonl", [rows[0], [rows[1]], rows[2]])
    pred = _jsonl(tmp_path / "ptb-test.jsonl", [{"question_id": "p1", "text": "NORM"}])
    result = _score(bench, pred)
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {bench}: line 2: holds an array, expected an object (one record per line)"]
