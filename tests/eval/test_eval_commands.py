"""Bad input, `evl-ecg eval score` and `evl-ecg report` through typer's CliRunner, and the result tables."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from evl_ecg.eval.commands import app, report
from evl_ecg.eval.predictions import (
    EvalInputError,
    WrongSubsetError,
    align,
    load_bench,
    load_predictions,
    resolve_subset,
    run_from_path,
    subset_from_path,
)
from evl_ecg.eval.scoring import score_file
from evl_ecg.eval.tables import PAPER_ROWS

runner = CliRunner()
report_app = typer.Typer()
report_app.command()(report)

PTB_PROMPT = "Which superclasses (NORM, MI, STTC, CD, HYP) does this ECG show?"
CSN_PROMPT = "Which rhythm?\nA. Sinus rhythm\nB. Atrial fibrillation\nC. Sinus bradycardia\nD. Sinus tachycardia"


def bench_record(rid: str, prompt: Any, answer: Any) -> dict[str, Any]:
    human = prompt if isinstance(prompt, list) else "<image>\n" + prompt
    return {
        "id": rid,
        "image": f"x/{rid}.png",
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
    }


def pred_row(
    rid: str, text: str | None, prompt: Any = None, *, keys: tuple[str, str] = ("question_id", "text")
) -> dict:
    row: dict[str, Any] = {keys[0]: rid, "answer_id": "a", "model_id": "m", "metadata": {}}
    if text is not None:
        row[keys[1]] = text
    if prompt is not None:
        row["prompt"] = prompt
    return row


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def ptb_bench(tmp_path: Path) -> Path:
    recs = [
        bench_record("p1", PTB_PROMPT, "NORM"),
        bench_record("p2", PTB_PROMPT, "MI"),
        bench_record("p3", PTB_PROMPT, "CD"),
    ]
    return write_json(tmp_path / "bench" / "ptb-test.json", recs)


# --------------------------------------------------------------------------------------------------
# Files, subsets, bad input
# --------------------------------------------------------------------------------------------------


def test_subset_is_read_from_the_file_name_before_its_folders():
    assert subset_from_path("out/pulse/ptb-test/step-final.jsonl") == "ptb-test"
    assert subset_from_path("out/ptb-test/cpsc-test.jsonl") == "cpsc-test"
    assert subset_from_path("out/csn-test-no-cot/x.jsonl") == "csn-test-no-cot"
    assert subset_from_path("out/ptb-test-report/x.jsonl") is None  # the report set is not ptb-test
    assert subset_from_path("out/run/x.jsonl") is None


def test_explicit_subset_must_agree_with_the_path():
    assert resolve_subset("preds/answers.jsonl", "ptb-test", what="prediction") == "ptb-test"
    with pytest.raises(WrongSubsetError, match="cpsc-test"):
        resolve_subset("preds/cpsc-test/answers.jsonl", "ptb-test", what="prediction")
    with pytest.raises(EvalInputError, match="--subset"):
        resolve_subset("preds/answers.jsonl", None, what="prediction")


def test_character_list_prompt_is_joined_and_answer_list_kept(tmp_path):
    path = write_json(tmp_path / "ecgqa-test.json", [bench_record("q", list("Options: yes, no"), ["yes"])])
    (item,) = load_bench(path)
    assert item.prompt == "Options: yes, no" and item.answer == ["yes"]


def test_baseline_harness_keys_and_dict_prompt_are_read(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pred_row("p1", "NORM", {"prompt": PTB_PROMPT}, keys=("id", "response"))])
    (row,), issues = load_predictions(path)
    assert (row.id, row.text, row.prompt, issues) == ("p1", "NORM", PTB_PROMPT, [])


def test_bad_rows_are_counted_never_skipped_silently(tmp_path):
    bench = load_bench(ptb_bench(tmp_path))
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            pred_row("p1", "NORM"),
            pred_row("p1", "MI"),  # duplicate: the first row counts
            pred_row("zzz", "MI"),  # unknown id
            pred_row("p2", ""),  # empty text
            "{not json",  # malformed
        ],
    )
    rows, read_issues = load_predictions(path)
    pulse = score_file(bench, rows, subset="ptb-test", scorer="pulse", read_issues=read_issues)
    counts = pulse["input"]["counts"]
    assert counts == {
        "malformed": 1,
        "unknown_id": 1,
        "duplicate_id": 1,
        "empty_text": 1,
        "prompt_mismatch": 0,
        "missing_prediction": 1,  # p3
    }
    assert pulse["n_scored"] == 2 and pulse["n_gold"] == 3 and pulse["n_rows"] == 5  # pulse: N shrinks
    assert any("no prediction" in w for w in pulse["warnings"])
    strict = score_file(bench, rows, subset="ptb-test", scorer="strict", read_issues=read_issues)
    assert strict["n_scored"] == 3  # strict: the missing item counts, as an empty answer
    assert [it["pred"] for it in strict["items"]] == [["NORM"], [], []]


def test_prompt_mismatch_is_scored_by_pulse_and_counted_wrong_by_strict(tmp_path):
    bench = load_bench(ptb_bench(tmp_path))
    rows, _ = load_predictions(
        write_jsonl(
            tmp_path / "p.jsonl",
            [pred_row("p1", "NORM", PTB_PROMPT), pred_row("p2", "MI", "Another question"), pred_row("p3", "CD")],
        )
    )
    pulse = score_file(bench, rows, subset="ptb-test", scorer="pulse")
    strict = score_file(bench, rows, subset="ptb-test", scorer="strict")
    assert pulse["input"]["counts"]["prompt_mismatch"] == 1
    assert pulse["metrics"]["HL"] == 0.0
    assert [it["pred"] for it in strict["items"]] == [["NORM"], [], ["CD"]]
    assert strict["parse"]["counted_wrong"] == {"missing": 0, "prompt_mismatch": 1}


def test_another_subsets_file_is_refused(tmp_path):
    bench = load_bench(ptb_bench(tmp_path))
    other = [pred_row("p1", "A", CSN_PROMPT), pred_row("p2", "B", CSN_PROMPT), pred_row("p3", "C", CSN_PROMPT)]
    rows, _ = load_predictions(write_jsonl(tmp_path / "p.jsonl", other))
    with pytest.raises(WrongSubsetError, match="prompt"):
        align(bench, rows, subset="ptb-test")
    rows, _ = load_predictions(write_jsonl(tmp_path / "q.jsonl", [pred_row("csn-1", "A")]))
    with pytest.raises(WrongSubsetError, match="none of its 1 ids"):
        align(bench, rows, subset="ptb-test")


def test_bad_gold_file_is_an_error(tmp_path):
    dup = [bench_record("p1", PTB_PROMPT, "NORM"), bench_record("p1", PTB_PROMPT, "MI")]
    with pytest.raises(EvalInputError, match="duplicate id 'p1'"):
        load_bench(write_json(tmp_path / "ptb-test.json", dup))
    with pytest.raises(EvalInputError, match="conversations"):
        load_bench(write_json(tmp_path / "cpsc-test.json", [{"id": "x", "conversations": []}]))


def test_run_is_read_from_a_runs_method_seed_path():
    assert run_from_path("runs/evl-ecg/seed3/scores.json") == ("evl-ecg", 3)
    assert run_from_path("runs/sft/seed_0/pulse/ptb-test/step-final.jsonl") == ("sft", 0)
    assert run_from_path("scores.json") == (None, None)


# --------------------------------------------------------------------------------------------------
# evl-ecg eval score
# --------------------------------------------------------------------------------------------------


def test_score_file_prints_both_scorers(tmp_path):
    bench = ptb_bench(tmp_path)
    pred = write_jsonl(
        tmp_path / "out" / "ptb-test" / "step-final.jsonl",
        [pred_row("p1", "ABNORMAL"), pred_row("p2", "MI"), pred_row("p3", "CD")],
    )
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["score", "--bench", str(bench), "--pred", str(pred), "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    pulse, strict = doc["results"]
    assert (pulse["scorer"], strict["scorer"]) == ("pulse", "strict")
    # pulse: "ABNORMAL" gives NORM, so every cell is right; strict: p1 misses NORM -> 1 wrong cell of 3 x 5
    assert pulse["metrics"] == {"AUC": 100.0, "F1": 100.0, "HL": 0.0}
    assert strict["metrics"]["HL"] == round(100 * 1 / 15, 1)  # 6.7
    assert doc["errors"] == []


def test_score_directory_pairs_files_by_subset_and_shares_the_fallback_generator(tmp_path):
    write_json(tmp_path / "bench" / "mmmu-ecg.json", [bench_record("m1", "Q? A. a B. b C. c D. d", "A")])
    write_json(tmp_path / "bench" / "csn-test-no-cot.json", [bench_record("c1", CSN_PROMPT, "B. Atrial fibrillation")])
    ptb_bench(tmp_path)
    preds = tmp_path / "runs" / "evl" / "seed1"
    write_jsonl(preds / "csn-test-no-cot" / "step-final.jsonl", [pred_row("c1", "unsure")])
    write_jsonl(preds / "mmmu-ecg" / "step-final.jsonl", [pred_row("m1", "unsure")])
    write_jsonl(preds / "notes" / "scratch.jsonl", [pred_row("x", "y")])
    result = runner.invoke(
        app, ["score", "--bench", str(tmp_path / "bench"), "--pred", str(preds), "--scorer", "pulse"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["method"], doc["seed"]) == ("evl", 1)
    # PULSE's order: MMMU first (draw from A-D), then CSN (draw from A-H), one generator
    ref = random.Random(42)
    expected = [ref.choice(list("ABCD")), ref.choice(list("ABCDEFGH"))]
    assert [r["subset"] for r in doc["results"]] == ["mmmu-ecg", "csn-test-no-cot"]
    assert [r["items"][0]["pred"] for r in doc["results"]] == expected
    assert len(doc["unpaired"]) == 1 and "scratch.jsonl" in doc["unpaired"][0]
    assert "names no ECGBench subset" in result.stderr


def test_score_reports_missing_gold_and_exits_non_zero(tmp_path):
    bench = ptb_bench(tmp_path).parent
    write_jsonl(tmp_path / "p" / "cpsc-test" / "a.jsonl", [pred_row("c", "AF")])
    result = runner.invoke(app, ["score", "--bench", str(bench), "--pred", str(tmp_path / "p")])
    assert result.exit_code == 1
    assert "no gold file for cpsc-test" in result.stderr


def test_score_wrong_subset_is_one_line_error(tmp_path):
    bench = ptb_bench(tmp_path)
    pred = write_jsonl(tmp_path / "cpsc-test.jsonl", [pred_row("p1", "NORM")])
    result = runner.invoke(app, ["score", "--bench", str(bench), "--pred", str(pred), "--subset", "ptb-test"])
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cpsc-test" in errors[0]


def test_score_rejects_an_unknown_scorer(tmp_path):
    result = runner.invoke(app, ["score", "--bench", "b", "--pred", "p", "--scorer", "loose"])
    assert result.exit_code != 0


# --------------------------------------------------------------------------------------------------
# evl-ecg report
# --------------------------------------------------------------------------------------------------


def score_doc(path: Path, auc: float | None, acc: float, scorer: str = "pulse") -> Path:
    results = [
        {"subset": "ptb-test", "scorer": scorer, "metrics": {"AUC": auc, "F1": 60.0, "HL": 15.0}},
        {"subset": "csn-test-no-cot", "scorer": scorer, "metrics": {"Acc": acc}},
    ]
    return write_json(path, {"format": 1, "results": results})


def test_report_averages_seeds_and_adds_reference_rows(tmp_path):
    a = score_doc(tmp_path / "runs" / "evl" / "seed1" / "scores.json", 70.0, 80.0)
    b = score_doc(tmp_path / "runs" / "evl" / "seed2" / "scores.json", 72.0, 90.0)
    out = tmp_path / "report"
    result = runner.invoke(report_app, [str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())
    run = next(r for r in table["rows"] if r["source"] == "run")
    assert (run["method"], run["scorer"], run["seeds"]) == ("evl", "pulse", [1, 2])
    # mean of 70 and 72; sample std sqrt(((70-71)^2 + (72-71)^2) / 1) = sqrt(2)
    assert run["cells"]["ptb-test/AUC"] == {"mean": 71.0, "std": round(math.sqrt(2), 2), "n": 2, "scorer": "pulse"}
    assert run["cells"]["ptb-test/F1"]["std"] == 0.0
    assert "code15-test/AUC" not in run["cells"]
    md = (out / "results.md").read_text()
    assert "| evl | pulse | 1,2 | 71.0 ± 1.4 | 60.0 ± 0.0 | 15.0 ± 0.0 | – |" in md
    assert "85.0 ± 7.1" in md  # CSN: mean 85, std sqrt(50)
    paper = {r["method"]: r for r in table["rows"] if r["source"] == "paper"}
    assert set(paper) == set(PAPER_ROWS)
    assert paper["EVL-ECG"]["cells"]["ptb-test/AUC"]["mean"] == 75.2
    assert paper["PULSE-7B (teacher)"]["cells"]["mmmu-ecg/Acc"]["mean"] == 58.0
    evl = "| EVL-ECG | paper | paper | 75.2 | 63.3 | 16.0 | 86.4 | 78.4 | 6.5 | 64.8 | 66.8 | 33.6 | 12.3 | 89.7 |"
    assert evl + " 77.1 | 48.5 |" in md


def test_report_without_reference_rows_shows_nan_and_tags_scorers(tmp_path):
    a = score_doc(tmp_path / "runs" / "sft" / "seed0" / "pulse.json", None, 50.0)
    b = score_doc(tmp_path / "runs" / "sft" / "seed0" / "strict.json", 40.0, 45.0, scorer="strict")
    out = tmp_path / "r"
    result = runner.invoke(report_app, [str(a), str(b), "--out", str(out), "--no-reference-rows"])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["scorer"]) for r in table["rows"]] == [("sft", "pulse"), ("sft", "strict")]
    assert table["rows"][0]["cells"]["ptb-test/AUC"]["mean"] is None
    assert "| sft | pulse | 0 | NaN |" in (out / "results.md").read_text()


def test_report_refuses_two_files_claiming_the_same_number(tmp_path):
    a = score_doc(tmp_path / "runs" / "sft" / "seed0" / "a.json", 1.0, 2.0)
    b = score_doc(tmp_path / "runs" / "sft" / "seed0" / "b.json", 1.0, 2.0)
    result = runner.invoke(report_app, [str(a), str(b), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "also in" in result.stderr


def test_gold_without_any_label_cannot_be_scored_by_pulse(tmp_path):
    bench = load_bench(write_json(tmp_path / "ptb-test.json", [bench_record("p1", PTB_PROMPT, "no label here")]))
    rows, _ = load_predictions(write_jsonl(tmp_path / "p.jsonl", [pred_row("p1", "NORM")]))
    with pytest.raises(EvalInputError, match="no gold labels"):
        score_file(bench, rows, subset="ptb-test", scorer="pulse")


# --------------------------------------------------------------------------------------------------
# `evl-ecg eval run`: the model folder is only read (unless --update-card); degenerate likelihoods are marked
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_bench(tmp_path_factory):
    """A 3-record synthetic ``ptb-test`` (and the other subsets, not run) with its images."""
    from evl_ecg.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("run-bench")
    build_corpus(root, n_train=0, n_bench=3, seed=0, progress=False)
    return root


@pytest.fixture
def model_dir(tmp_path):
    """A copy of the shipped tiny teacher (an evl-ecg model card included)."""
    import shutil

    from evl_ecg.models.tiny import shipped_teacher

    src = shipped_teacher()
    if src is None:
        pytest.skip("no shipped tiny teacher")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the folders, as ``"dir"``), by relative path."""
    import hashlib

    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def set_read_only(root: Path, read_only: bool) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod((0o555 if read_only else 0o755) if p.is_dir() else (0o444 if read_only else 0o644))


