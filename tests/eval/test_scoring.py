"""The pulse scorer against numbers worked out by hand from the published rules (ref §2.3), and the strict
scorer's differences from it. Expected values are literals or simple arithmetic in the test, never the code."""

from __future__ import annotations

import json
import random

import pytest

from evl_ecg.ecg.labels import CODE15_LABELS, CPSC_LABELS, PTBXL_SUPERCLASSES
from evl_ecg.eval.metrics import pct, pulse_multilabel, strict_multilabel
from evl_ecg.eval.parsing import (
    ecgqa_candidates,
    pulse_code15_gold,
    pulse_code15_pred,
    pulse_ecgqa,
    pulse_extract_letter,
    pulse_labels,
    strict_ecgqa,
    strict_extract_letter,
    strict_labels,
)
from evl_ecg.eval.predictions import BenchItem, EvalInputError, PredRow, jsonl_lines, load_predictions
from evl_ecg.eval.scoring import ScoreOptions, pulse_compute_f1_auc, pulse_round, score_file


def items(*triples: tuple[str, str, object]) -> list[BenchItem]:
    return [BenchItem(id=i, prompt=p, answer=a) for i, p, a in triples]


def rows(*pairs: tuple[str, str]) -> list[PredRow]:
    return [PredRow(line=n, id=i, text=t, prompt=None) for n, (i, t) in enumerate(pairs, start=1)]


# --------------------------------------------------------------------------------------------------
# Substring traps: pulse keeps them, strict does not
# --------------------------------------------------------------------------------------------------


def test_norm_matches_inside_abnormal_in_pulse_only():
    assert pulse_labels("ABNORMAL ECG", PTBXL_SUPERCLASSES) == ["NORM"]
    assert pulse_labels("ABNORMAL ECG", CPSC_LABELS) == ["NORM"]
    assert strict_labels("ABNORMAL ECG", "ptb-test").labels == []
    assert strict_labels("ABNORMAL ECG", "cpsc-test").labels == []


def test_mi_and_ste_match_inside_stemi_in_pulse_only():
    assert pulse_labels("Acute STEMI", PTBXL_SUPERCLASSES) == ["MI"]
    assert pulse_labels("Acute STEMI", CPSC_LABELS) == ["STE"]
    assert strict_labels("Acute STEMI", "cpsc-test").labels == []  # STEMI is not the code STE
    assert strict_labels("AMI", "ptb-test").labels == []  # nor is AMI the code MI


def test_st_matches_inside_ste_std_and_st_t_in_pulse_only():
    for text in ("STE", "STD", "ST-T changes", "ST/T change", "STEMI"):
        assert pulse_labels(text, CODE15_LABELS) == ["ST"], text
        assert strict_labels(text, "code15-test").labels == [], text
    assert strict_labels("ST elevation in V2", "code15-test").labels == []
    assert strict_labels("ST; AF", "code15-test").labels == ["ST", "AF"]


def test_af_matches_inside_afl_in_pulse_only():
    assert pulse_labels("AFL", CPSC_LABELS) == ["AF"]
    assert strict_labels("AFL", "cpsc-test").labels == []


def test_cd_and_hyp_match_inside_longer_words_in_pulse_only():
    # "HYPERKALEMIA" holds HYP and MI ("...KALEMIA"); "ABCD" holds CD
    assert pulse_labels("ABCD pattern, HYPERKALEMIA", PTBXL_SUPERCLASSES) == ["MI", "CD", "HYP"]
    assert strict_labels("ABCD pattern, HYPERKALEMIA", "ptb-test").labels == []


def test_long_names_score_nothing_in_pulse_but_map_to_codes_in_strict():
    text = "atrial fibrillation; right bundle branch block; 1st degree av block; premature atrial contraction"
    assert pulse_labels(text, CPSC_LABELS) == []
    assert strict_labels(text, "cpsc-test").labels == ["AF", "I-AVB", "RBBB", "PAC"]
    assert strict_labels("sinus bradycardia and first degree AV block", "code15-test").labels == ["1dAVb", "SB"]
    assert strict_labels("ST/T change and hypertrophy", "ptb-test").labels == ["STTC", "HYP"]
    assert strict_labels("ventricular ectopics, ST depression", "cpsc-test").labels == ["PVC", "STD"]


