"""Label-space distillation (``label_kd``): the question's label set read off its text, each model's summed
log-likelihood of every candidate answer (against a hand computation from the raw logits), the loss against a
hand-computed KL, and a live distillation run that trains it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from evl_ecg.data.label_sets import (
    candidate_answers,
    candidate_conversation,
    question_label_set,
    training_candidates,
)
from evl_ecg.data.questions import LABEL_SET_PROMPTS
from evl_ecg.distill.label_space import LabelSpaceKD
from evl_ecg.distill.registry import Denominators
from evl_ecg.ecg.labels import CPSC_LABELS, LONG_NAMES, VOCABULARIES
from evl_ecg.outputs import SideOutputs

CPSC_QUESTION = "<image>\nPlease determine the appropriate diagnosis for the ECG image: " + ", ".join(
    LONG_NAMES["cpsc"][c] for c in CPSC_LABELS
)


def test_every_label_set_prompt_is_read_back_to_its_vocabulary_and_other_questions_are_not():
    rng = np.random.default_rng(0)
    for vocabulary, prompt in LABEL_SET_PROMPTS.items():
        for _ in range(20):
            assert question_label_set(prompt(rng)) == vocabulary
    others = [
        "Which of the following is shown? A. atrial fibrillation B. normal ECG C. right bundle branch block",
        "The rhythm is ___ and the axis is ___.",
        "Write a report of this ECG.",
        "Given this ECG image, does it show myocardial infarction? Options: yes, no",
        # four of the five superclasses: not the label set
        "Options: NORM(normal ECG), MI(myocardial infarction), STTC(ST/T change), CD(conduction disturbance).",
    ]
    for question in others:
        assert question_label_set(question) is None, question


def test_a_corpus_s_label_set_questions_are_exactly_its_label_set_tasks(tmp_path):
    """On a generated corpus (every task of the training mix): the text-only reading agrees with the task the
    generator recorded, and finds no label set in multiple-choice, fill-in, report or ECG-QA questions."""
    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.label_sets import record_label_set
    from evl_ecg.data.records import load_records

    build_corpus(tmp_path, n_train=60, n_bench=1, seed=5, workers=1, progress=False, augment=False)
    records = load_records(tmp_path / "train.json")
    tasks = {r.meta["task"] for r in records}
    assert {"mcq", "fill", "report", "ecgqa", "ptbxl", "code15", "cpsc"} <= tasks
    for record in records:
        task = record.meta["task"]
        assert record_label_set(record) == (task if task in LABEL_SET_PROMPTS else None), (record.id, task)


def _record(i: int, answer: str, question: str = CPSC_QUESTION) -> dict:
    return {
        "id": f"r-{i}",
        "image": f"{i}.png",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def test_training_candidates_follow_the_records_own_answer_format():
    records = [_record(0, "AF; RBBB"), _record(1, "None of the listed diagnoses apply."), _record(2, "Write a report")]
    records[2]["conversations"][0]["value"] = "<image>\nWrite a report of this ECG."
    got = training_candidates(records)
    assert list(got) == ["cpsc"]
    assert got["cpsc"] == [*CPSC_LABELS, "None of the listed diagnoses apply."]
    assert candidate_answers("ptbxl", "coded", "None.")[:2] == ["NORM(normal ECG)", "MI(myocardial infarction)"]
    assert len(candidate_answers("code15", "coded", "NORM")) == len(VOCABULARIES["code15"]) + 2  # NORM and ABNORMAL


def _sides(student_ll, teacher_ll, mask):
    def side(ll):
        b = ll.shape[0]
        return SideOutputs(
            logits=torch.zeros(b, 1, 2),
            hidden=torch.zeros(b, 1, 2),
            attention_mask=torch.ones(b, 1, dtype=torch.bool),
            labels=torch.zeros(b, 1, dtype=torch.long),
            label_logliks=ll,
            label_mask=mask,
        )

    return side(student_ll), side(teacher_ll)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_loss_is_the_mean_kl_over_samples_with_a_label_set_by_hand(temperature):
    s = torch.tensor([[-3.0, -1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-5.0, -0.5, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-1.0, -4.0, -2.5, 0.0], [0.0, 0.0, 0.0, 0.0], [-0.2, -3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [False] * 4, [True, True, False, False]])
    student, teacher = _sides(s, t, mask)
    out = LabelSpaceKD(temperature=temperature)(student, teacher)

    def kl(sv, tv):
        p = np.exp(np.array(tv) / temperature)
        p /= p.sum()
        q = np.exp(np.array(sv) / temperature)
        q /= q.sum()
        return float(np.sum(p * np.log(p / q)))

    want = temperature**2 * (kl([-3, -1, -2], [-1, -4, -2.5]) + kl([-5, -0.5], [-0.2, -3])) / 2
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert float(out.logs["samples"]) == 2
    out.loss.backward()
    assert torch.isfinite(s.grad).all() and float(s.grad[1].abs().sum()) == 0.0 and float(s.grad[0, 3]) == 0.0
    # a global count of label-set samples (accumulation, ranks) divides the sum instead
    summed = LabelSpaceKD(temperature=temperature)(student, teacher, Denominators(label_sets=4))
    assert summed.loss.item() == pytest.approx(want * 2 / 4, rel=1e-6)
    # no sample with a label set: zero, with a graph
    none = torch.zeros(2, 3, dtype=torch.bool)
    zs, zt = _sides(torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3), none)
    empty = LabelSpaceKD()(zs, zt)
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad


def test_the_loss_refuses_sides_that_scored_other_candidates():
    s, t = _sides(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool))
    t.label_mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="other candidates"):
        LabelSpaceKD()(s, t)
    with pytest.raises(ValueError, match="temperature"):
        LabelSpaceKD(temperature=0.0)


def _image(i: int) -> Image.Image:
    img = Image.new("RGB", (64, 64), (255, 250, 245))
    ImageDraw.Draw(img).line([(x, 30 - (10 if (x + 5 * i) % 17 < 3 else 0)) for x in range(0, 64, 2)], fill=0)
    return img


def _hand_total(adapter, record, answer, image) -> float:
    """Summed teacher-forced log-prob of ``answer`` (+ end token) from the raw logits of one whole sequence."""
    sample = adapter.encode(candidate_conversation(record, answer), image)
    batch = {k: v[None] if k not in ("pixel_values", "image_grid_thw") else v for k, v in sample.items()}
    with torch.no_grad():
        logits = adapter.model(**adapter.model_inputs(batch)).logits[0]
    labels = sample["labels"]
    logp = F.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100)


@pytest.mark.parametrize("family", ["qwen3vl", "llava"])
def test_candidate_logliks_equal_a_hand_computation_and_carry_gradients(family):
    from evl_ecg.models import build_tiny_student, build_tiny_teacher

    texts = [CPSC_QUESTION.replace("<image>\n", ""), "None of the listed diagnoses apply.", "; ".join(CPSC_LABELS)]
    adapter = (build_tiny_student if family == "qwen3vl" else build_tiny_teacher)(texts * 8, seed=0)
    records = [_record(0, "AF"), _record(1, "NORM")]
    answers = [*CPSC_LABELS[:3], "None of the listed diagnoses apply."]
    entries = [adapter.encode_candidates([candidate_conversation(r, a) for a in answers], _image(i)) for i, r in
               enumerate(records)]  # fmt: skip
    adapter.model.train()
    total, mask = adapter.candidate_logliks([entries[0], None, entries[1]])
    assert total.shape == mask.shape == (3, len(answers)) and mask[[0, 2]].all() and not mask[1].any()
    for row, (i, record) in ((0, (0, records[0])), (2, (1, records[1]))):
        for k, answer in enumerate(answers):
            assert float(total[row, k]) == pytest.approx(_hand_total(adapter, record, answer, _image(i)), abs=1e-4)
    total[mask].sum().backward()
    grads = [p.grad for p in adapter.model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    # under gradient checkpointing (no key/value cache while training) every candidate runs whole: same numbers
    model = adapter.model
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    whole, _ = adapter.candidate_logliks([entries[0], None, entries[1]])
    torch.testing.assert_close(whole, total.detach(), atol=1e-4, rtol=1e-5)
