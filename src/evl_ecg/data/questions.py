"""Conversation records built from a labelled ECG, in the wording and answer formats of ECGInstruct/ECGBench.

Every builder takes an :class:`~evl_ecg.ecg.signal.Ecg` (its ``findings`` and, where present, the generator's
``meta``: ``heart_rate``, ``pr_ms``, ``qrs_ms``, ``qt_ms``, ``qtc_ms``, ``axis_deg``, ``mi_territory``), the image
path the record will point to, a record id and a seeded ``numpy.random.Generator`` that picks among paraphrase
templates, and returns a validated :class:`~evl_ecg.data.records.Record`. The same inputs give the same record.

Task types (``reference/ecgbench-scoring.md`` §1.3, §2.1):

========== ==================================================================================================
``code15`` close-ended multi-label, CODE-15% options ``1dAVb(1st degree av block), ...``; gold ``RBBB(right
           bundle branch block); AF(atrial fibrillation)``, exactly ``NORM`` for a normal exam (``ABNORMAL`` when
           abnormal outside the six classes)
``ptbxl``  close-ended multi-label over the PTB-XL superclasses ``NORM(normal ECG), MI(myocardial infarction),
           ...``; gold ``MI(myocardial infarction); CD(conduction disturbance)``
``cpsc``   "Please determine the appropriate diagnosis for the ECG image: <long names>." ; gold the codes, ``AF; RBBB``
``mcq``    8-option MCQ (CSN/G12EC style): ``A. <label>`` ... ``H. <label>`` on separate lines, the true diagnosis
           and 7 negatives from a SNOMED diagnosis pool; gold ``C. atrial fibrillation``; no-cot instruction
``fill``   fill-in-the-blank sentence (rhythm, axis, rate, intervals, bundle branch block)
``report`` report generation: rate, rhythm, axis, PR/QRS/QT, findings, final diagnosis
``ecgqa``  ECG-QA style: "Given this ECG image, please answer ... Options: a, b, c Only answer based on the given
           Options without any explanation."; gold a list of option strings (``ecgqa-test``) or them joined by
           ``/`` (training text)
========== ==================================================================================================

Gold answers are written so that the published scorer's case-sensitive substring rule (§2.3) recovers exactly
the intended label set (no code hides inside another word); ``tests/data/test_questions.py`` checks this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evl_ecg.data.records import GPT, HUMAN, IMAGE_TOKEN, Record, Turn, validate
from evl_ecg.ecg.labels import (
    CODE15_LABELS,
    CPSC_LABELS,
    FINDINGS,
    LONG_NAMES,
    MI_TERRITORIES,
    PTBXL_SUPERCLASSES,
    RHYTHMS,
    SNOMED,
    SNOMED_OF_FINDING,
    VOCABULARIES,
    is_normal,
)
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg


class QuestionError(ValueError):
    """An ECG that cannot make the requested question (the message names the record and what is missing)."""


TASKS: tuple[str, ...] = ("code15", "ptbxl", "cpsc", "mcq", "fill", "report", "ecgqa")

#: The no-cot instruction of the close-ended sets; the ECG-QA scorer strips exactly this sentence.
ONLY_OPTIONS = "Only answer based on the given options without any explanation."
ECGQA_SUFFIX = "Only answer based on the given Options without any explanation."
ECGQA_PREFIX = (
    "Given this ECG image, please answer the following question. From the provided options, select all that apply. "
    "List your selections, separated by slashes."
)
MCQ_LETTERS: tuple[str, ...] = tuple("ABCDEFGH")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _labels_of(ecg: Ecg) -> dict[str, list[str]]:
    """Label sets the record carries: canonical findings and each ECGBench vocabulary."""
    out: dict[str, list[str]] = {"findings": sorted(ecg.findings)}
    for vocab in VOCABULARIES:
        out[vocab] = list(ecg.labels_in(vocab))
    return out


def _record(ecg: Ecg, image: str, record_id: str, prompt: str, answer: str | list[str], meta: dict[str, Any]) -> Record:
    record = Record(
        id=record_id,
        image=image,
        conversations=[Turn(HUMAN, f"{IMAGE_TOKEN}\n{prompt}"), Turn(GPT, answer)],
        meta={"source_record": ecg.record_id, **meta},
        labels=_labels_of(ecg),
    )
    validate(record, source="questions")
    return record


def _need_findings(ecg: Ecg, task: str) -> frozenset[str]:
    if not ecg.findings:
        raise QuestionError(f"{ecg.record_id}: task {task!r} needs canonical findings; the ECG has none")
    return ecg.findings


def rhythm_of(ecg: Ecg) -> str:
    """The rhythm finding (``SR``, ``SB``, ``STACH`` or ``AF``); sinus rhythm when none is listed."""
    for code in ("AF", "SB", "STACH", "SR"):
        if code in ecg.findings:
            return code
    return "SR"


def axis_category(axis_deg: float | None) -> str | None:
    """``normal`` (-30..90 deg), ``left axis deviation`` (-90..-30), ``right axis deviation`` (90..180),
    ``extreme axis deviation`` (-180..-90); ``None`` when unknown."""
    if axis_deg is None:
        return None
    a = (float(axis_deg) + 180.0) % 360.0 - 180.0
    if -30.0 <= a <= 90.0:
        return "normal"
    if -90.0 <= a < -30.0:
        return "left axis deviation"
    if 90.0 < a <= 180.0:
        return "right axis deviation"
    return "extreme axis deviation"


def _meta_num(ecg: Ecg, key: str) -> float | None:
    value = ecg.meta.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _mi_leads(ecg: Ecg) -> tuple[str, ...]:
    territory = ecg.meta.get("mi_territory")
    return MI_TERRITORIES.get(str(territory), ()) if territory else ()


# --------------------------------------------------------------------------------------------------
# Close-ended multi-label (code15, ptbxl, cpsc)
# --------------------------------------------------------------------------------------------------

_MULTI_LEADINS = (
    "Evaluate the ECG image and identify all fitting options from the provided list, and enumerate them using "
    "semicolon: ",
    "Based on the ECG image, identify all fitting options from the provided list, and enumerate them using semicolon: ",
    "Review the electrocardiogram shown and identify all fitting options from the provided list, and enumerate "
    "them using semicolon: ",
    "Look at this 12-lead ECG and identify all fitting options from the provided list, and enumerate them using "
    "semicolon: ",
)
_PTB_QUESTIONS = (
    "Which diagnostic superclasses describe this ECG? ",
    "What diagnostic categories does this ECG belong to? ",
    "Classify this ECG into its diagnostic superclasses. ",
)
_PTB_IDENTIFY = "Identify all fitting options from the provided list, and enumerate them using semicolon: "
_CPSC_LEADINS = (
    "Please determine the appropriate diagnosis for the ECG image: ",
    "Please determine the appropriate diagnoses for this ECG image from the following: ",
    "Identify the diagnoses that apply to the ECG image among: ",
)


def _coded(vocab: str, codes: Sequence[str]) -> list[str]:
    return [f"{c}({LONG_NAMES[vocab][c]})" for c in codes]


def code15_gold(ecg: Ecg) -> str:
    """CODE-15% gold: present labels as ``CODE(long name)`` joined by ``"; "``; else exactly ``NORM``
    (``ABNORMAL`` when the findings are abnormal but outside the six classes)."""
    labels = ecg.labels_in("code15")
    if labels:
        return "; ".join(_coded("code15", labels))
    if ecg.findings and not is_normal(ecg.findings):
        return "ABNORMAL"
    return "NORM"


def code15_prompt(rng: np.random.Generator) -> str:
    """The CODE-15% question (hand-written template, as in ECGInstruct); it reads no label."""
    return f"{_choice(rng, _MULTI_LEADINS)}{', '.join(_coded('code15', CODE15_LABELS))}. {ONLY_OPTIONS}"


def build_code15(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator) -> Record:
    """Close-ended multi-label question with CODE-15%'s options (:func:`code15_prompt`)."""
    return _record(ecg, image, record_id, code15_prompt(rng), code15_gold(ecg), {"task": "code15"})


