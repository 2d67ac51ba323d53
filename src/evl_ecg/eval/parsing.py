"""The text rules of the two ECGBench scorers: what a model's answer says, read as PULSE's published scorer reads it
(``pulse_*``: case-sensitive substrings, its five letter rules, its ECG-QA candidate match; ``docs/eval.md`` section
2 lists every behaviour) and as the ``strict`` scorer reads it (whole codes or long names, explicit letter rules or
the option text, case-insensitive option sets; section 3). :mod:`evl_ecg.eval.scoring` scores files with them, and
:mod:`evl_ecg.infer` reads one answer with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evl_ecg.ecg.labels import CODE15_LABELS, CPSC_LABELS, PTBXL_SUPERCLASSES
from evl_ecg.eval.predictions import (
    join_value,
)

ECGQA_RULES: tuple[str, ...] = ("pulse", "gem")

#: Label vocabulary of each multi-label subset (scorer order).
VOCABULARY: dict[str, tuple[str, ...]] = {
    "ptb-test": PTBXL_SUPERCLASSES,
    "code15-test": CODE15_LABELS,
    "cpsc-test": CPSC_LABELS,
}
#: Classes the strict scorer scores on CODE-15%: the two whole-answer classes, then the six labels.
CODE15_STRICT_CLASSES: tuple[str, ...] = ("NORM", "ABNORMAL", *CODE15_LABELS)

PULSE_LETTERS: tuple[str, ...] = tuple("ABCDEFGH")
#: Letters an answer may take, per MCQ subset (the published fallback draws from these).
MCQ_LETTERS: dict[str, tuple[str, ...]] = {
    "csn-test-no-cot": PULSE_LETTERS,
    "g12-test-no-cot": PULSE_LETTERS,
    "mmmu-ecg": tuple("ABCD"),
}
ECGQA_SUFFIX = "Only answer based on the given Options without any explanation."

# --------------------------------------------------------------------------------------------------
# pulse: the published rules
# --------------------------------------------------------------------------------------------------


def pulse_labels(text: str, labels: Sequence[str]) -> list[str]:
    """``[L for L in labels if L in text]``: case-sensitive substring search, in vocabulary order."""
    return [label for label in labels if label in text]


def pulse_code15_gold(answer: str) -> list[str]:
    """CODE-15% gold: exactly ``"NORM"`` -> ``["NORM"]``; exactly ``"ABNORMAL"`` -> ``["ABNORMAL"]``; else labels."""
    if answer == "NORM":
        return ["NORM"]
    if answer == "ABNORMAL":
        return ["ABNORMAL"]
    return pulse_labels(answer, CODE15_LABELS)


def pulse_code15_pred(text: str) -> tuple[list[str], str]:
    """CODE-15% prediction and the branch taken (``norm``, ``abnormal``, ``labels``).

    The text after the last ``"Answer:"`` is used when there is one; then ``"NORM" in text and "ABNORMAL" not in
    text`` -> ``["NORM"] + labels``; elif ``"ABNORMAL" in text`` -> ``["ABNORMAL"] + labels``; else labels.
    """
    if "Answer:" in text:
        text = text.split("Answer:")[-1]
    labels = pulse_labels(text, CODE15_LABELS)
    if "NORM" in text and "ABNORMAL" not in text:
        return ["NORM", *labels], "norm"
    if "ABNORMAL" in text:
        return ["ABNORMAL", *labels], "abnormal"
    return labels, "labels"


def pulse_extract_letter(text: str) -> tuple[str | None, str]:
    """The published ``extract(text)``; returns (letter or None, rule name).

    1. ``exact``: ``text`` is exactly one of ``A``-``H``;
    2. ``dotted_letter``: the alphabetically first ``X`` in ``A``-``H`` with ``"X."`` anywhere in the text;
    3. ``correct_option_is``: the first character after the last ``"The correct option is "`` if it is ``A``-``H``,
       else None (rule 4 is then *not* tried, as published);
    4. ``answer_colon``: the alphabetically first of ``A``-``H`` that occurs anywhere in the stripped text after the
       last ``"Answer:"`` (``"Answer: Bradycardia"`` -> ``"B"``), else None;
    5. ``none``: None.
    """
    if text in PULSE_LETTERS:
        return text, "exact"
    for letter in PULSE_LETTERS:
        if letter + "." in text:
            return letter, "dotted_letter"
    if "The correct option is " in text:
        tail = text.split("The correct option is ")[-1]
        # published: tail[0] raises IndexError on an empty tail; we read it as "no letter"
        if tail[:1] in PULSE_LETTERS:
            return tail[0], "correct_option_is"
        return None, "correct_option_is"
    if "Answer:" in text:
        answer = text.split("Answer:")[-1].strip()
        for letter in PULSE_LETTERS:
            if letter in answer:
                return letter, "answer_colon"
        return None, "answer_colon"
    return None, "none"


def ecgqa_candidates(prompt: str) -> list[str]:
    """PULSE's ECG-QA candidates: the prompt after the last ``"Options:"``, the suffix :data:`ECGQA_SUFFIX`
    removed, split on commas, each stripped."""
    return [c.strip() for c in prompt.split("Options:")[-1].replace(ECGQA_SUFFIX, "").split(",")]


def ecgqa_gold_options(answer: str | list[str], candidates: Sequence[str] = ()) -> list[str]:
    """The gold answer of an ECG-QA item as a list of option strings.

    A list of strings (not all single characters) is the list of options. A string, or a list of single characters
    (the HF ``list<str>`` quirk, joined first), is one option when it equals a candidate (case-insensitively) and is
    otherwise split on ``,``, ``;`` and ``/`` (the separators the prompts ask for).
    """
    if isinstance(answer, list) and not all(len(a) <= 1 for a in answer):
        return [a.strip() for a in answer if a.strip()]
    text = join_value(answer).strip()
    lowered = {c.lower() for c in candidates}
    if text.lower() in lowered or not text:
        return [text] if text else []
    return [p.strip() for p in re.split(r"[,;/]", text) if p.strip()]


def pulse_ecgqa_gold(answer: str | list[str], candidates: Sequence[str] = ()) -> list[str]:
    """The gold options the ``pulse`` rule compares with.

    A list of option strings is taken as stored, spaces included, as published (``set(predict) ==
    set(golden_label[qid])``): a gold option ``" no"`` never equals the stripped candidate ``"no"``. A character
    list or a string is normalised by :func:`ecgqa_gold_options` (our documented deviation: the literal code would
    compare option strings with characters).
    """
    if isinstance(answer, list) and not all(len(a) <= 1 for a in answer):
        return list(answer)
    return ecgqa_gold_options(answer, candidates)


def ecgqa_correct(pred: Sequence[str], candidates: Sequence[str], gold: str | list[str], *, rule: str) -> bool:
    """Whether predicted candidates ``pred`` answer ``gold`` by PULSE's rule (option sets, :func:`pulse_ecgqa_gold`)
    or GEM's (``set("".join(pred)) == set(gold characters)``)."""
    if rule == "pulse":
        return set(pred) == set(pulse_ecgqa_gold(gold, candidates))
    if rule == "gem":
        gold_chars = set(join_value(gold)) if isinstance(gold, str) else set("".join(gold))
        return set("".join(pred)) == gold_chars
    raise ValueError(f"unknown ECG-QA rule {rule!r}; known: {', '.join(ECGQA_RULES)}")


