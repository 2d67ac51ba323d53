"""Likelihood label scores: equal to a hand-computed teacher-forced log-likelihood; AUC = sklearn; ECE by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from evl_ecg.auc import roc_auc_macro
from evl_ecg.ecg.labels import CPSC_LABELS
from evl_ecg.eval.likelihood import (
    DAGGER,
    degeneracy,
    expected_calibration_error,
    format_answer,
    gold_labels,
    infer_answer_style,
    infer_null_answer,
    label_probabilities,
    label_scores,
    likelihood_table,
    no_label_answers,
)
from evl_ecg.models import build_tiny_student

PROMPT = "<image>\nPlease determine the appropriate diagnosis for the ECG image: atrial fibrillation, normal ECG."
NONE = "None of the listed diagnoses apply."


def cpsc_record(i, answer, labels=None):
    rec = {
        "id": f"cpsc-{i}",
        "image": f"cpsc/{i}.png",
        "conversations": [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": answer}],
    }
    if labels is not None:
        rec["labels"] = {"cpsc": labels}
    return rec


RECORDS = [cpsc_record(0, "AF; RBBB"), cpsc_record(1, NONE), cpsc_record(2, "NORM"), cpsc_record(3, "PVC; STE")]


def load_image(record):
    seed = int(record["id"].split("-")[1])
    img = Image.new("RGB", (64, 64), (255, 250, 245))
    ImageDraw.Draw(img).line([(x, 30 - (10 if (x + 5 * seed) % 17 < 3 else 0)) for x in range(0, 64, 2)], fill=0)
    return img


@pytest.fixture(scope="module")
def student():
    texts = [PROMPT.replace("<image>\n", ""), NONE, "; ".join(CPSC_LABELS), "AF; RBBB", "PVC; STE"]
    return build_tiny_student(texts * 8, seed=0)


def manual_mean_loglik(adapter, record, answer, *, total=False):
    """Teacher-forced mean (``total``: summed) log-prob of ``answer`` (+ end token) by hand, from the raw logits."""
    conv = {**record, "conversations": [record["conversations"][0], {"from": "gpt", "value": answer}]}
    sample = adapter.encode(conv, load_image(record))
    batch = {k: v[None] if k != "pixel_values" and k != "image_grid_thw" else v for k, v in sample.items()}
    with torch.no_grad():
        logits = adapter.model(**adapter.model_inputs(batch)).logits[0]
    labels = sample["labels"]
    logp = F.log_softmax(logits.double(), dim=-1)
    terms = [float(logp[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100]
    return sum(terms) if total else sum(terms) / len(terms)


def test_scores_equal_hand_computed_likelihood_ratio(student):
    ids, probs, gold = label_scores(student, RECORDS, load_image, "cpsc", batch_size=4)
    assert ids == [r["id"] for r in RECORDS]
    assert probs.shape == gold.shape == (4, len(CPSC_LABELS))
    assert np.all((probs > 0) & (probs < 1))
    for i in (0, 3):
        null = manual_mean_loglik(student, RECORDS[i], NONE)
        for c in (1, 6):  # AF, PVC
            want = 1 / (1 + math.exp(-(manual_mean_loglik(student, RECORDS[i], CPSC_LABELS[c]) - null)))
            assert probs[i, c] == pytest.approx(want, abs=2e-5)


def test_batch_size_does_not_change_scores(student):
    _, p1, _ = label_scores(student, RECORDS[:2], load_image, "cpsc", batch_size=1, share_prompt=False)
    _, p7, _ = label_scores(student, RECORDS[:2], load_image, "cpsc", batch_size=7, share_prompt=False)
    np.testing.assert_allclose(p7, p1, atol=2e-5)


@pytest.mark.parametrize("family", ["qwen3vl", "llava"])
@pytest.mark.parametrize("normalization", ["null", "softmax"])
def test_a_shared_prompt_gives_the_scores_of_whole_candidates(family, normalization, student):
    """The prompt and its image run once, every candidate scored from its key/value cache (Qwen3-VL's multimodal
    RoPE continued from the prompt's rope delta; LLaVA's plain positions): the probabilities of running every
    candidate whole, and the hand-computed ones, to float rounding."""
    from evl_ecg.models import build_tiny_teacher

    texts = [PROMPT.replace("<image>\n", ""), NONE, "; ".join(CPSC_LABELS), "AF; RBBB", "PVC; STE"]
    model = student if family == "qwen3vl" else build_tiny_teacher(texts * 8, seed=0)
    calls = []
    handle = model.model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    try:
        _, one, _ = label_scores(model, RECORDS, load_image, "cpsc", normalization=normalization, batch_size=1)
        assert len(calls) == 2 * len(RECORDS)  # the prompt, then every candidate at once: per record
        calls.clear()
        _, shared, _ = label_scores(model, RECORDS, load_image, "cpsc", normalization=normalization)
    finally:
        handle.remove()
    assert len(calls) == 2  # the records' prompts (one length) as one batch, then all their candidates
    np.testing.assert_allclose(shared, one, atol=2e-5)
    _, whole, _ = label_scores(model, RECORDS, load_image, "cpsc", normalization=normalization, share_prompt=False)
    np.testing.assert_allclose(shared, whole, atol=2e-5)
    if normalization == "null":
        null = manual_mean_loglik(model, RECORDS[3], NONE)
        want = 1 / (1 + math.exp(-(manual_mean_loglik(model, RECORDS[3], CPSC_LABELS[6]) - null)))
        assert shared[3, 6] == pytest.approx(want, abs=2e-5)


def test_gold_matrix_follows_the_scorer_rule(student):
    _, _, gold = label_scores(student, RECORDS, load_image, "cpsc", batch_size=10)
    want = np.zeros((4, 9), dtype=int)
    want[0, [1, 4]] = 1  # AF, RBBB
    want[2, 0] = 1  # NORM
    want[3, [6, 8]] = 1  # PVC, STE
    np.testing.assert_array_equal(gold, want)


def test_unusable_records_are_reported(student):
    bad = {"id": "cpsc-9", "image": "x.png", "conversations": [{"from": "human", "value": PROMPT}]}
    failed = []
    ids, probs, _ = label_scores(student, [RECORDS[0], bad], load_image, "cpsc", failed=failed)
    assert ids == ["cpsc-0"] and probs.shape == (1, 9)
    assert [f[0] for f in failed] == ["cpsc-9"]


def test_gold_labels_and_answer_formats():
    assert gold_labels(cpsc_record(0, "AF; RBBB"), "cpsc") == ["AF", "RBBB"]
    assert gold_labels(cpsc_record(0, "text without codes", labels=["STE", "AF"]), "cpsc") == ["AF", "STE"]
    code15 = [
        cpsc_record(i, a) for i, a in enumerate(["NORM", "ABNORMAL", "ST(sinus tachycardia); AF(atrial fibrillation)"])
    ]
    assert [gold_labels(r, "code15") for r in code15] == [[], [], ["ST", "AF"]]
    assert infer_answer_style(code15, "code15") == "coded"
    assert infer_answer_style(RECORDS, "cpsc") == "code"
    assert format_answer(["1dAVb"], "code15", "coded") == "1dAVb(1st degree av block)"
    assert infer_null_answer(code15, "code15") == "NORM"
    assert infer_null_answer(RECORDS, "cpsc") == NONE


def test_roc_auc_macro_equals_sklearn_mean():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=(30, 4))
    scores = rng.random((30, 4)) + 0.3 * gold
    want = np.mean([roc_auc_score(gold[:, c], scores[:, c]) for c in range(4)])
    assert roc_auc_macro(gold, scores) == pytest.approx(want, abs=1e-12)
    gold[:, 2] = 0  # a class absent from gold has no AUC: left out of the mean
    want = np.mean([roc_auc_score(gold[:, c], scores[:, c]) for c in (0, 1, 3)])
    assert roc_auc_macro(gold, scores) == pytest.approx(want, abs=1e-12)
    assert math.isnan(roc_auc_macro(np.zeros((3, 2)), np.ones((3, 2))))


def test_ece_hand_worked_example():
    # bins of width 0.1: 0.1 -> [0.1, 0.2); 0.3 and 0.35 -> [0.3, 0.4); 0.9 -> [0.9, 1.0]
    # ECE = 1/4 |0 - 0.1| + 2/4 |0.5 - 0.325| + 1/4 |1 - 0.9| = 0.025 + 0.0875 + 0.025 = 0.1375
    probs = np.array([[0.1, 0.3], [0.35, 0.9]])
    gold = np.array([[0, 1], [0, 1]])
    assert expected_calibration_error(gold, probs) == pytest.approx(0.1375, abs=1e-12)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0  # p = 1 lands in the last bin
    assert expected_calibration_error(np.array([1, 1]), np.array([0.55, 0.55]), n_bins=2) == pytest.approx(0.45)
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1]), np.array([1.5]))


# --------------------------------------------------------------------------------------------------
# Normalisation of the candidates' likelihoods, and the degenerate flag
# --------------------------------------------------------------------------------------------------


def test_label_probabilities_by_hand():
    # two labels, then two no-label answers (the null answer first); totals are logs of 0.5, 0.2, 0.1, 0.2
    total = np.log([[0.5, 0.2, 0.1, 0.2]])
    ones = np.ones_like(total)
    # softmax over the four candidates: the totals are already normalised, so the shares are 0.5 and 0.2
    np.testing.assert_allclose(label_probabilities(total, ones, 2, "softmax"), [[0.5, 0.2]], atol=1e-12)
    # null: sigmoid(log a - log b) = a / (a + b) against the null answer (0.1) only; the 2nd no-label answer unused
    np.testing.assert_allclose(label_probabilities(total, ones, 2, "null"), [[5 / 6, 2 / 3]], atol=1e-12)
    # null compares *mean* log-probs: totals -2, -6 over 2 and 3 tokens, null -3 over 1 token -> sigmoid(2), sigmoid(1)
    total, count = np.array([[-2.0, -6.0, -3.0]]), np.array([[2, 3, 1]])
    want = [[1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))]]
    np.testing.assert_allclose(label_probabilities(total, count, 2, "null"), want, atol=1e-12)
    # softmax uses the sums: e^-2 / (e^-2 + e^-6 + e^-3), e^-6 / (...)
    z = math.exp(-2) + math.exp(-6) + math.exp(-3)
    np.testing.assert_allclose(
        label_probabilities(total, count, 2, "softmax"), [[math.exp(-2) / z, math.exp(-6) / z]], atol=1e-12
    )
    with pytest.raises(ValueError, match="normalization"):
        label_probabilities(total, count, 2, "sum")
    with pytest.raises(ValueError, match="N x K"):
        label_probabilities(total, count, 3, "null")


def test_a_null_answer_the_model_never_gives_saturates_null_but_not_softmax():
    # the report from real records: labels at about -0.2 nats per token, the null answer at -9 per token
    total = np.array([[-0.2 * 4, -0.5 * 4, -9.0 * 12]])
    count = np.array([[4, 4, 12]])
    null = label_probabilities(total, count, 2, "null")
    assert np.all(null > 0.999)  # sigmoid(8.8), sigmoid(8.5): both labels "present"
    soft = label_probabilities(total, count, 2, "softmax")
    z = math.exp(-0.8) + math.exp(-2.0) + math.exp(-108.0)
    np.testing.assert_allclose(soft, [[math.exp(-0.8) / z, math.exp(-2.0) / z]], atol=1e-12)  # 0.769, 0.231


def test_no_label_answers():
    assert no_label_answers("NORM", "code15", "softmax") == ["NORM", "ABNORMAL"]
    assert no_label_answers("ABNORMAL", "code15", "softmax") == ["ABNORMAL", "NORM"]
    assert no_label_answers("NORM", "code15", "null") == ["NORM"]
    assert no_label_answers(NONE, "cpsc", "softmax") == [NONE]


def test_softmax_scores_equal_hand_computed_shares(student):
    ids, probs, _ = label_scores(student, RECORDS[:2], load_image, "cpsc", batch_size=5, normalization="softmax")
    assert ids == ["cpsc-0", "cpsc-1"] and probs.shape == (2, len(CPSC_LABELS))
    for i in (0, 1):
        sums = [manual_mean_loglik(student, RECORDS[i], a, total=True) for a in [*CPSC_LABELS, NONE]]
        z = sum(math.exp(v) for v in sums)
        want = [math.exp(v) / z for v in sums[:-1]]
        np.testing.assert_allclose(probs[i], want, rtol=1e-4, atol=1e-7)
        assert probs[i].sum() == pytest.approx(1 - math.exp(sums[-1]) / z, abs=1e-6)  # the rest is the null's
    with pytest.raises(ValueError, match="normalization"):
        label_scores(student, RECORDS[:1], load_image, "cpsc", normalization="sum")


def test_degeneracy_by_hand():
    classes = ["HI", "LO", "FLAT", "OK", "EDGE"]
    probs = np.array(
        [
            [0.995, 0.001, 0.5, 0.2, 0.99],
            [0.9991, 0.0099, 0.50000001, 0.7, 0.995],
            [0.999, 0.002, 0.5, 0.4, 0.999],
        ]
    )
    flags = degeneracy(probs, classes)
    assert flags["degenerate"] is True
    # HI: min 0.995 > 0.99; LO: max 0.0099 < 0.01; FLAT: spread 1e-8 < 1e-4; EDGE: 0.99 is not above 0.99
    assert list(flags["degenerate_classes"]) == ["HI", "LO", "FLAT"]
    assert flags["degenerate_classes"]["HI"] == "all 3 above 0.99 (min 0.9950)"
    assert flags["degenerate_classes"]["LO"] == "all 3 below 0.01 (max 0.0099)"
    assert "HI: all 3 above 0.99" in flags["degenerate_reason"] and "OK" not in flags["degenerate_reason"]
    ok = degeneracy(probs[:, 3:4], ["OK"])
    assert ok == {"degenerate": False, "degenerate_reason": None, "degenerate_classes": {}}
    # one record: no spread to speak of, only the thresholds apply; no record: nothing to flag
    assert degeneracy(np.array([[0.5, 0.995]]), ["A", "B"])["degenerate_classes"] == {
        "B": "all 1 above 0.99 (min 0.9950)"
    }
    assert degeneracy(np.zeros((0, 2)), ["A", "B"])["degenerate"] is False
    with pytest.raises(ValueError):
        degeneracy(probs, classes[:2])


def test_likelihood_table_marks_degenerate_numbers():
    section = {
        "ptb-test": {
            "n": 40,
            "auc": 0.7641,
            "ece": 0.775,
            "normalization": "null",
            "degenerate": True,
            "degenerate_reason": "NORM: all 40 above 0.99",
        },
        "cpsc-test": {"n": 40, "auc": 0.796, "ece": 0.034, "normalization": "softmax", "degenerate": False},
    }
    lines = likelihood_table(section).splitlines()
    assert lines[2] == f"| ptb-test | 40 | 0.764{DAGGER} | 0.775{DAGGER} | null |"
    assert lines[3] == "| cpsc-test | 40 | 0.796 | 0.034 | softmax |"
    assert lines[-1] == f"{DAGGER} ptb-test: NORM: all 40 above 0.99."
    assert DAGGER not in likelihood_table({"cpsc-test": section["cpsc-test"]})


def test_each_image_is_processed_once_for_all_its_candidates(student, monkeypatch):
    """The candidates of one record share one :meth:`process_image` (the likelihood's main CPU cost on small models),
    and the shared tensors give the numbers of encoding each candidate on its own (the hand-computed test above)."""
    calls = []
    original = student.process_image

    def counting(image):
        calls.append(image)
        return original(image)

    monkeypatch.setattr(student, "process_image", counting)
    _, probs, _ = label_scores(student, RECORDS[:2], load_image, "cpsc", batch_size=4)
    assert len(calls) == 2
    null = manual_mean_loglik(student, RECORDS[1], NONE)
    want = 1 / (1 + math.exp(-(manual_mean_loglik(student, RECORDS[1], CPSC_LABELS[1]) - null)))
    assert probs[1, 1] == pytest.approx(want, abs=2e-5)


@pytest.mark.parametrize("family", ["qwen3vl", "llava"])
def test_prompts_of_several_lengths_and_candidate_counts_batch_like_one_at_a_time(family, student):
    """Records whose prompts differ in length, and candidate sets of different sizes, are grouped by (length,
    count); each group is one batch and every record gets its own numbers back, in order: those of scoring it alone
    (Qwen3-VL: each prompt's own rope delta)."""
    from evl_ecg.data.label_sets import candidate_conversation
    from evl_ecg.models import build_tiny_teacher
    from evl_ecg.models.base import prompt_groups, shared_prompt

    texts = [PROMPT.replace("<image>\n", ""), NONE, "; ".join(CPSC_LABELS), "AF; RBBB", "PVC; STE"]
    model = student if family == "qwen3vl" else build_tiny_teacher(texts * 8, seed=0)
    longer = PROMPT.replace("normal ECG.", "normal ECG, or another rhythm.")
    records = [cpsc_record(0, NONE), cpsc_record(1, NONE), cpsc_record(2, NONE), cpsc_record(3, NONE)]
    records[1]["conversations"][0]["value"] = longer
    answer_sets = [["AF", "NORM", NONE], ["AF", "NORM", NONE], ["AF", NONE], ["PVC", "STE", NONE]]
    # records 0 and 3: pages of one area, one wide and one square (the same token count; Qwen3-VL: other rope deltas)
    sizes = [(128, 32), (64, 64), (64, 64), (64, 64)]
    images = [load_image(r).resize(size) for r, size in zip(records, sizes, strict=True)]
    splits = []
    for record, answers, image in zip(records, answer_sets, images, strict=True):
        samples = model.encode_candidates([candidate_conversation(record, a) for a in answers], image)
        splits.append(shared_prompt(samples))
    lengths = [int(s[0]["input_ids"].shape[0]) for s in splits]
    assert lengths[0] == lengths[3] and lengths[1] > lengths[2]
    groups = prompt_groups(dict(enumerate(splits)))
    assert [0, 3] in groups and len(groups) == 3  # record 2: two candidates; record 1: a longer prompt
    batched = model.batch_continuation_logprobs([s[0] for s in splits], [s[1] for s in splits])
    for (prompt, continuations, _), got in zip(splits, batched, strict=True):
        alone = model.continuation_logprobs(prompt, continuations)
        assert len(got) == len(alone) == len(continuations)
        for g, a, c in zip(got, alone, continuations, strict=True):
            assert g.shape == a.shape == c.shape
            torch.testing.assert_close(g, a, atol=2e-5, rtol=1e-5)