def eval_run_args(model: Path, bench_root: Path, out: Path, *extra: str) -> list[str]:
    bench = bench_root / "bench"
    return ["run", "--model", str(model), "--bench", str(bench), "--out", str(out), "--subset", "ptb-test",
            "--max-new-tokens", "2", "--batch-size", "4", *extra]  # fmt: skip


def test_eval_run_leaves_the_model_folder_byte_identical_even_read_only(run_bench, model_dir, tmp_path):
    before = tree_digest(model_dir)
    set_read_only(model_dir, True)  # as root chmod stops no write: the byte comparison below still holds
    try:
        result = runner.invoke(app, eval_run_args(model_dir, run_bench, tmp_path / "out"))
    finally:
        set_read_only(model_dir, False)
    assert result.exit_code == 0, result.output
    assert tree_digest(model_dir) == before
    doc = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert {r["scorer"] for r in doc["results"]} == {"pulse", "strict"}
    # the degenerate flag agrees with the probabilities written beside it, checked here by hand
    lik = doc["likelihood"]["ptb-test"]
    probs = json.loads((tmp_path / "out" / "ptb-test" / "likelihood.json").read_text())["probs"]
    columns = list(zip(*probs, strict=True))
    want = any(min(c) > 0.99 or max(c) < 0.01 or max(c) - min(c) < 1e-4 for c in columns)
    assert lik["degenerate"] is want and lik["normalization"] == "null"
    assert ("\u2020 ptb-test:" in result.stderr) is want