def pulse_ecgqa(
    text: str, candidates: Sequence[str], gold: str | list[str], *, rule: str = "pulse"
) -> tuple[bool, list[str]]:
    """(correct, predicted candidates) by PULSE's rule or GEM's.

    * ``pulse``: ``pred = [c for c in candidates if c in text.lower()]``; correct iff ``set(pred) == set(gold)``
      with the gold as :func:`pulse_ecgqa_gold` gives it (a stored option list as is, spaces included).
    * ``gem``: ``pred = [c for c in candidates if c.lower() in text.lower()]``; correct iff
      ``set("".join(pred)) == set(gold characters)`` (a loose character-set comparison).
    """
    lowered = text.lower()
    if rule == "pulse":
        pred = [c for c in candidates if c in lowered]
    elif rule == "gem":
        pred = [c for c in candidates if c.lower() in lowered]
    else:
        raise ValueError(f"unknown ECG-QA rule {rule!r}; known: {', '.join(ECGQA_RULES)}")
    return ecgqa_correct(pred, candidates, gold, rule=rule), pred


# --------------------------------------------------------------------------------------------------
# strict: whole-word labels and long names
# --------------------------------------------------------------------------------------------------

_ALNUM = "A-Za-z0-9"
_LEFT = rf"(?<![{_ALNUM}])"
_RIGHT = rf"(?![{_ALNUM}])"
# A code must not touch a letter/digit, nor be glued to one by a hyphen ("ST-T", "AF-like", "non-NORM").
_CODE_LEFT = rf"(?<![{_ALNUM}])(?<![{_ALNUM}]-)"
_CODE_RIGHT = rf"(?![{_ALNUM}])(?!-[{_ALNUM}])"
_SEP = r"[\s\-]+"

