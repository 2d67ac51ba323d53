"""The `pulse` scorer against PULSE's own scorer on hand-written trap files (tests/eval/fixtures/pulse_traps/).

Every expected number below is what PULSE's ``evaluation/evaluate_ecgbench.py`` at commit
a439b6c961c737b44866af4b7cf1ccf0c3a75293 (AIMedLab/PULSE) printed for the fixture: its ``eval_*`` functions run
unchanged on the fixture folders, except for two edits needed to run it at all (the missing ``#`` of line 56 and
the gold paths). It was run with scikit-learn 1.2.2 / numpy 1.26.4 (PULSE's pin) and again with scikit-learn 1.9.1 /
numpy 2.4.6; both gave the same numbers, except where a test says otherwise. PULSE prints multi-label results as
``round(x*100, 1)`` and accuracies as fractions (written here x 100).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.eval.commands import app
from evl_ecg.eval.scores import score_paths
from evl_ecg.eval.scoring import ScoreOptions

TRAPS = Path(__file__).parent / "fixtures" / "pulse_traps"
MMMU_BENCH = TRAPS / "mmmu_bench"


def score(case: str, *, bench: Path | None = None, scorer: str = "pulse", official_counts: bool = False) -> dict:
    return score_paths(
        bench or TRAPS / case / "bench",
        TRAPS / case / "pred",
        scorer=scorer,
        options=ScoreOptions(official_counts=official_counts),
    )


def only(doc: dict) -> dict:
    assert doc["errors"] == [] and len(doc["results"]) == 1, doc["errors"]
    return doc["results"][0]


# --------------------------------------------------------------------------------------------------
# A. One gold class: sklearn scores a binary problem; PULSE keeps the first F1 value (the negative label's)
# --------------------------------------------------------------------------------------------------


def test_a1_one_gold_class_all_abnormal_keeps_the_negative_labels_f1():
    r = only(score("a1_one_class_all_abnormal"))
    # PULSE a439b6c: "f1 0.0 auc nan hl 60.0" (before the fix we said F1 28.6: the mean of 0 and 4/7)
    assert r["metrics"] == {"AUC": None, "F1": 0.0, "HL": 60.0}
    assert r["parse"]["one_class_f1_label"] == "negative"
    assert r["per_class"]["ABNORMAL"]["f1"] == 57.1  # the class's own F1, 2*2/(2*2+0+3), for the reader
    assert any("negative label" in w for w in r["warnings"])


def test_a2_one_gold_class_with_unlabelled_rows_gives_the_negative_labels_f1_not_zero():
    r = only(score("a2_one_class_with_unlabelled_rows"))
    # PULSE a439b6c: "f1 50.0 auc 58.3 hl 40.0" (before: F1 58.3, the mean of 1/2 and 2/3)
    assert r["metrics"] == {"AUC": 58.3, "F1": 50.0, "HL": 40.0}
    assert r["per_class"]["NORM"]["f1"] == 66.7


# --------------------------------------------------------------------------------------------------
# B. Exact .x5 ties: PULSE rounds numpy float64 values (numpy's scaled rounding)
# --------------------------------------------------------------------------------------------------


def test_b_f1_tie_rounds_as_numpy_does():
    r = only(score("b_f1_tie_0_8045"))
    # F1 = mean(1/2, 3/4, 7/8, 15/16, 24/25) = 0.8045 exactly; PULSE a439b6c: "f1 80.4 auc 83.3 hl 10.6"
    # (before: F1 80.5, Python's round of the float 80.45000000000000284)
    assert r["metrics"] == {"AUC": 83.3, "F1": 80.4, "HL": 10.6}


def test_b_one_class_hamming_loss_tie_rounds_as_numpy_under_pulses_scikit_learn(tmp_path):
    # Generated, not a fixture: the tie needs 2,000 rows. CODE-15% gold all ABNORMAL, 391 rows predicted ABNORMAL,
    # so HL = 1609/2000 = 0.8045. With one class, scikit-learn 1.2.2 (PULSE's pin) returns HL as a numpy float64 and
    # PULSE a439b6c prints "hl 80.4"; scikit-learn 1.9.1 returns a Python float there and the same code prints 80.5.
    # We follow the pin. (Before: 80.5.)
    human = {"from": "human", "value": "<image>\nNORM or ABNORMAL?"}
    gold = [{"id": f"h{i}", "conversations": [human, {"from": "gpt", "value": "ABNORMAL"}]} for i in range(2000)]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "code15-test.json").write_text(json.dumps(gold), encoding="utf-8")
    pred = tmp_path / "pred" / "code15-test" / "step-final.jsonl"
    pred.parent.mkdir(parents=True)
    rows = [{"question_id": f"h{i}", "text": "ABNORMAL" if i < 391 else "NORM"} for i in range(2000)]
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = only(score_paths(tmp_path / "bench", tmp_path / "pred", scorer="pulse"))
    assert r["metrics"] == {"AUC": None, "F1": 0.0, "HL": 80.4}


# --------------------------------------------------------------------------------------------------
# C. Lines end at \n only (PULSE: `for line in f`), not at U+2028 / U+0085 inside an answer
# --------------------------------------------------------------------------------------------------


def test_c_unicode_line_separators_inside_answers_do_not_split_rows():
    raw = (TRAPS / "c_unicode_line_separators" / "pred" / "ptb-test" / "step-final.jsonl").read_bytes()
    assert "\u2028".encode() in raw and "\u0085".encode() in raw  # written unescaped (ensure_ascii=False)
    r = only(score("c_unicode_line_separators"))
    # PULSE a439b6c: "f1 66.7 auc 83.3 hl 12.5" on all 4 rows (before: 2 rows broken into 5 malformed lines,
    # N = 2, and AUC 100.0 / F1 100.0 / HL 0.0)
    assert r["metrics"] == {"AUC": 83.3, "F1": 66.7, "HL": 12.5}
    assert r["n_scored"] == 4 and r["n_rows"] == 4
    assert r["input"]["counts"]["malformed"] == 0
    assert [it["pred"] for it in r["items"]] == [["NORM"], ["NORM"], ["CD", "HYP"], ["STTC"]]


# --------------------------------------------------------------------------------------------------
# Listed differences: a row without a text key, ECG-QA gold with a leading space, draws of a skipped file
# --------------------------------------------------------------------------------------------------


def test_d1_row_without_text_takes_the_previous_rows_labels_in_pulse_only():
    r = only(score("d1_row_without_text"))
    # PULSE a439b6c: "f1 38.9 auc 61.1 hl 33.3" (before: rows 2 and 4 empty, AUC 75.0 / F1 55.6 / HL 16.7)
    assert r["metrics"] == {"AUC": 61.1, "F1": 38.9, "HL": 33.3}
    assert [it["pred"] for it in r["items"]] == [["NORM"], ["NORM"], ["CD"], ["CD"]]
    assert r["parse"]["reused_previous_prediction"] == 2
    assert r["input"]["counts"]["empty_text"] == 2
    strict = only(score("d1_row_without_text", scorer="strict"))
    assert [it["pred"] for it in strict["items"]] == [["NORM"], [], ["CD"], []]  # strict: empty answers


def test_d2_mcq_row_without_text_takes_the_previous_letter_and_draws_nothing():
    r = only(score("d2_row_without_text_mmmu", bench=MMMU_BENCH))
    # PULSE a439b6c: "Accuracy: 1.0" (before: 99.0, row 2 drew a letter and rows 3-4 got the next draws)
    assert r["metrics"] == {"Acc": 100.0}
    draws = random.Random(42)
    d = [draws.choice("ABCD") for _ in range(2)]
    assert [(it["pred"], it["rule"]) for it in r["items"][:4]] == [
        ("C", "exact"),
        ("C", "previous_row"),
        (d[0], "fallback_random"),
        (d[1], "fallback_random"),
    ]
    assert r["parse"]["fallback_random"] == 2 and r["parse"]["reused_previous_prediction"] == 1


def test_e_ecgqa_gold_option_with_a_leading_space_never_matches_in_pulse():
    r = only(score("e_ecgqa_gold_leading_space"))
    # PULSE a439b6c: "accuracy 0.5" (before: 100.0, the gold options were stripped)
    assert r["metrics"] == {"Acc": 50.0}
    assert [it["correct"] for it in r["items"]] == [True, False, True, False]
    assert r["parse"]["gold_with_padded_options"] == 2
    strict = only(score("e_ecgqa_gold_leading_space", scorer="strict"))
    assert strict["metrics"] == {"Acc": 100.0}  # strict strips the gold options


def test_f_a_refused_mcq_file_still_makes_its_draws_in_a_folder_run():
    doc = score("f_official_counts_draws", bench=MMMU_BENCH, official_counts=True)
    # PULSE a439b6c skips a-partial-run.jsonl (3 lines, not 200) after drawing for its 3 rows, then scores
    # z-final/step-final.jsonl with the 4th-6th draws: "Accuracy: 0.995" (before: 98.5, draws 1-3)
    assert len(doc["errors"]) == 1 and "a-partial-run.jsonl" in doc["errors"][0] and "200" in doc["errors"][0]
    (r,) = doc["results"]
    assert r["predictions"].endswith("z-final/step-final.jsonl")
    assert r["metrics"] == {"Acc": 99.5}
    draws = random.Random(42)
    d = [draws.choice("ABCD") for _ in range(6)]
    assert [it["pred"] for it in r["items"][4:7]] == d[3:6]
    # without --official-counts both files are scored, in the same order, with the same draws
    doc = score("f_official_counts_draws", bench=MMMU_BENCH)
    assert doc["errors"] == [] and [x["metrics"]["Acc"] for x in doc["results"]] == [0.0, 99.5]


def test_f_through_the_command_line(tmp_path):
    out = tmp_path / "scores.json"
    args = ["score", "--bench", str(MMMU_BENCH), "--pred", str(TRAPS / "f_official_counts_draws" / "pred")]
    result = CliRunner().invoke(app, [*args, "--scorer", "pulse", "--official-counts", "--out", str(out)])
    assert result.exit_code == 1  # the short file could not be scored
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["metrics"] for r in doc["results"]] == [{"Acc": 99.5}]


@pytest.mark.parametrize(
    ("case", "bench", "pulse_metrics"),
    [
        ("a1_one_class_all_abnormal", None, {"AUC": None, "F1": 0.0, "HL": 60.0}),
        ("a2_one_class_with_unlabelled_rows", None, {"AUC": 58.3, "F1": 50.0, "HL": 40.0}),
        ("b_f1_tie_0_8045", None, {"AUC": 83.3, "F1": 80.4, "HL": 10.6}),
        ("c_unicode_line_separators", None, {"AUC": 83.3, "F1": 66.7, "HL": 12.5}),
        ("d1_row_without_text", None, {"AUC": 61.1, "F1": 38.9, "HL": 33.3}),
        ("d2_row_without_text_mmmu", MMMU_BENCH, {"Acc": 100.0}),
        ("e_ecgqa_gold_leading_space", None, {"Acc": 50.0}),
    ],
)
def test_every_trap_file_matches_pulse(case, bench, pulse_metrics):
    # the table of the fixtures' README: PULSE a439b6c's numbers
    assert only(score(case, bench=bench))["metrics"] == pulse_metrics