def ptbxl_gold(ecg: Ecg) -> str:
    """PTB-XL superclass gold: ``CODE(long name)`` joined by ``"; "``; a sentence without codes when none applies."""
    labels = ecg.labels_in("ptbxl")
    return "; ".join(_coded("ptbxl", labels)) if labels else "None of the listed superclasses apply."


def ptbxl_prompt(rng: np.random.Generator) -> str:
    """The question over the five PTB-XL diagnostic superclasses; it reads no label."""
    options = ", ".join(_coded("ptbxl", PTBXL_SUPERCLASSES))
    if rng.random() < 0.5:
        lead = _choice(rng, _MULTI_LEADINS)
    else:
        lead = f"{_choice(rng, _PTB_QUESTIONS)}{_PTB_IDENTIFY}"
    return f"{lead}{options}. {ONLY_OPTIONS}"


def build_ptbxl(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator) -> Record:
    """Close-ended multi-label question over the five PTB-XL diagnostic superclasses (:func:`ptbxl_prompt`)."""
    return _record(ecg, image, record_id, ptbxl_prompt(rng), ptbxl_gold(ecg), {"task": "ptbxl"})


def cpsc_gold(ecg: Ecg) -> str:
    """CPSC-2018 gold: the codes joined by ``"; "`` (``AF; RBBB``): the scorer searches for codes, not names."""
    labels = ecg.labels_in("cpsc")
    return "; ".join(labels) if labels else "None of the listed diagnoses apply."