# Long names and other spellings (regex, case-insensitive; a literal space stands for one or more spaces/hyphens).
_AVB1 = r"(?:1st|first|1|1°) degree (?:av|a-v|atrio-?ventricular) (?:block|conduction delay)"
_NORMAL_ECG = r"normal (?:ecg|ekg|electrocardiogram|exam)"
_PAC = r"(?:premature atrial|atrial premature) (?:contractions?|complex(?:es)?|beats?)"
_PVC = r"(?:premature ventricular|ventricular premature) (?:contractions?|complex(?:es)?|beats?)"

SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "ptb-test": {
        "NORM": (_NORMAL_ECG,),
        "MI": (r"myocardial infarctions?", r"infarcts?", r"infarctions?", r"n?stemi"),
        "STTC": (
            r"st\s*[/-]?\s*t(?: waves?)? (?:changes?|abnormalit(?:y|ies))",
            r"st(?: segment)? changes?",
        ),
        "CD": (r"conduction (?:disturbances?|disorders?|defects?|abnormalit(?:y|ies)|delays?)",),
        "HYP": (r"hypertroph(?:y|ies|ic)",),
    },
    "code15-test": {
        "NORM": (_NORMAL_ECG,),
        "ABNORMAL": (r"abnormal (?:ecg|ekg|electrocardiogram|exam)",),
        "1dAVb": (_AVB1,),
        "RBBB": (r"right bundle branch block",),
        "LBBB": (r"left bundle branch block",),
        "SB": (r"sinus bradycardia",),
        "ST": (r"sinus tachycardia",),
        "AF": (r"atrial fibrillation", r"a-?fib"),
    },
    "cpsc-test": {
        "NORM": (_NORMAL_ECG,),
        "AF": (r"atrial fibrillation", r"a-?fib"),
        "I-AVB": (_AVB1, r"i-?avb", r"1d?avb"),
        "LBBB": (r"left bundle branch block",),
        "RBBB": (r"right bundle branch block",),
        "PAC": (_PAC,),
        "PVC": (_PVC, r"ventricular ectopics?(?: beats?)?"),
        "STD": (r"st(?: segment)? depressions?",),
        "STE": (r"st(?: segment)? elevations?",),
    },
}

# "ST" followed by segment/elevation/depression/change/wave/T is never the CODE-15% code ST (sinus tachycardia).
_ST_COMPOUND = re.compile(
    rf"{_LEFT}ST(?:\s*/\s*T{_RIGHT}|(?i:{_SEP}(?:segments?|elevat\w*|depress\w*|changes?|abnormal\w*|deviat\w*"
    rf"|waves?|intervals?|T{_RIGHT})))"
)


def _phrase(pattern: str) -> re.Pattern[str]:
    return re.compile(_LEFT + pattern.replace(" ", _SEP) + _RIGHT, re.IGNORECASE)