def test_eval_run_update_card_adds_the_scores_to_the_card(run_bench, model_dir, tmp_path):
    result = runner.invoke(app, eval_run_args(model_dir, run_bench, tmp_path / "out", "--update-card"))
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "scores.json").read_text())
    facts = json.loads((model_dir / "card.json").read_text())
    assert facts["scores"] == doc and facts["scores"]["bench"] == str(run_bench / "bench")
    strict = next(r for r in doc["results"] if r["scorer"] == "strict")
    assert f"| ptb-test | strict | AUC {strict['metrics']['AUC']}" in (model_dir / "README.md").read_text()


@pytest.mark.parametrize("how", ["chmod", "patched"])
def test_eval_run_update_card_on_a_read_only_folder_fails_after_writing_the_scores(
    run_bench, model_dir, tmp_path, monkeypatch, how
):
    import errno
    import os

    if how == "chmod" and os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop writes (the 'patched' case covers it)")
    if how == "patched":

        def refuse(path, data):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr("evl_ecg.models.card.atomic_write_bytes", refuse)
    before = tree_digest(model_dir)
    out = tmp_path / "out"
    set_read_only(model_dir, how == "chmod")
    try:
        result = runner.invoke(app, eval_run_args(model_dir, run_bench, out, "--update-card"))
    finally:
        set_read_only(model_dir, False)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    scores = out / "scores.json"
    assert errors == [
        f"error: cannot update the model card in {model_dir}: Permission denied; the scores are in {scores}"
    ]
    assert json.loads((out / "scores.json").read_text())["results"]  # scored and written first
    assert tree_digest(model_dir) == before


