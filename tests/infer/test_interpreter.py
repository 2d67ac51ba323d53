"""The Python API: prompts, parsing, rendering as trained, label probabilities, inputs and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evl_ecg.infer.inputs import InputError, read_input
from evl_ecg.infer.interpreter import DISCLAIMER, Interpreter, parse_render_spec
from evl_ecg.infer.questions import QUESTIONS

from .conftest import STUDENT_SIZE


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return Interpreter.from_pretrained(teacher_dir)


@pytest.fixture(scope="module")
def student(student_dir):
    return Interpreter.from_pretrained(student_dir)


def _corpus_prompts(builder, ecg, n=64) -> set[str]:
    return {
        builder(ecg, "x.png", "r", np.random.default_rng(s)).conversations[0].value.split("\n", 1)[1] for s in range(n)
    }


def test_prompts_are_wordings_the_corpus_trains_on(ecg):
    from evl_ecg.data.questions import build_code15, build_cpsc, build_ptbxl, build_report

    assert QUESTIONS["ptbxl"].prompt in _corpus_prompts(build_ptbxl, ecg)
    assert QUESTIONS["code15"].prompt in _corpus_prompts(build_code15, ecg)
    assert QUESTIONS["report"].prompt in _corpus_prompts(build_report, ecg)
    # CPSC: the corpus shuffles the nine long names; ours is one order of the same lead-in and names.
    lead, names = QUESTIONS["cpsc"].prompt.split(": ", 1)
    corpus = _corpus_prompts(build_cpsc, ecg)
    assert any(p.startswith(lead + ": ") for p in corpus)
    for p in corpus:
        assert sorted(names.rstrip(".").split(", ")) == sorted(p.split(": ", 1)[1].rstrip(".").split(", "))


@pytest.mark.parametrize(
    ("question", "answer", "strict", "pulse"),
    [
        # by hand: codes as whole tokens (strict) against case-sensitive substrings (PULSE's published rule)
        ("ptbxl", "MI(myocardial infarction); CD(conduction disturbance)", ["MI", "CD"], ["MI", "CD"]),
        ("ptbxl", "ABNORMAL", [], ["NORM"]),
        ("cpsc", "AF; RBBB", ["AF", "RBBB"], ["AF", "RBBB"]),
        ("cpsc", "AFL", [], ["AF"]),
        ("code15", "NORM", ["NORM"], ["NORM"]),
        ("code15", "RBBB(right bundle branch block); AF(atrial fibrillation)", ["RBBB", "AF"], ["RBBB", "AF"]),
    ],
)
def test_answer_labels_follow_the_scorers_rules(question, answer, strict, pulse):
    labels, got_pulse = Interpreter.parse_answer(answer, QUESTIONS[question])
    assert labels == {QUESTIONS[question].vocabulary: strict}
    assert got_pulse == pulse


def test_free_interpretation_is_parsed_in_every_vocabulary():
    text = "The QRS complex is wide. Final diagnosis: sinus rhythm; right bundle branch block."
    labels, pulse = Interpreter.parse_answer(text, QUESTIONS["report"])
    assert labels == {"ptbxl": [], "cpsc": ["RBBB"], "code15": ["RBBB"]}
    assert pulse == []


def test_signals_are_rendered_as_the_card_records(student, student_dir, records):
    card = json.loads((student_dir / "card.json").read_text())
    assert card["facts"]["render"]["size"] == list(STUDENT_SIZE)  # written by the training code's card writer
    pred = student.predict(records["wfdb"])
    assert pred.kind == "wfdb"
    assert pred.image_size == STUDENT_SIZE
    assert pred.render["size"] == list(STUDENT_SIZE) and pred.render["augment"] is False
    assert pred.render_source.startswith("card.json")
    assert not pred.warnings
    assert pred.disclaimer == DISCLAIMER and "not a medical device" in pred.text()
    assert pred.model_card == str(student_dir / "README.md") and pred.model_card in pred.text()


def test_a_card_without_render_settings_warns_and_an_override_wins(teacher_without_render_dir, records):
    teacher_dir = teacher_without_render_dir
    default = Interpreter.from_pretrained(teacher_dir)
    pred = default.predict(records["wfdb"], probabilities=False)
    assert pred.image_size == (512, 384)
    assert any("records no render settings" in w for w in pred.warnings)
    custom = Interpreter.from_pretrained(teacher_dir, render_spec="layout=12x1,size=640x480")
    pred = custom.predict(records["wfdb"], probabilities=False)
    assert pred.image_size == (640, 480) and pred.render["layout"] == "12x1" and not pred.warnings
    with pytest.raises(ValueError, match="unknown layout"):
        parse_render_spec("layout=5x5")
    with pytest.raises(ValueError, match="unknown key"):
        parse_render_spec("colour=red")


def test_probabilities_are_the_softmax_of_the_likelihood_module(teacher, records):
    """The same numbers through eval.likelihood.label_scores (its own batching and candidate building)."""
    from evl_ecg.eval.likelihood import label_scores

    pred = teacher.predict(records["png"], "ptbxl")
    image = read_input(records["png"]).image
    rec = {
        "id": "x",
        "image": "x.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTIONS["ptbxl"].prompt},
            {"from": "gpt", "value": "MI(myocardial infarction)"},
        ],
    }
    _, probs, _ = label_scores(
        teacher.adapter,
        [rec],
        lambda r: image,
        "ptbxl",
        answer_style="coded",
        null_answer=QUESTIONS["ptbxl"].no_label_answers[0],
        normalization="softmax",
        batch_size=3,
    )
    np.testing.assert_allclose(list(pred.probabilities.values()), probs[0], rtol=1e-4, atol=1e-6)
    assert sum(pred.probabilities.values()) + pred.none_probability == pytest.approx(1.0)
    assert pred.calibrated is False and "uncalibrated" in pred.text()


def test_calibrated_card_divides_the_loglikelihoods_by_its_temperature(teacher, records):
    base = teacher.predict(records["png"], "cpsc")
    warm = Interpreter(
        teacher.adapter,
        teacher.model_dir,
        type(teacher.card)(teacher.card.name, teacher.card.path, {"calibration": {"temperature": 1e6}}),
        teacher.render_spec,
        "test",
    )
    pred = warm.predict(records["png"], "cpsc")
    assert pred.calibrated is True
    # at a huge temperature every candidate gets the same share: 1 / (9 labels + 1 null answer)
    np.testing.assert_allclose(list(pred.probabilities.values()), [0.1] * 9, atol=1e-4)
    assert base.answer == pred.answer


def test_dicom_png_and_hdf5_inputs(student, records):
    assert student.predict(records["dicom"], probabilities=False).kind == "dicom"
    png = student.predict(records["png"], probabilities=False)
    assert png.kind == "image" and png.image_size == (512, 384) and png.render is None
    assert any("aspect" in w or "pixels" in w for w in png.warnings) is False  # 4:3 like the 448x336 training pages
    exam = student.predict(f"{records['hdf5']}:1002", probabilities=False)
    assert exam.kind == "code15" and exam.source.endswith(":1002")
    with pytest.raises(InputError, match="exam_id 7 not found"):
        student.predict(f"{records['hdf5']}:7")
    with pytest.raises(InputError, match="name one as exams.hdf5:EXAM_ID"):
        student.predict(records["hdf5"])


def test_an_image_far_from_the_training_images_is_used_with_a_warning(student, tmp_path, ecg):
    from evl_ecg.ecg.render import RenderSpec, render

    wide = tmp_path / "wide.png"
    render(ecg, RenderSpec(layout="12x1", size=(1200, 400))).save(wide)
    pred = student.predict(wide, probabilities=False)
    assert pred.image_size == (1200, 400)
    assert any("aspect 3.00" in w for w in pred.warnings)


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_bad_inputs_are_one_line_naming_the_file(tmp_path, records):
    from PIL import Image

    from evl_ecg.ecg.signal import EcgError

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (40, 30)).save(tmp_path / "tiny.png")
    Image.new("RGB", (3000, 100)).save(tmp_path / "strip.png")
    data = records["wfdb"].with_suffix(".dat").read_bytes()
    (tmp_path / "rbbb.dat").write_bytes(data[:1000])
    (tmp_path / "rbbb.hea").write_text(records["wfdb"].read_text())
    cases = {
        "notes.txt": (InputError, "unknown ECG file type '.txt'"),
        "broken.png": (InputError, "not a readable PNG/JPEG image"),
        "tiny.png": (InputError, "at least 64 px"),
        "strip.png": (InputError, "aspect 30.00"),
        "rbbb.hea": (EcgError, "truncated file"),
        "missing.hea": (InputError, "no such file"),
    }
    for name, (kind, needle) in cases.items():
        with pytest.raises(kind) as exc:
            read_input(tmp_path / name)
        line = _one_line(exc)
        assert name in line and needle in line, line


def test_a_batch_answers_as_single_predictions_do(teacher, records):
    items = [records["wfdb"], records["png"], records["dicom"]]
    batch = teacher.predict_batch(items, "code15")
    for item, pred in zip(items, batch, strict=True):
        alone = teacher.predict(item, "code15")
        assert pred.answer == alone.answer
        np.testing.assert_allclose(list(pred.probabilities.values()), list(alone.probabilities.values()), atol=1e-5)


def test_embedding_is_the_mean_visual_token(teacher, records):
    vec = teacher.embed(records["png"])
    assert vec.shape == (teacher.adapter.text_config.hidden_size,) and np.isfinite(vec).all()