def _code(code: str) -> re.Pattern[str]:
    """A code as a whole token: case-sensitive, except that a mixed-case code (``1dAVb``) matches in any case; an
    all-uppercase code of 3+ characters may carry a plural ``s`` (``PVCs``)."""
    body = re.escape(code)
    if code != code.upper():
        body = f"(?i:{body})"
    plural = "s?" if len(code) >= 3 and code.isupper() else ""
    return re.compile(_CODE_LEFT + body + plural + _CODE_RIGHT)


_COMPILED: dict[str, tuple[list[tuple[str, re.Pattern[str]]], list[tuple[str, re.Pattern[str]]]]] = {}


def _patterns(subset: str) -> tuple[list[tuple[str, re.Pattern[str]]], list[tuple[str, re.Pattern[str]]]]:
    if subset not in _COMPILED:
        classes = CODE15_STRICT_CLASSES if subset == "code15-test" else VOCABULARY[subset]
        long = [(label, _phrase(p)) for label, pats in SYNONYMS[subset].items() for p in pats]
        codes = [(label, _code(label)) for label in classes]
        _COMPILED[subset] = (long, codes)
    return _COMPILED[subset]


def strict_classes(subset: str) -> tuple[str, ...]:
    """Classes the strict scorer scores on a multi-label subset (the full vocabulary, fixed)."""
    return CODE15_STRICT_CLASSES if subset == "code15-test" else VOCABULARY[subset]


@dataclass(frozen=True)
class LabelMatch:
    """Labels found in a text by :func:`strict_labels`, and how (``by_code`` / ``by_name``)."""

    labels: list[str]
    by_code: list[str]
    by_name: list[str]
    answer_split: bool


def strict_labels(text: str, subset: str) -> LabelMatch:
    """Labels of a multi-label subset named in ``text`` as whole codes or long names.

    Order: the text after the last ``Answer:`` (any case) is used when there is one; long names (case-insensitive,
    :data:`SYNONYMS`) are matched first and blanked out; ``ST`` compounds (``ST segment``, ``ST elevation``, ``ST/T``,
    ...) are blanked; then codes match as whole tokens (:func:`_code`): ``NORM`` not in ``ABNORMAL``, ``MI`` not in
    ``STEMI``, ``STE`` not in ``STEMI``, ``ST`` not in ``ST-T``/``STE``/``STD``, ``AF`` not in ``AFL``. Negations
    ("no atrial fibrillation") are not handled. For CODE-15% an answer that is exactly ``NORM`` or ``ABNORMAL`` is
    that class alone (the gold convention).
    """
    long, codes = _patterns(subset)
    split = False
    parts = re.split(r"(?i)answer\s*:", text)
    if len(parts) > 1:
        text, split = parts[-1], True
    if subset == "code15-test" and text.strip() in ("NORM", "ABNORMAL"):
        return LabelMatch([text.strip()], [text.strip()], [], split)
    by_name: set[str] = set()
    chars = list(text)
    for label, pat in long:
        for m in pat.finditer(text):
            by_name.add(label)
            chars[m.start() : m.end()] = " " * (m.end() - m.start())
    masked = "".join(chars)
    masked = _ST_COMPOUND.sub(lambda m: " " * len(m.group(0)), masked)
    by_code = {label for label, pat in codes if pat.search(masked)}
    order = strict_classes(subset)
    found = by_name | by_code
    return LabelMatch(
        labels=[c for c in order if c in found],
        by_code=[c for c in order if c in by_code],
        by_name=[c for c in order if c in by_name],
        answer_split=split,
    )


_OPTION_MARK = re.compile(r"(?<![A-Za-z0-9])\(?([A-H])[.)]\s+")