def test_code15_norm_abnormal_rules_follow_the_published_branches():
    assert pulse_code15_gold("NORM") == ["NORM"]
    assert pulse_code15_gold("ABNORMAL") == ["ABNORMAL"]
    assert pulse_code15_gold("NORM; RBBB") == ["RBBB"]  # whole-answer rule: not exactly NORM
    assert pulse_code15_pred("NORM") == (["NORM"], "norm")
    assert pulse_code15_pred("The ECG is ABNORMAL, RBBB") == (["ABNORMAL", "RBBB"], "abnormal")
    assert pulse_code15_pred("NORM or ABNORMAL") == (["ABNORMAL"], "abnormal")
    assert pulse_code15_pred("Normal ECG") == ([], "labels")
    # only the text after the last "Answer:" counts, labels included
    assert pulse_code15_pred("first NORM, AF ... Answer: ABNORMAL, LBBB") == (["ABNORMAL", "LBBB"], "abnormal")


def test_code15_scores_by_hand_pulse_perfect_strict_misses_st():
    gold = items(("a", "q", "NORM"), ("b", "q", "ABNORMAL"), ("c", "q", "RBBB; ST"))
    preds = rows(("a", "NORM"), ("b", "The ECG is ABNORMAL."), ("c", "Thinking of NORM. Answer: RBBB, STE"))
    pulse = score_file(gold, preds, subset="code15-test", scorer="pulse")
    # pulse: classes fitted on gold = ABNORMAL, NORM, RBBB, ST; every cell right ("STE" gives ST)
    assert pulse["metrics"] == {"AUC": 100.0, "F1": 100.0, "HL": 0.0}
    assert pulse["parse"]["code15_branches"] == {"abnormal": 1, "answer_split": 1, "labels": 1, "norm": 1}
    strict = score_file(gold, preds, subset="code15-test", scorer="strict")
    # strict: 8 classes; row c misses ST -> HL = 1/24; AUC over defined classes (NORM 1, ABNORMAL 1, RBBB 1, ST 0.5)
    assert strict["metrics"]["HL"] == round(100 * 1 / 24, 1)  # 4.2
    assert strict["metrics"]["AUC"] == round(100 * (1 + 1 + 1 + 0.5) / 4, 1)  # 87.5
    assert strict["metrics"]["F1"] == round(100 * (1 + 1 + 1 + 0) / 4, 1)  # 75.0
    assert strict["undefined"] == {"auc": ["1dAVb", "LBBB", "SB", "AF"], "f1": ["1dAVb", "LBBB", "SB", "AF"]}


# --------------------------------------------------------------------------------------------------
# Multi-label metrics by hand
# --------------------------------------------------------------------------------------------------

PTB_GOLD = items(("1", "q", "NORM"), ("2", "q", "MI, CD"), ("3", "q", "STTC"), ("4", "q", "MI"))
PTB_PRED = rows(("1", "ABNORMAL ECG"), ("2", "STEMI"), ("3", "HYP"), ("4", "normal ECG"))


def test_pulse_ptb_metrics_by_hand():
    r = score_file(PTB_GOLD, PTB_PRED, subset="ptb-test", scorer="pulse")
    # classes fitted on gold: NORM, MI, STTC, CD (HYP predicted but unseen in gold: dropped)
    # Y/P rows: 1: NORM/NORM (trap), 2: MI+CD/MI, 3: STTC/-, 4: MI/-   -> 3 wrong cells of 16
    # AUC per class = (TPR+TNR)/2: CD (0+1)/2, MI (1/2+1)/2, NORM (1+1)/2, STTC (0+1)/2
    # F1 per class: CD 0, MI 2*1/(2*1+0+1) = 2/3, NORM 1, STTC 0
    assert r["classes"] == ["NORM", "MI", "STTC", "CD"]
    assert r["metrics"]["HL"] == round(100 * 3 / 16, 1)  # 18.8
    assert r["metrics"]["AUC"] == round(100 * (0.5 + 0.75 + 1.0 + 0.5) / 4, 1)  # 68.8
    assert r["metrics"]["F1"] == round(100 * (0 + 2 / 3 + 1 + 0) / 4, 1)  # 41.7
    assert r["per_class"]["MI"]["auc"] == 75.0 and r["per_class"]["MI"]["f1"] == 66.7
    assert r["dropped_predicted_labels"] == {"HYP": 1}
    assert r["n_scored"] == 4