def test_eval_run_marks_degenerate_likelihoods_and_keys_the_cache_on_the_normalization(
    run_bench, model_dir, tmp_path, monkeypatch, caplog
):
    import numpy as np

    from evl_ecg.eval.likelihood import METHODS

    calls = []

    def fake_label_scores(adapter, records, loader, vocabulary, **kwargs):
        calls.append(kwargs["normalization"])
        probs = np.array([[0.995, 0.2, 0.3, 0.4, 0.5], [0.999, 0.6, 0.1, 0.2, 0.3], [0.9999, 0.1, 0.8, 0.5, 0.4]])
        return [r.id for r in records], probs, np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]])

    monkeypatch.setattr("evl_ecg.eval.run.label_scores", fake_label_scores)
    out = tmp_path / "out"
    args = eval_run_args(model_dir, run_bench, out, "--likelihood-normalization", "softmax")
    with caplog.at_level("WARNING", logger="evl_ecg.eval.run"):
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lik = json.loads((out / "scores.json").read_text())["likelihood"]["ptb-test"]
    assert lik["degenerate"] is True and lik["degenerate_classes"] == {"NORM": "all 3 above 0.99 (min 0.9950)"}
    assert lik["normalization"] == "softmax" and lik["method"] == METHODS["softmax"]
    assert json.loads(result.stdout)["likelihood"]["ptb-test"]["degenerate"] is True
    # by hand: AUC NORM 0 (its positive has the lowest of 0.995 < 0.999 < 0.9999), MI, STTC, CD 1, HYP undefined
    # -> 0.75; ECE over the 15 cells, bins of 0.1: (2 * (0.1 + 0.2 + 0.3 + 0.4) + 0.4 + 0.2) / 15 for the low bins
    # and 3/15 * |1/3 - (0.995 + 0.999 + 0.9999) / 3| for [0.9, 1] -> 0.30626
    assert lik["auc"] == pytest.approx(0.75) and lik["ece"] == pytest.approx(0.306260, abs=1e-6)
    assert "| ptb-test | 3 | 0.750\u2020 | 0.306\u2020 | softmax |" in result.stderr
    assert "\u2020 ptb-test: label probabilities are degenerate (NORM: all 3 above 0.99" in result.stderr
    assert any("ptb-test likelihood: label probabilities are degenerate" in r.getMessage() for r in caplog.records)
    assert calls == ["softmax"]
    runner.invoke(app, args)
    assert calls == ["softmax"]  # same normalization: likelihood.json reused
    result = runner.invoke(app, eval_run_args(model_dir, run_bench, out))
    assert result.exit_code == 0, result.output
    assert calls == ["softmax", "null"]  # another normalization: recomputed


def test_evaluate_model_refuses_bad_options_before_any_work(tmp_path):
    from evl_ecg.eval.run import evaluate_model

    with pytest.raises(ValueError, match="needs a model folder"):
        evaluate_model(object(), tmp_path, tmp_path / "out", update_card=True)
    with pytest.raises(ValueError, match="normalization"):
        evaluate_model(object(), tmp_path, tmp_path / "out", likelihood_normalization="sum")
    assert not (tmp_path / "out").exists()
    result = runner.invoke(
        app, ["run", "--model", "m", "--bench", "b", "--out", "o", "--likelihood-normalization", "sum"]
    )
    assert result.exit_code != 0 and "--likelihood-normalization" in result.output
