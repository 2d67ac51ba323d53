"""Question/answer builders: formats of ECGInstruct/ECGBench and the published scorer's rules on every gold answer.

The scorer rules below are restated by hand from ``reference/ecgbench-scoring.md`` §2.3 (independent of any
project scorer module).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from evl_ecg.data import questions as q
from evl_ecg.ecg.labels import (
    CODE15_LABELS,
    CPSC_LABELS,
    FINDINGS,
    PTBXL_SUPERCLASSES,
    RHYTHMS,
    SNOMED,
    findings_from_snomed,
    labels_from_findings,
)
from evl_ecg.ecg.signal import Ecg

# ---- the published scorer, restated (§2.3) ----------------------------------------------------------------------


def scorer_multilabel(text: str, labels: tuple[str, ...]) -> list[str]:
    return [label for label in labels if label in text]


def scorer_code15_gold(text: str) -> list[str]:
    if text == "NORM":
        return ["NORM"]
    if text == "ABNORMAL":
        return ["ABNORMAL"]
    return scorer_multilabel(text, CODE15_LABELS)


def scorer_mcq_extract(text: str) -> str | None:
    letters = "ABCDEFGH"
    if text in letters:
        return text
    for x in letters:
        if f"{x}." in text:
            return x
    if "The correct option is " in text:
        c = text.split("The correct option is ")[-1][:1]
        return c if c in letters else None
    if "Answer:" in text:
        rest = text.split("Answer:")[-1].strip()
        return next((x for x in letters if x in rest), None)
    return None


def scorer_ecgqa_candidates(prompt: str) -> list[str]:
    tail = prompt.split("Options:")[-1].replace("Only answer based on the given Options without any explanation.", "")
    return [c.strip() for c in tail.split(",")]


# ---- fixtures ------------------------------------------------------------------------------------------------------

META = {
    "heart_rate": 72.4,
    "rhythm": "SR",
    "pr_ms": 164.0,
    "qrs_ms": 92.0,
    "qt_ms": 384.0,
    "qtc_ms": 412.0,
    "axis_deg": 45.0,
    "mi_territory": None,
}
NON_RHYTHM = tuple(c for c in FINDINGS if c not in RHYTHMS)


def make_ecg(findings: set[str] | frozenset[str], **meta: object) -> Ecg:
    m = dict(META) | meta
    if "MI" in findings and m.get("mi_territory") is None:
        m["mi_territory"] = "inferior"
    return Ecg(np.zeros((12, 50), np.float32), 50.0, "t", frozenset(findings), meta=m)


def all_finding_sets():
    """Every rhythm with every subset of the non-rhythm findings (4 x 512)."""
    for rhythm in RHYTHMS:
        for k in range(len(NON_RHYTHM) + 1):
            for extra in itertools.combinations(NON_RHYTHM, k):
                yield frozenset({rhythm, *extra})


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- close-ended multi-label ----------------------------------------------------------------------------------------


def test_code15_gold_substring_rule_recovers_exactly_the_labels():
    for findings in all_finding_sets():
        expected = list(labels_from_findings(findings, "code15"))
        if not expected:
            expected = ["NORM"] if findings == {"SR"} else ["ABNORMAL"]
        assert scorer_code15_gold(q.code15_gold(make_ecg(findings))) == expected, findings


def test_ptbxl_gold_substring_rule_recovers_exactly_the_labels():
    for findings in all_finding_sets():
        gold = q.ptbxl_gold(make_ecg(findings))
        assert scorer_multilabel(gold, PTBXL_SUPERCLASSES) == list(labels_from_findings(findings, "ptbxl")), gold
        assert "ABNORMAL" not in gold


def test_cpsc_gold_substring_rule_recovers_exactly_the_labels():
    for findings in all_finding_sets():
        gold = q.cpsc_gold(make_ecg(findings))
        assert scorer_multilabel(gold, CPSC_LABELS) == list(labels_from_findings(findings, "cpsc")), gold


def test_code15_record_matches_hand_written_example():
    rec = q.build_code15(make_ecg({"AF", "RBBB"}), "code15/x-0.png", "c-1", rng())
    assert rec.answer == "RBBB(right bundle branch block); AF(atrial fibrillation)"
    assert rec.conversations[0].value.startswith("<image>\n")
    assert rec.prompt.endswith(
        "enumerate them using semicolon: 1dAVb(1st degree av block), RBBB(right bundle branch block), "
        "LBBB(left bundle branch block), SB(sinus bradycardia), ST(sinus tachycardia), AF(atrial fibrillation). "
        "Only answer based on the given options without any explanation."
    )
    assert q.build_code15(make_ecg({"SR"}), "i.png", "c-2", rng()).answer == "NORM"
    assert q.build_code15(make_ecg({"SR", "IAVB"}), "i.png", "c-3", rng()).answer == "1dAVb(1st degree av block)"
    assert rec.labels["code15"] == ["RBBB", "AF"]


def test_ptbxl_record_lists_superclasses_with_long_names():
    rec = q.build_ptbxl(make_ecg({"SR", "MI", "RBBB"}), "p.png", "p-1", rng(3))
    assert rec.answer == "MI(myocardial infarction); CD(conduction disturbance)"
    for text in ("NORM(normal ECG)", "MI(myocardial infarction)", "STTC(ST/T change)", "HYP(hypertrophy)"):
        assert text in rec.prompt
    assert q.build_ptbxl(make_ecg({"SR"}), "p.png", "p-2", rng()).answer == "NORM(normal ECG)"


def test_cpsc_record_uses_the_paper_prompt_and_codes_in_gold():
    rec = q.build_cpsc(make_ecg({"AF", "RBBB"}), "cpsc/a.png", "s-1", rng())
    assert rec.answer == "AF; RBBB"
    assert re.match(r"(Please determine|Identify)", rec.prompt)
    names = rec.prompt.split(": ", 1)[1].rstrip(".").split(", ")
    assert sorted(names) == sorted(
        [
            "normal ECG",
            "atrial fibrillation",
            "1st degree av block",
            "left bundle branch block",
            "right bundle branch block",
            "premature atrial contraction",
            "ventricular ectopics",
            "ST depression",
            "ST elevation",
        ]
    )


# ---- MCQ --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["csn", "g12"])
def test_mcq_has_eight_lettered_options_and_gold_letter_extracts(style):
    generator = rng(11)
    for i, findings in enumerate(itertools.islice(all_finding_sets(), 0, None, 37)):
        ecg = make_ecg(findings)
        rec = q.build_mcq(ecg, "csn/a.png", f"m-{i}", generator, style=style)
        lines = rec.prompt.split("\n")
        option_lines = [ln for ln in lines if re.match(r"^[A-H]\. ", ln)]
        assert [ln[0] for ln in option_lines] == list("ABCDEFGH")
        options = [ln[3:] for ln in option_lines]
        assert len(set(options)) == 8
        letter = rec.answer[0]
        assert rec.answer == f"{letter}. {options['ABCDEFGH'.index(letter)]}"
        assert scorer_mcq_extract(rec.answer) == letter  # a model echoing the gold is scored correct
        assert lines[-1] in {
            "Only answer based on the given options without any explanation.",
            "Provide the correct option directly without any explanation.",
            "Answer the following question with the letter and text of the correct option only.",
        }
        # the correct option names a present finding; no wrong option does
        by_name = {name: code for code, (_, name) in SNOMED.items()}
        true_findings = findings_from_snomed([by_name[rec.answer[3:]]])
        assert true_findings and true_findings <= findings
        for opt in options:
            if opt != rec.answer[3:]:
                assert not (findings_from_snomed([by_name[opt]]) & findings), (opt, findings)
        assert not any(re.search(r"[A-H]\.", opt) for opt in options)


def test_mcq_never_offers_st_elevation_as_wrong_for_mi():
    ecg = make_ecg({"SR", "MI"}, mi_territory="anterior")
    for seed in range(30):
        rec = q.build_mcq(ecg, "a.png", "m", rng(seed))
        wrong = set(rec.meta["options"]) - {rec.answer[3:]}
        assert not wrong & {"st elevation", "acute myocardial infarction", "qwave abnormal", "myocardial ischemia"}


# ---- fill-in-the-blank and report ---------------------------------------------------------------------------------


def test_fill_answer_is_prompt_sentence_with_blanks_filled():
    ecg = make_ecg({"SR", "LBBB"}, qrs_ms=140.0, axis_deg=-45.0)
    for seed in range(10):
        rec = q.build_fill(ecg, "a.png", "f", rng(seed))
        stem = rec.prompt.split(": ", 1)[1]
        values = rec.meta["blanks"]
        assert stem.count("____") == len(values) >= 2
        filled = stem
        for v in values:
            filled = filled.replace("____", v, 1)
        assert rec.answer == filled
        assert "a rhythm of sinus rhythm" in rec.answer
    # the axis value, when asked, is the category of -45 degrees
    texts = {q.build_fill(ecg, "a.png", "f", rng(s)).answer for s in range(40)}
    assert any("a cardiac axis of left axis deviation" in t for t in texts)
    assert any("bundle branch block of the left bundle" in t for t in texts)


def test_report_states_rate_axis_intervals_findings_and_final_diagnosis():
    ecg = make_ecg({"SR", "MI", "IAVB"}, pr_ms=240.0, mi_territory="anterior")
    rec = q.build_report(ecg, "a.png", "r", rng())
    text = rec.answer
    assert "sinus rhythm at a ventricular rate of about 72 beats per minute" in text
    assert "The QRS axis is normal (+45 degrees)." in text
    assert "PR interval is 240 ms" in text and "QRS duration is 92 ms" in text and "384/412 ms" in text
    assert "leads V1, V2, V3, and V4" in text and "anterior myocardial infarction" in text
    assert text.endswith("Final diagnosis: sinus rhythm; first degree AV block; myocardial infarction.")
    assert text.count(". ") >= 4
    normal = q.report_text(make_ecg({"SR"}))
    assert normal.endswith("Final diagnosis: sinus rhythm; normal ECG.")
    af = q.report_text(make_ecg({"AF"}, pr_ms=None))
    assert "no distinct P waves" in af and "PR interval cannot be measured" in af


def test_axis_categories_follow_the_conventional_ranges():
    assert q.axis_category(0) == "normal"
    assert q.axis_category(90) == "normal"
    assert q.axis_category(-30) == "normal"
    assert q.axis_category(-31) == "left axis deviation"
    assert q.axis_category(120) == "right axis deviation"
    assert q.axis_category(-120) == "extreme axis deviation"
    assert q.axis_category(None) is None


# ---- ECG-QA -------------------------------------------------------------------------------------------------------


def test_ecgqa_prompt_parses_with_the_scorer_and_gold_is_recovered_exactly():
    generator = rng(5)
    kinds = set()
    for i, findings in enumerate(itertools.islice(all_finding_sets(), 0, None, 7)):
        rec = q.build_ecgqa(make_ecg(findings), "ptb-xl/a.png", f"e-{i}", generator, gold_as_list=True)
        prompt = rec.prompt
        assert prompt.startswith(
            "Given this ECG image, please answer the following question. From the provided options, select all that "
            "apply. List your selections, separated by slashes.\nQuestion: "
        )
        assert prompt.endswith(" Only answer based on the given Options without any explanation.")
        cands = scorer_ecgqa_candidates(prompt)
        assert cands == rec.meta["options"]
        gold = rec.answer
        assert isinstance(gold, list) and set(gold) <= set(cands) and "not sure" not in gold
        text = "/".join(gold)
        assert {c for c in cands if c.lower() in text.lower()} == set(gold), (cands, gold)
        kinds.add(rec.meta["question_type"])
    assert kinds == {"verify", "choose", "rhythm", "leads"}


def test_ecgqa_lead_question_gold_is_the_mi_territory():
    ecg = make_ecg({"SR", "MI"}, mi_territory="inferior")
    for seed in range(60):
        rec = q.build_ecgqa(ecg, "a.png", "e", rng(seed))
        if rec.meta["question_type"] == "leads":
            assert rec.answer == "lead II/lead III/lead aVF"
            assert "lead I," not in rec.prompt  # "lead I" is inside "lead II": never a wrong option here
            break
    else:
        pytest.fail("no lead question in 60 draws")


def test_ecgqa_training_answer_is_slash_joined():
    rec = q.build_ecgqa(make_ecg({"AF"}, pr_ms=None), "a.png", "e", rng(2))
    assert isinstance(rec.answer, str) and rec.answer == "/".join(rec.meta["answers"])


# ---- determinism, dispatch ----------------------------------------------------------------------------------------


def test_same_rng_seed_gives_the_same_record_and_seeds_vary_wording():
    ecg = make_ecg({"SR", "RBBB", "PVC"})
    for task in q.TASKS:
        a = q.build_record(task, ecg, "a.png", "x", rng(7)).to_dict()
        b = q.build_record(task, ecg, "a.png", "x", rng(7)).to_dict()
        assert a == b
    prompts = {q.build_record("code15", ecg, "a.png", "x", rng(s)).prompt for s in range(20)}
    assert len(prompts) > 1


def test_unknown_task_and_missing_findings_name_the_record():
    bare = Ecg(np.zeros((12, 50), np.float32), 50.0, "ptbxl/00001_hr")
    with pytest.raises(q.QuestionError, match="ptbxl/00001_hr.*unknown task"):
        q.build_record("nope", bare, "a.png", "x", rng())
    with pytest.raises(q.QuestionError, match="ptbxl/00001_hr.*findings"):
        q.build_report(bare, "a.png", "x", rng())


def test_lookalikes_of_present_findings_are_never_asked_as_absent():
    ecg = make_ecg({"SR", "LBBB"}, qrs_ms=140.0)
    for seed in range(80):
        rec = q.build_ecgqa(ecg, "a.png", "e", rng(seed))
        question = rec.prompt.split("Question: ")[1].split("\n")[0]
        for name in ("left ventricular hypertrophy", "st depression", "t wave inversion", "myocardial infarction"):
            assert name not in question, question
        mcq = q.build_mcq(ecg, "a.png", "m", rng(seed))
        assert "left ventricular hypertrophy" not in mcq.meta["options"]