def cpsc_prompt(rng: np.random.Generator) -> str:
    """The CPSC-2018 query with the nine long names in a shuffled order (paper Fig. 3); it reads no label."""
    names = [LONG_NAMES["cpsc"][c] for c in CPSC_LABELS]
    order = rng.permutation(len(names))
    return f"{_choice(rng, _CPSC_LEADINS)}{', '.join(names[i] for i in order)}."


def build_cpsc(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator) -> Record:
    """CPSC-2018 query (:func:`cpsc_prompt`)."""
    return _record(ecg, image, record_id, cpsc_prompt(rng), cpsc_gold(ecg), {"task": "cpsc"})


#: The label-set questions: the prompts whose answer is a subset of a fixed label set, drawn without any label.
LABEL_SET_PROMPTS: dict[str, Callable[[np.random.Generator], str]] = {
    "ptbxl": ptbxl_prompt,
    "code15": code15_prompt,
    "cpsc": cpsc_prompt,
}


# --------------------------------------------------------------------------------------------------
# 8-option MCQ (CSN / G12EC)
# --------------------------------------------------------------------------------------------------

#: SNOMED codes that must not be offered as *wrong* options when a finding is present (synonyms, findings the
#: present one implies or commonly produces, e.g. ST elevation with MI, LAD with LBBB/LVH).
_COMPATIBLE: dict[str, frozenset[str]] = {
    "SR": frozenset({"426783006", "427393009"}),
    "SB": frozenset({"426177001", "426783006", "427393009"}),
    "STACH": frozenset({"427084000", "426783006", "427393009", "426761007"}),
    "AF": frozenset({"164889003", "164890007", "426761007", "164912004"}),
    "IAVB": frozenset({"270492004", "164947007"}),
    "RBBB": frozenset({"59118001", "713427006", "713426002", "698252002", "89792004", "59931005", "164934002"}),
    "LBBB": frozenset(
        {"164909002", "733534002", "251120003", "698252002", "39732003", "164930006", "55930002", "428750005"}
        | {"164934002", "164931005", "59931005", "164917005", "429622005", "164873001", "164865005", "54329005"}
        | {"57054005", "413444003", "164861001"}
    ),
    "MI": frozenset(
        {"164865005", "54329005", "57054005", "413444003", "164861001", "164931005", "164917005", "164930006"}
        | {"55930002", "428750005", "164934002", "59931005", "429622005"}
    ),
    "STD": frozenset({"429622005", "164930006", "55930002", "428750005", "413444003", "164861001", "164934002"}),
    "TINV": frozenset({"59931005", "164934002", "428750005", "55930002", "164861001", "413444003", "164930006"}),
    "LVH": frozenset(
        {"164873001", "39732003", "164930006", "55930002", "428750005", "164934002", "59931005", "429622005"}
    ),
    "PAC": frozenset({"284470004", "63593006", "427393009", "164912004"}),
    "PVC": frozenset({"427172004", "17338001", "164884008"}),
}
#: Codes whose truth the generator does not control: never offered as a wrong option.
_NEVER_NEGATIVE: frozenset[str] = frozenset({"427393009", "251146004"})