def parse_options(prompt: str, letters: Sequence[str] = PULSE_LETTERS) -> dict[str, str]:
    """Option texts of an MCQ prompt: markers ``A.``/``A)``/``(A)`` in alphabetical sequence, each option running
    to the next marker or the end of its line (``"A. x\\nB. y"`` and ``"A) x; B) y"`` both work)."""
    marks: list[re.Match[str]] = []
    for m in _OPTION_MARK.finditer(prompt):
        if len(marks) < len(letters) and m.group(1) == letters[len(marks)]:
            marks.append(m)
    options: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(prompt)
        seg = prompt[m.end() : end].split("\n")[0].strip().rstrip(";,.").strip()
        if seg:
            options[m.group(1)] = seg
    return options


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in pattern.finditer(text)]


def find_phrases(text: str, phrases: Iterable[str]) -> list[str]:
    """The phrases found in ``text`` as whole words, case-insensitively, leaving out a phrase whose every match lies
    inside the match of a longer phrase (``"myocardial infarction"`` inside ``"old myocardial infarction"``)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for phrase in phrases:
        if not phrase.strip():
            continue
        pat = re.compile(_LEFT + re.escape(phrase.strip()).replace(r"\ ", r"\s+") + _RIGHT, re.IGNORECASE)
        found = _spans(pat, text)
        if found:
            spans[phrase] = found
    kept = []
    for phrase, own in spans.items():
        covered = all(
            any(o != phrase and s >= a and e <= b and (e - s) < (b - a) for o, sp in spans.items() for a, b in sp)
            for s, e in own
        )
        if not covered:
            kept.append(phrase)
    return kept


_EXACT = re.compile(r"\(?([A-H])\)?[.)]?")
_LEADING = re.compile(r"\(?([A-H])[.):](?:\s|$)")
_ANSWER_IS = re.compile(r"(?i:(?:answer|option|choice) is)\s*:?\s*(?i:option\s*)?\(?([A-H])(?![A-Za-z0-9'-])")
_ANSWER_COLON = re.compile(r"(?i:answer)\s*:\s*(?i:option\s*)?\(?([A-H])(?![A-Za-z0-9'-])")


def strict_extract_letter(text: str, prompt: str, letters: Sequence[str]) -> tuple[str | None, str]:
    """The answer letter by explicit rules; (letter or None, rule).

    Rules in order: ``exact`` (the whole answer is a letter, maybe ``"B."``/``"(B)"``), ``leading`` (the answer
    starts ``"B."``/``"B)"``/``"B:"``), ``answer_is`` (the last ``"answer is B"``/``"option is B"``),
    ``answer_colon`` (the last ``"Answer: B"``), ``option_text`` (exactly one option's text occurs in the answer as
    whole words). Otherwise None with ``empty``, ``ambiguous`` (several option texts) or ``unparsable``. A letter
    outside ``letters`` is ``invalid_letter``.
    """
    t = text.strip()
    if not t:
        return None, "empty"
    checks: list[tuple[str, re.Match[str] | None]] = [
        ("exact", _EXACT.fullmatch(t)),
        ("leading", _LEADING.match(t)),
        ("answer_is", ([*_ANSWER_IS.finditer(t)] or [None])[-1]),
        ("answer_colon", ([*_ANSWER_COLON.finditer(t)] or [None])[-1]),
    ]
    for rule, m in checks:
        if m is not None:
            letter = m.group(1)
            return (letter, rule) if letter in letters else (None, "invalid_letter")
    options = parse_options(prompt, letters)
    if options:
        found = find_phrases(t, options.values())
        letters_found = sorted({k for k, v in options.items() if v in found})
        if len(letters_found) == 1:
            return letters_found[0], "option_text"
        if len(letters_found) > 1:
            return None, "ambiguous"
    return None, "unparsable"


def strict_ecgqa(text: str, candidates: Sequence[str], gold: str | list[str]) -> tuple[bool, list[str]]:
    """(correct, predicted candidates): candidates found as whole words, case-insensitively (:func:`find_phrases`);
    correct iff the lower-cased set equals the lower-cased gold option set."""
    pred = find_phrases(text, candidates)
    gold_set = {g.lower() for g in ecgqa_gold_options(gold, candidates)}
    return {p.lower() for p in pred} == gold_set, pred
