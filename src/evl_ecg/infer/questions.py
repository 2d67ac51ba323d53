"""The questions :class:`~evl_ecg.infer.interpreter.Interpreter` asks: the ones the models were trained on.

Each question is one of the corpus's task wordings (``evl_ecg.data.questions``; the first template of each, so that
the same ECG always gets the same prompt), with the label vocabulary its answers are parsed in, the scorer subset
whose strict rules parse them (``evl_ecg.eval.parsing.strict_labels``), the gold format of a one-label answer
(``"coded"``: ``MI(myocardial infarction)``; ``"code"``: ``AF``) and the corpus's "nothing applies" answers, which are
the no-label candidates of the label probabilities (``evl_ecg.eval.likelihood``, ``softmax`` normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

from evl_ecg.data.questions import ONLY_OPTIONS
from evl_ecg.ecg.labels import CODE15_LABELS, CPSC_LABELS, LONG_NAMES, PTBXL_SUPERCLASSES, VOCABULARIES

__all__ = ["QUESTIONS", "Question", "get_question"]


@dataclass(frozen=True)
class Question:
    """One question and how its answer is read.

    Attributes:
        key: the ``--question`` name (``ptbxl``, ``cpsc``, ``code15``, ``report``).
        title: what it asks, in words.
        prompt: the first human turn (without ``<image>``), as the training corpus words it.
        vocabulary: label vocabulary of the answer (``None``: a free interpretation, parsed in every vocabulary).
        subset: the ECGBench subset whose strict scorer rules parse the answer.
        answer_style: ``"coded"`` or ``"code"`` (:func:`evl_ecg.eval.likelihood.format_answer`).
        no_label_answers: the corpus's answers that name no label (first: the null answer).
        max_new_tokens: default generation length (the longest gold answers of the task fit).
    """

    key: str
    title: str
    prompt: str
    vocabulary: str | None
    subset: str | None
    answer_style: str | None
    no_label_answers: tuple[str, ...]
    max_new_tokens: int

    @property
    def labels(self) -> tuple[str, ...]:
        return VOCABULARIES[self.vocabulary] if self.vocabulary else ()


def _coded(vocabulary: str, codes: tuple[str, ...]) -> str:
    return ", ".join(f"{c}({LONG_NAMES[vocabulary][c]})" for c in codes)


_MULTI = (
    "Evaluate the ECG image and identify all fitting options from the provided list, and enumerate them using "
    "semicolon: "
)

QUESTIONS: dict[str, Question] = {
    "ptbxl": Question(
        key="ptbxl",
        title="PTB-XL diagnostic superclasses",
        prompt=f"{_MULTI}{_coded('ptbxl', PTBXL_SUPERCLASSES)}. {ONLY_OPTIONS}",
        vocabulary="ptbxl",
        subset="ptb-test",
        answer_style="coded",
        no_label_answers=("None of the listed superclasses apply.",),
        max_new_tokens=64,
    ),
    "cpsc": Question(
        key="cpsc",
        title="CPSC-2018 diagnoses",
        prompt="Please determine the appropriate diagnosis for the ECG image: "
        + ", ".join(LONG_NAMES["cpsc"][c] for c in CPSC_LABELS)
        + ".",
        vocabulary="cpsc",
        subset="cpsc-test",
        answer_style="code",
        no_label_answers=("None of the listed diagnoses apply.",),
        max_new_tokens=48,
    ),
    "code15": Question(
        key="code15",
        title="CODE-15% findings",
        prompt=f"{_MULTI}{_coded('code15', CODE15_LABELS)}. {ONLY_OPTIONS}",
        vocabulary="code15",
        subset="code15-test",
        answer_style="coded",
        no_label_answers=("NORM", "ABNORMAL"),
        max_new_tokens=96,
    ),
    "report": Question(
        key="report",
        title="a free interpretation (report ending with the final diagnosis)",
        prompt="Examine the ECG signal image and produce a thorough report based on your findings, ending with the "
        "final diagnosis.",
        vocabulary=None,
        subset=None,
        answer_style=None,
        no_label_answers=(),
        max_new_tokens=320,
    ),
}


def get_question(key: str) -> Question:
    """The question named ``key``; a ``ValueError`` naming the known ones otherwise."""
    if key not in QUESTIONS:
        raise ValueError(f"unknown question {key!r}; expected one of {', '.join(QUESTIONS)}")
    return QUESTIONS[key]