def mcq_pool(ecg: Ecg) -> list[str]:
    """SNOMED codes that are safely *false* for ``ecg`` (candidates for the 7 wrong options), in code order."""
    excluded = set(_NEVER_NEGATIVE)
    for f in ecg.findings:
        excluded |= _COMPATIBLE.get(f, frozenset())
    axis = _meta_num(ecg, "axis_deg")
    if axis is None or axis < -20:
        excluded |= {"39732003", "445118002"}  # left axis deviation, left anterior fascicular block
    if axis is None or axis > 80:
        excluded |= {"47665007", "89792004"}  # right axis deviation, right ventricular hypertrophy
    qtc = _meta_num(ecg, "qtc_ms")
    if qtc is None or qtc > 440:
        excluded.add("111975006")  # prolonged qt interval
    rate = _meta_num(ecg, "heart_rate")
    if rate is None or rate > 100:
        excluded |= {"426761007", "164895002"}  # SVT, VT
    pr = _meta_num(ecg, "pr_ms")
    if pr is None or pr > 190:
        excluded.add("164947007")  # prolonged pr interval
    names_present = {SNOMED[SNOMED_OF_FINDING[f]][1] for f in ecg.findings if f in SNOMED_OF_FINDING}
    return sorted(c for c in SNOMED if c not in excluded and SNOMED[c][1] not in names_present)


def mcq_true_finding(ecg: Ecg, rng: np.random.Generator) -> str:
    """The finding the MCQ asks about: a random abnormal finding, or the rhythm of a normal ECG."""
    findings = _need_findings(ecg, "mcq")
    abnormal = sorted(f for f in findings if f != "SR")
    return _choice(rng, abnormal) if abnormal else "SR"


_MCQ_QUESTIONS = {
    "csn": (
        "What is the most likely diagnosis based on this ECG image?",
        "Which of the following diagnoses is present in this ECG?",
        "Which option best describes the abnormality shown in this 12-lead ECG?",
    ),
    "g12": (
        "Which of the following is the correct diagnosis for this ECG?",
        "Based on the ECG image, which diagnosis applies?",
        "Identify the diagnosis that this electrocardiogram shows.",
    ),
}
_MCQ_INSTRUCTIONS = (
    ONLY_OPTIONS,
    "Provide the correct option directly without any explanation.",
    "Answer the following question with the letter and text of the correct option only.",
)


def build_mcq(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator, *, style: str = "csn") -> Record:
    """8-option MCQ: the true diagnosis and 7 sampled false ones as ``A. <label>`` lines; gold ``"C. <label>"``."""
    if style not in _MCQ_QUESTIONS:
        raise QuestionError(f"{ecg.record_id}: unknown MCQ style {style!r}; known: {sorted(_MCQ_QUESTIONS)}")
    true = mcq_true_finding(ecg, rng)
    true_name = SNOMED[SNOMED_OF_FINDING[true]][1]
    pool = mcq_pool(ecg)
    if len(pool) < 7:
        raise QuestionError(f"{ecg.record_id}: only {len(pool)} safe wrong options for an 8-option MCQ")
    negatives = [SNOMED[pool[i]][1] for i in rng.choice(len(pool), size=7, replace=False)]
    options = [true_name, *negatives]
    order = rng.permutation(8)
    options = [options[i] for i in order]
    letter = MCQ_LETTERS[int(np.flatnonzero(order == 0)[0])]
    lines = "\n".join(f"{MCQ_LETTERS[i]}. {opt}" for i, opt in enumerate(options))
    prompt = f"{_choice(rng, _MCQ_QUESTIONS[style])}\n{lines}\n{_choice(rng, _MCQ_INSTRUCTIONS)}"
    answer = f"{letter}. {true_name}"
    meta = {"task": "mcq", "style": style, "options": options, "answer_letter": letter, "asked_finding": true}
    return _record(ecg, image, record_id, prompt, answer, meta)