def test_strict_ptb_metrics_by_hand_over_the_full_vocabulary():
    r = score_file(PTB_GOLD, PTB_PRED, subset="ptb-test", scorer="strict")
    # strict preds: 1: none ("ABNORMAL" is not NORM), 2: MI ("STEMI" names MI), 3: HYP, 4: NORM ("normal ECG")
    # classes NORM MI STTC CD HYP; wrong cells: 1 NORM, 2 CD, 3 STTC+HYP, 4 NORM+MI = 6 of 20
    # AUC: NORM (0 + 2/3)/2, MI 0.75, STTC 0.5, CD 0.5, HYP undefined (no gold positive)
    # F1: NORM 0, MI 2/3, STTC 0, CD 0, HYP 0 (one false positive: defined)
    assert r["classes"] == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert r["metrics"]["HL"] == 30.0
    assert r["metrics"]["AUC"] == round(100 * (1 / 3 + 0.75 + 0.5 + 0.5) / 4, 1)  # 52.1
    assert r["metrics"]["F1"] == round(100 * (2 / 3) / 5, 1)  # 13.3
    assert r["undefined"] == {"auc": ["HYP"], "f1": []}


def test_auc_on_binary_predictions_is_balanced_accuracy():
    # AF: gold 1 1 0 0 0, pred 1 0 1 0 0 -> TPR 1/2, TNR 2/3; X: gold 0 0 1 1 1, pred 0 1 1 1 1 -> TPR 1, TNR 1/2
    gold = [["AF"], ["AF"], ["X"], ["X"], ["X"]]
    pred = [["AF"], ["X"], ["AF", "X"], ["X"], ["X"]]
    m = pulse_multilabel(gold, pred)
    assert m.per_class["AF"]["auc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m.per_class["X"]["auc"] == pytest.approx((1 + 0.5) / 2)


def test_nan_class_auc_propagates_in_pulse_and_is_skipped_in_strict():
    gold = items(("1", "q", "NORM"), ("2", "q", "NORM, MI"))
    preds = rows(("1", "NORM"), ("2", ""))
    pulse = score_file(gold, preds, subset="ptb-test", scorer="pulse")
    # NORM is in every gold row: its AUC is NaN, so np.mean is NaN; MI: (0 + 1)/2
    assert pulse["metrics"]["AUC"] is None
    assert pulse["per_class"]["NORM"]["auc"] is None and pulse["per_class"]["MI"]["auc"] == 50.0
    assert pulse["undefined"]["auc"] == ["NORM"]
    assert pulse["metrics"]["F1"] == round(100 * (2 / 3 + 0) / 2, 1)  # NORM 2*1/(2+0+1), MI 0
    assert pulse["metrics"]["HL"] == 50.0  # row 2 misses NORM and MI: 2 of 4 cells
    assert any("NaN" in w for w in pulse["warnings"])
    strict = score_file(gold, preds, subset="ptb-test", scorer="strict")
    assert strict["metrics"]["AUC"] == 50.0  # only MI defined
    assert strict["metrics"]["F1"] == round(100 * (2 / 3 + 0) / 2, 1)  # STTC, CD, HYP undefined
    assert strict["undefined"] == {"auc": ["NORM", "STTC", "CD", "HYP"], "f1": ["STTC", "CD", "HYP"]}


def test_strict_metrics_use_every_class_even_unseen_in_gold():
    m = strict_multilabel([["AF"]], [["AF", "PVC"]], classes=["AF", "PVC"])
    assert m.hl == 0.5 and m.per_class["PVC"]["fp"] == 1


# --------------------------------------------------------------------------------------------------
# MCQ
# --------------------------------------------------------------------------------------------------


def test_pulse_letter_rules_in_published_order():
    assert pulse_extract_letter("C") == ("C", "exact")
    assert pulse_extract_letter(" C") == (None, "none")  # exact means exact
    # rule 2 takes the alphabetically first "X." anywhere, not the first occurrence
    assert pulse_extract_letter("This is consistent with a normal ECG.") == ("G", "dotted_letter")
    assert pulse_extract_letter("ST elevation in lead aVF.") == ("F", "dotted_letter")
    assert pulse_extract_letter("H. is wrong, so B. it is") == ("B", "dotted_letter")
    assert pulse_extract_letter("The correct option is D") == ("D", "correct_option_is")
    # rule 3 returning None stops the search: "Answer:" is not tried
    assert pulse_extract_letter("The correct option is x. Answer: C") == (None, "correct_option_is")
    assert pulse_extract_letter("Answer: Bradycardia") == ("B", "answer_colon")
    assert pulse_extract_letter("Answer: none") == (None, "answer_colon")
    assert pulse_extract_letter("I am not sure") == (None, "none")


MCQ_PROMPT = (
    "Which diagnosis fits this ECG?\nA. Sinus rhythm\nB. Atrial fibrillation\nC. Sinus bradycardia\n"
    "D. Sinus tachycardia\nE. Left bundle branch block\nF. Right bundle branch block\nG. Normal ECG\n"
    "H. First degree AV block\nOnly answer with the letter."
)
MCQ_GOLD = items(
    ("1", MCQ_PROMPT, "C. Sinus bradycardia"),
    ("2", MCQ_PROMPT, "A. Sinus rhythm"),
    ("3", MCQ_PROMPT, "B. Atrial fibrillation"),
    ("4", MCQ_PROMPT, "D. Sinus tachycardia"),
    ("5", MCQ_PROMPT, "E. Left bundle branch block"),
    ("6", MCQ_PROMPT, "H. First degree AV block"),
)
MCQ_PRED = rows(
    ("1", "C"),
    ("2", "Sinus rhythm with a normal axis, nothing else of note in lead aVF."),
    ("3", "The answer is B"),
    ("4", "I cannot tell"),
    ("5", "Answer: Left bundle branch block"),
    ("6", "Answer: Bradycardia"),
)


def test_pulse_mcq_seeded_fallback_and_accuracy_by_hand():
    r = score_file(MCQ_GOLD, MCQ_PRED, subset="csn-test-no-cot", scorer="pulse")
    draws = random.Random(42)
    d = [draws.choice(list("ABCDEFGH")) for _ in range(3)]  # rows 3, 4, 5 fall back, in file order
    got = [(it["pred"], it["rule"]) for it in r["items"]]
    assert got == [
        ("C", "exact"),
        ("F", "dotted_letter"),  # "aVF." -> F (gold A)
        (d[0], "fallback_random"),
        (d[1], "fallback_random"),
        (d[2], "fallback_random"),  # "Answer: Left ..." has no A-H letter
        ("B", "answer_colon"),  # "Bradycardia" -> B (gold H)
    ]
    right = 1 + (d[0] == "B") + (d[1] == "D") + (d[2] == "E")
    assert r["metrics"]["Acc"] == round(100 * right / 6, 1)
    assert r["parse"]["fallback_random"] == 3
    assert any("1611" in w for w in r["warnings"])


def test_fallback_draws_continue_over_one_shared_generator():
    rng = random.Random(42)
    first = score_file(MCQ_GOLD[3:4], MCQ_PRED[3:4], subset="csn-test-no-cot", scorer="pulse", rng=rng)
    second = score_file(MCQ_GOLD[3:4], MCQ_PRED[3:4], subset="csn-test-no-cot", scorer="pulse", rng=rng)
    ref = random.Random(42)
    assert [first["items"][0]["pred"], second["items"][0]["pred"]] == [ref.choice(list("ABCDEFGH")) for _ in "xy"]


def test_mmmu_fallback_draws_from_a_to_d_and_keys_gold_by_id():
    gold = items(("m1", "Q? A. x B. y C. z D. w", "C"))
    r = score_file(gold, rows(("m1", "no idea")), subset="mmmu-ecg", scorer="pulse")
    assert r["items"][0]["pred"] == random.Random(42).choice(list("ABCD"))


def test_strict_mcq_rules_and_unparsable_counted_wrong():
    r = score_file(MCQ_GOLD, MCQ_PRED, subset="csn-test-no-cot", scorer="strict")
    got = [(it["pred"], it["rule"]) for it in r["items"]]
    assert got == [
        ("C", "exact"),
        ("A", "option_text"),
        ("B", "answer_is"),
        (None, "unparsable"),
        ("E", "option_text"),
        (None, "unparsable"),
    ]
    assert r["metrics"]["Acc"] == round(100 * 4 / 6, 1)  # 66.7
    assert r["parse"]["counted_wrong_unparsed"] == 2


def test_strict_letter_extraction_edge_cases():
    letters = list("ABCDEFGH")
    assert strict_extract_letter("(B)", MCQ_PROMPT, letters) == ("B", "exact")
    assert strict_extract_letter("D) Sinus tachycardia", MCQ_PROMPT, letters) == ("D", "leading")
    assert strict_extract_letter("so the answer is: H.", MCQ_PROMPT, letters) == ("H", "answer_is")
    assert strict_extract_letter("reasoning... Answer: F", MCQ_PROMPT, letters) == ("F", "answer_colon")
    assert strict_extract_letter("answer is a normal ECG", MCQ_PROMPT, letters) == ("G", "option_text")
    assert strict_extract_letter("sinus rhythm or atrial fibrillation", MCQ_PROMPT, letters) == (None, "ambiguous")
    assert strict_extract_letter("E", "Q? A. a B. b C. c D. d", list("ABCD")) == (None, "invalid_letter")
    inline = "Pick one: A) Tachycardia; B) Bradycardia; C) Sinus bradycardia; D) Normal"
    assert strict_extract_letter("It is sinus bradycardia", inline, list("ABCD")) == ("C", "option_text")


def test_official_counts_refuse_a_short_mcq_file():
    with pytest.raises(EvalInputError, match="1611"):
        score_file(
            MCQ_GOLD, MCQ_PRED, subset="csn-test-no-cot", scorer="pulse", options=ScoreOptions(official_counts=True)
        )


# --------------------------------------------------------------------------------------------------
# ECG-QA
# --------------------------------------------------------------------------------------------------

SUFFIX = "Only answer based on the given Options without any explanation."
Q_YN = f"Question: Is there noise? Options: yes, no, not sure {SUFFIX}"
Q_LEADS = f"Question: Which leads? Options: lead I, lead II, lead V1, none {SUFFIX}"
QA_GOLD = items(
    ("1", Q_YN, ["yes"]),
    ("2", Q_LEADS, ["lead V1"]),
    ("3", Q_LEADS, list("none")),  # the HF character-list quirk
    ("4", Q_YN, ["no"]),
    ("5", Q_LEADS, ["lead II"]),
)
QA_PRED = rows(("1", "yes"), ("2", "lead V1"), ("3", "There is none."), ("4", "not sure"), ("5", "lead I"))


def test_ecgqa_candidates_split_after_options_without_suffix():
    assert ecgqa_candidates(Q_LEADS) == ["lead I", "lead II", "lead V1", "none"]


def test_ecgqa_pulse_rule_never_matches_an_uppercase_candidate():
    assert pulse_ecgqa("lead V1", ["lead V1", "none"], ["lead V1"]) == (False, [])
    r = score_file(QA_GOLD, QA_PRED, subset="ecgqa-test", scorer="pulse")
    # 1 yes/yes right; 2 uppercase never matches; 3 right; 4 "no" is inside "not sure"; 5 "lead I" never matches
    assert [it["correct"] for it in r["items"]] == [True, False, True, False, False]
    assert r["metrics"]["Acc"] == 40.0


def test_ecgqa_gem_rule_compares_character_sets():
    r = score_file(QA_GOLD, QA_PRED, subset="ecgqa-test", scorer="pulse", options=ScoreOptions(ecgqa_rule="gem"))
    # 5: "lead I" vs gold "lead II": the same character set, so a wrong answer counts right
    assert [it["correct"] for it in r["items"]] == [True, True, True, False, True]
    assert r["metrics"]["Acc"] == 80.0
    assert pulse_ecgqa("on", ["no", "on"], list("no"), rule="gem")[0] is True  # "on" == "no" as sets


def test_ecgqa_strict_is_case_insensitive_whole_word_set_match():
    r = score_file(QA_GOLD, QA_PRED, subset="ecgqa-test", scorer="strict")
    assert [it["correct"] for it in r["items"]] == [True, True, True, False, False]
    assert r["metrics"]["Acc"] == 60.0
    assert strict_ecgqa("lead aVR/lead V2", ["lead aVR", "lead V2", "none"], ["lead V2", "lead aVR"])[0] is True
    assert strict_ecgqa("lead II", ["lead I", "lead II"], ["lead I"])[0] is False


def test_score_file_rejects_unknown_scorer():
    with pytest.raises(ValueError, match="scorer"):
        score_file(PTB_GOLD, PTB_PRED, subset="ptb-test", scorer="loose")


# --------------------------------------------------------------------------------------------------
# Published rounding, one-gold-class F1, line splitting, rows without text, draws of a refused file
# (numbers from PULSE's evaluate_ecgbench.py @ a439b6c, run on these inputs; tests/eval/test_pulse_traps.py has
# the file-level cases)
# --------------------------------------------------------------------------------------------------


def test_pulse_round_is_numpys_rounding_of_a_float64():
    # PULSE a439b6c prints round(f1*100, 1) with f1 = np.mean(...): numpy scales, rint(804.5) = 804
    assert pulse_round(0.8045) == 80.4
    assert pct(0.8045) == 80.5  # Python's round of the float 80.45000000000000284
    assert pulse_round(0.41666666666666663) == 41.7
    assert pulse_round(float("nan")) is None


def test_pulse_compute_f1_auc_with_one_gold_class_keeps_the_first_binary_f1():
    # PULSE a439b6c compute_f1_auc on these lists: "f1 0.0 auc nan hl 60.0", "f1 100.0 auc nan hl 0.0",
    # "f1 0.0 auc nan hl 100.0"
    gold = [["ABNORMAL"]] * 5
    some = pulse_compute_f1_auc(gold, [["ABNORMAL"], ["NORM"], ["ABNORMAL", "RBBB"], ["NORM"], ["RBBB"]])
    assert some.one_class and some.metrics() == {"AUC": None, "F1": 0.0, "HL": 60.0}
    # no 0 anywhere: sklearn sees label 1 only and its F1 is the only value
    assert pulse_compute_f1_auc(gold, gold).metrics() == {"AUC": None, "F1": 100.0, "HL": 0.0}
    assert pulse_compute_f1_auc(gold, [[]] * 5).metrics() == {"AUC": None, "F1": 0.0, "HL": 100.0}
    # several classes: the plain macro F1 (PTB_GOLD/PTB_PRED above)
    two = pulse_compute_f1_auc([["NORM"], ["MI", "CD"], ["STTC"], ["MI"]], [["NORM"], ["MI"], ["HYP"], []])
    assert not two.one_class and two.metrics() == {"AUC": 68.8, "F1": 41.7, "HL": 18.8}


def test_one_gold_class_file_reports_pulses_f1_and_the_classes_own_f1():
    gold = items(*[(str(i), "q", "ABNORMAL") for i in range(5)])
    preds = rows(("0", "ABNORMAL"), ("1", "NORM"), ("2", "Answer: ABNORMAL, RBBB"), ("3", "NORM"), ("4", "RBBB"))
    r = score_file(gold, preds, subset="code15-test", scorer="pulse")
    assert r["metrics"] == {"AUC": None, "F1": 0.0, "HL": 60.0}  # before: F1 28.6
    assert r["per_class"]["ABNORMAL"]["f1"] == round(100 * 4 / 7, 1)  # 57.1
    assert r["parse"]["one_class_f1_label"] == "negative"


def test_jsonl_lines_end_only_at_newlines_like_a_text_mode_file():
    text = '{"a": "x\u2028y"}\n{"b": "p\u0085q\u2029r"}\r\n{"c": 1}\r{"d": 2}\n'
    assert jsonl_lines(text) == ['{"a": "x\u2028y"}', '{"b": "p\u0085q\u2029r"}', '{"c": 1}', '{"d": 2}']
    assert len(text.splitlines()) == 7  # what we did before
    assert jsonl_lines("") == [] and jsonl_lines("x") == ["x"] and jsonl_lines("x\n\ny\n") == ["x", "", "y"]


def test_prediction_row_without_a_text_key_is_flagged(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"question_id": "1", "text": ""}, {"question_id": "2"}, {"id": "3", "response": "NORM"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    got, issues = load_predictions(path)
    assert [(r.id, r.text, r.has_text) for r in got] == [("1", "", True), ("2", "", False), ("3", "NORM", True)]
    assert [i.kind for i in issues] == ["empty_text", "empty_text"]
    assert "no 'text' or 'response' key" in issues[1].message


def test_row_without_text_reuses_the_previous_prediction_in_pulse():
    gold = items(("1", "q", "NORM"), ("2", "q", "MI"), ("3", "q", "MI"))
    preds = [PredRow(1, "2", "", None, has_text=False), PredRow(2, "1", "NORM", None), PredRow(3, "3", "", None, False)]
    r = score_file(gold, preds, subset="ptb-test", scorer="pulse")
    # the first row has no previous one: empty (PULSE would crash); the third takes row 2's ["NORM"]
    assert [it["pred"] for it in r["items"]] == [[], ["NORM"], ["NORM"]]
    assert r["parse"]["reused_previous_prediction"] == 1
    mcq = score_file(
        MCQ_GOLD[:3],
        [PredRow(1, "1", "C", None), PredRow(2, "2", "", None, has_text=False), PredRow(3, "3", "hm", None)],
        subset="csn-test-no-cot",
        scorer="pulse",
    )
    first_draw = random.Random(42).choice(list("ABCDEFGH"))
    assert [(it["pred"], it["rule"]) for it in mcq["items"]] == [
        ("C", "exact"),
        ("C", "previous_row"),
        (first_draw, "fallback_random"),  # row 2 drew nothing
    ]


def test_refused_mcq_file_still_makes_its_draws():
    rng = random.Random(42)
    with pytest.raises(EvalInputError, match="1611"):
        score_file(
            MCQ_GOLD,
            MCQ_PRED,
            subset="csn-test-no-cot",
            scorer="pulse",
            rng=rng,
            options=ScoreOptions(official_counts=True),
        )
    ref = random.Random(42)
    for _ in range(3):  # MCQ_PRED has 3 fallback rows
        ref.choice(list("ABCDEFGH"))
    assert rng.random() == ref.random()
    untouched = random.Random(42)
    with pytest.raises(EvalInputError, match="1611"):  # strict draws nothing
        score_file(
            MCQ_GOLD,
            MCQ_PRED,
            subset="csn-test-no-cot",
            scorer="strict",
            rng=untouched,
            options=ScoreOptions(official_counts=True),
        )
    assert untouched.random() == random.Random(42).random()


def test_ecgqa_gold_option_with_a_leading_space_is_kept_by_pulse_and_stripped_by_strict():
    cands = ["yes", "no", "not sure"]
    # PULSE a439b6c: set(["no"]) == set([" no"]) is False
    assert pulse_ecgqa("no", cands, [" no"]) == (False, ["no"])
    assert pulse_ecgqa("no", cands, ["no"]) == (True, ["no"])
    assert strict_ecgqa("no", cands, [" no"])[0] is True
    # a character list is still joined into options (documented deviation)
    assert pulse_ecgqa("no", cands, list("no"))[0] is True