# --------------------------------------------------------------------------------------------------
# Fill-in-the-blank and report generation
# --------------------------------------------------------------------------------------------------

_RHYTHM_NAMES = {
    "SR": "sinus rhythm",
    "SB": "sinus bradycardia",
    "STACH": "sinus tachycardia",
    "AF": "atrial fibrillation",
}


def _fill_slots(ecg: Ecg) -> list[tuple[str, str]]:
    """(sentence with a blank, the blank's value) pairs the ECG can answer."""
    slots = [("a rhythm of ____", _RHYTHM_NAMES[rhythm_of(ecg)])]
    axis = _meta_num(ecg, "axis_deg")
    if axis is not None:
        slots.append(("a cardiac axis of ____", str(axis_category(axis))))
    rate = _meta_num(ecg, "heart_rate")
    if rate is not None:
        slots.append(("a heart rate of about ____ beats per minute", f"{rate:.0f}"))
    if "RBBB" in ecg.findings or "LBBB" in ecg.findings:
        side = "right" if "RBBB" in ecg.findings else "left"
        slots.append(("a bundle branch block of the ____ bundle", side))
    qrs = _meta_num(ecg, "qrs_ms")
    if qrs is not None:
        slots.append(("a QRS duration of about ____ ms", f"{qrs:.0f}"))
    pr = _meta_num(ecg, "pr_ms")
    if pr is not None and "AF" not in ecg.findings:
        slots.append(("a PR interval of about ____ ms", f"{pr:.0f}"))
    return slots


_FILL_LEADINS = (
    "Based on the ECG image, fill in the blanks: ",
    "Look at the ECG and fill in the blanks: ",
    "Complete the following statement about this ECG by filling in the blanks: ",
)


def _enumerate(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + (", and " if len(parts) > 2 else " and ") + parts[-1]


def build_fill(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator) -> Record:
    """Fill-in-the-blank: 2-3 blanks from rhythm, axis, rate, bundle branch block, QRS and PR; the gold is the
    completed sentence."""
    _need_findings(ecg, "fill")
    slots = _fill_slots(ecg)
    k = min(len(slots), int(rng.integers(2, 4)))
    chosen = [slots[0]] + [slots[i] for i in sorted(rng.choice(np.arange(1, len(slots)), k - 1, replace=False))]
    blanks = [s for s, _ in chosen]
    filled = [s.replace("____", v) for s, v in chosen]
    stem = "This ECG tracing is most consistent with "
    prompt = f"{_choice(rng, _FILL_LEADINS)}{stem}{_enumerate(blanks)}."
    answer = f"{stem}{_enumerate(filled)}."
    return _record(ecg, image, record_id, prompt, answer, {"task": "fill", "blanks": [v for _, v in chosen]})


_REPORT_PROMPTS = (
    "Review this electrocardiogram image and provide your expert diagnosis.",
    "Examine the ECG signal image and produce a thorough report based on your findings, ending with the final "
    "diagnosis.",
    "Please write a clinical report based on this ECG image.",
    "Interpret this 12-lead ECG: describe rate, rhythm, axis, intervals and morphology, then give the final diagnosis.",
)

_FINDING_SENTENCES = {
    "IAVB": "The PR interval is prolonged with every P wave conducted, consistent with first degree AV block.",
    "RBBB": "The QRS complex is wide with an rsR' pattern in V1-V2 and a broad slurred S wave in I, aVL, V5 and V6, "
    "consistent with right bundle branch block.",
    "LBBB": "The QRS complex is wide with broad notched R waves in I, aVL, V5 and V6 and deep QS complexes in V1-V2, "
    "consistent with left bundle branch block.",
    "STD": "There is horizontal ST-segment depression.",
    "TINV": "T waves are inverted in leads where they are normally upright.",
    "LVH": "QRS voltages are increased and meet the Sokolow-Lyon criterion for left ventricular hypertrophy.",
    "PAC": "Premature atrial complexes with abnormal P waves and narrow QRS complexes are present.",
    "PVC": "Premature ventricular complexes with wide, bizarre QRS complexes and discordant T waves are present.",
}


def report_text(ecg: Ecg) -> str:
    """A structured report (at least four sentences) from the findings and the measured ``meta`` values."""
    findings = _need_findings(ecg, "report")
    rhythm = rhythm_of(ecg)
    rate = _meta_num(ecg, "heart_rate")
    rate_txt = f" at a ventricular rate of about {rate:.0f} beats per minute" if rate is not None else ""
    if rhythm == "AF":
        sentences = [
            f"The rhythm is atrial fibrillation with an irregularly irregular ventricular response{rate_txt}; "
            "no distinct P waves are seen."
        ]
    else:
        sentences = [f"The rhythm is {_RHYTHM_NAMES[rhythm]}{rate_txt}."]
    axis = _meta_num(ecg, "axis_deg")
    if axis is not None:
        cat = axis_category(axis)
        sentences.append(
            f"The QRS axis is normal ({axis:+.0f} degrees)."
            if cat == "normal"
            else f"There is {cat} ({axis:+.0f} degrees)."
        )
    pr, qrs, qt, qtc = (_meta_num(ecg, k) for k in ("pr_ms", "qrs_ms", "qt_ms", "qtc_ms"))
    parts = []
    if rhythm == "AF":
        parts.append("the PR interval cannot be measured")
    elif pr is not None:
        parts.append(f"the PR interval is {pr:.0f} ms")
    if qrs is not None:
        parts.append(f"the QRS duration is {qrs:.0f} ms")
    if qt is not None and qtc is not None:
        parts.append(f"the QT/QTc interval is {qt:.0f}/{qtc:.0f} ms")
    if parts:
        text = _enumerate(parts)
        sentences.append(text[0].upper() + text[1:] + ".")
    if "MI" in findings:
        leads = _mi_leads(ecg)
        territory = ecg.meta.get("mi_territory")
        if leads:
            sentences.append(
                f"Pathological Q waves with ST-segment elevation are seen in leads {_enumerate(list(leads))}, "
                f"consistent with {territory} myocardial infarction."
            )
        else:
            sentences.append("Pathological Q waves with ST-segment elevation indicate myocardial infarction.")
    for code in ("IAVB", "RBBB", "LBBB", "LVH", "STD", "TINV", "PAC", "PVC"):
        if code in findings:
            sentences.append(_FINDING_SENTENCES[code])
    if is_normal(findings):
        sentences.append("There are no conduction delays, ST-segment or T-wave abnormalities, or ectopic beats.")
    if len(sentences) < 4:
        sentences.append("The P waves, QRS complexes and T waves are otherwise unremarkable.")
    order = ("SB", "STACH", "AF", "IAVB", "RBBB", "LBBB", "MI", "LVH", "STD", "TINV", "PAC", "PVC")
    if is_normal(findings):
        diagnosis = ["sinus rhythm", "normal ECG"]
    else:
        diagnosis = (["sinus rhythm"] if rhythm == "SR" else []) + [FINDINGS[f].name for f in order if f in findings]
    sentences.append(f"Final diagnosis: {'; '.join(diagnosis)}.")
    return " ".join(sentences)


def build_report(ecg: Ecg, image: str, record_id: str, rng: np.random.Generator) -> Record:
    """Report generation: a free-text report ending with the final diagnosis."""
    return _record(ecg, image, record_id, _choice(rng, _REPORT_PROMPTS), report_text(ecg), {"task": "report"})


# --------------------------------------------------------------------------------------------------
# ECG-QA style
# --------------------------------------------------------------------------------------------------

_VERIFY_TEMPLATES = (
    "Does this ECG show symptoms of {name}?",
    "Is there evidence of {name} on this ECG?",
    "Does this ECG reveal signs of {name}?",
)
_CHOOSE_TEMPLATES = ("Which symptom does this ECG show, {a} or {b}?", "Which of {a} or {b} does this ECG show?")
_LEAD_TEMPLATES = ("Which leads show ST-segment elevation?", "In which leads is ST elevation present?")
_RHYTHM_TEMPLATES = ("Which rhythm does this ECG show?", "What is the rhythm of this ECG?")
#: Findings asked about in ECG-QA style questions, with their ECG-QA-like names (no commas, none a substring of
#: another, so the scorer's comma split and substring search stay exact).
_QA_NAMES = {
    "AF": "atrial fibrillation",
    "IAVB": "first degree av block",
    "RBBB": "right bundle branch block",
    "LBBB": "left bundle branch block",
    "MI": "myocardial infarction",
    "STD": "st depression",
    "TINV": "t wave inversion",
    "LVH": "left ventricular hypertrophy",
    "PAC": "premature atrial complex",
    "PVC": "premature ventricular complex",
    "SB": "sinus bradycardia",
    "STACH": "sinus tachycardia",
}


#: Absent findings not asked about when these are present (their secondary changes look alike, so "no" would be
#: debatable from the image): LBBB's voltages and ST-T changes, MI's reciprocal ST depression and T inversion, ...
_QA_MIMICS: dict[str, frozenset[str]] = {
    "LBBB": frozenset({"LVH", "STD", "TINV", "MI", "RBBB"}),
    "RBBB": frozenset({"TINV", "LBBB"}),
    "MI": frozenset({"STD", "TINV"}),
    "LVH": frozenset({"STD", "TINV"}),
    "STD": frozenset({"TINV"}),
    "PVC": frozenset({"PAC"}),
    "PAC": frozenset({"PVC"}),
}


def _ecgqa_question(ecg: Ecg, rng: np.random.Generator) -> tuple[str, str, list[str], list[str]]:
    """(question type, question, options, gold) for one ECG-QA style item."""
    findings = _need_findings(ecg, "ecgqa")
    kinds = ["verify", "verify", "choose", "rhythm"]
    if not ({"LBBB", "LVH"} & findings) and ("MI" not in findings or _mi_leads(ecg)):
        kinds.append("leads")
    kind = _choice(rng, kinds)
    present = sorted(f for f in findings if f in _QA_NAMES)
    mimicked = set().union(*(_QA_MIMICS.get(f, frozenset()) for f in findings))
    absent = sorted(f for f in _QA_NAMES if f not in findings and f not in mimicked)
    if kind == "verify":
        ask_present = bool(present) and bool(rng.integers(2))
        code = _choice(rng, present if ask_present else absent)
        question = _choice(rng, _VERIFY_TEMPLATES).format(name=_QA_NAMES[code])
        return kind, question, ["yes", "no", "not sure"], ["yes" if code in findings else "no"]
    if kind == "choose":
        askable = sorted(set(present) | set(absent))
        pick = [str(c) for c in rng.permutation(askable)[:2]]
        if present and rng.integers(2) and pick[0] not in present:
            pick[0] = _choice(rng, present)
            if pick[1] == pick[0]:
                pick[1] = _choice(rng, absent)
        a, b = (_QA_NAMES[c] for c in pick)
        inside = [n for c, n in zip(pick, (a, b), strict=True) if c in findings]
        gold = ["both"] if len(inside) == 2 else inside or ["none"]
        question = _choice(rng, _CHOOSE_TEMPLATES).format(a=a, b=b)
        return kind, question, [a, b, "both", "none"], gold
    if kind == "rhythm":
        options = [_RHYTHM_NAMES[r] for r in RHYTHMS]
        return kind, _choice(rng, _RHYTHM_TEMPLATES), options, [_RHYTHM_NAMES[rhythm_of(ecg)]]
    gold_leads = list(_mi_leads(ecg)) if "MI" in findings else []
    gold = [f"lead {name}" for name in gold_leads] or ["none"]
    others = [f"lead {name}" for name in LEADS if name not in gold_leads]
    n_distract = int(rng.integers(2, 6))
    distract = [others[i] for i in sorted(rng.choice(len(others), size=min(n_distract, len(others)), replace=False))]
    options = [f"lead {name}" for name in LEADS if f"lead {name}" in set(gold) | set(distract)] + ["none"]
    return "leads", _choice(rng, _LEAD_TEMPLATES), options, gold


def _exact_options(options: list[str], gold: list[str]) -> list[str]:
    """Drop wrong options that the scorer's (case-insensitive) substring search would find in the gold text."""
    text = "/".join(gold).lower()
    return [o for o in options if o in gold or o.lower() not in text]


def build_ecgqa(
    ecg: Ecg, image: str, record_id: str, rng: np.random.Generator, *, gold_as_list: bool = False
) -> Record:
    """ECG-QA style question (verify / choose / rhythm / leads).

    The gold answer is the list of correct options (``gold_as_list``, the ``ecgqa-test`` format) or the options
    joined by ``/`` (training text). Options contain no commas and no wrong option occurs inside the gold text.
    """
    kind, question, options, gold = _ecgqa_question(ecg, rng)
    options = _exact_options(options, gold)
    if any("," in o for o in options):  # pragma: no cover - guarded by the option vocabularies above
        raise QuestionError(f"{ecg.record_id}: ECG-QA option with a comma: {options}")
    prompt = f"{ECGQA_PREFIX}\nQuestion: {question}\nOptions: {', '.join(options)} {ECGQA_SUFFIX}"
    answer: str | list[str] = list(gold) if gold_as_list else "/".join(gold)
    meta = {"task": "ecgqa", "question_type": kind, "options": options, "answers": list(gold)}
    return _record(ecg, image, record_id, prompt, answer, meta)


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------

Builder = Callable[[Ecg, str, str, np.random.Generator], Record]

BUILDERS: dict[str, Builder] = {
    "code15": build_code15,
    "ptbxl": build_ptbxl,
    "cpsc": build_cpsc,
    "mcq": build_mcq,
    "fill": build_fill,
    "report": build_report,
    "ecgqa": build_ecgqa,
}

#: ECGBench subsets we synthesise: (builder, keyword arguments, ``sample_spec`` vocabulary).
BENCH_SUBSETS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "ptb-test": ("ptbxl", {}, "ptbxl"),
    "code15-test": ("code15", {}, "code15"),
    "cpsc-test": ("cpsc", {}, "cpsc"),
    "csn-test-no-cot": ("mcq", {"style": "csn"}, None),
    "g12-test-no-cot": ("mcq", {"style": "g12"}, None),
    "ecgqa-test": ("ecgqa", {"gold_as_list": True}, "ptbxl"),
}


def build_record(task: str, ecg: Ecg, image: str, record_id: str, rng: np.random.Generator, **kwargs: Any) -> Record:
    """Build one record of ``task`` (one of :data:`TASKS`)."""
    if task not in BUILDERS:
        raise QuestionError(f"{ecg.record_id}: unknown task {task!r}; known: {', '.join(TASKS)}")
    return BUILDERS[task](ecg, image, record_id, rng, **kwargs)


__all__ = [
    "BENCH_SUBSETS",
    "BUILDERS",
    "ECGQA_PREFIX",
    "ECGQA_SUFFIX",
    "MCQ_LETTERS",
    "ONLY_OPTIONS",
    "TASKS",
    "QuestionError",
    "axis_category",
    "build_code15",
    "build_cpsc",
    "build_ecgqa",
    "build_fill",
    "build_mcq",
    "build_ptbxl",
    "build_record",
    "build_report",
    "code15_gold",
    "cpsc_gold",
    "mcq_pool",
    "ptbxl_gold",
    "report_text",
    "rhythm_of",
]
