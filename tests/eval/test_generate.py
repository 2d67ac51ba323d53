"""Generation: equal to a hand-written greedy argmax loop, PULSE's row format, resumable, failures reported."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from evl_ecg.data.records import RecordError
from evl_ecg.eval.generate import answer_id, generate_predictions, read_done
from evl_ecg.models import build_tiny_student, build_tiny_teacher

PROMPTS = [
    "What is the rhythm of this ECG?",
    "Please determine the appropriate diagnosis for the ECG image: atrial fibrillation, normal ECG.",
    "Is there ST elevation?",
    "Which diagnostic superclasses describe this ECG? Identify all fitting options.",
]
ANSWERS = ["Sinus rhythm.", "AF; RBBB", "No.", "NORM(normal ECG); MI(myocardial infarction)"]


def make_records(n=4):
    return [
        {
            "id": f"q-{i}",
            "image": f"img/{i}.png",
            "conversations": [
                {"from": "human", "value": f"<image>\n{PROMPTS[i % 4]}"},
                {"from": "gpt", "value": ANSWERS[i % 4]},
            ],
        }
        for i in range(n)
    ]


def tiny_image(seed):
    img = Image.new("RGB", (96, 64), (255, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.line([(x, 32 - (12 if (x + 7 * seed) % 23 < 3 else 0)) for x in range(0, 96, 2)], fill=(0, 0, 0), width=2)
    return img


def load_image(record):
    return tiny_image(int(record["id"].split("-")[1]))


TEXTS = PROMPTS + ANSWERS + ["None of the listed options apply.", "normal ECG sinus rhythm ST elevation"]


@pytest.fixture(scope="module")
def student():
    adapter = build_tiny_student(TEXTS * 5, seed=0)
    # With random tied embeddings greedy decoding just repeats the last prompt token ("\n", stripped to "");
    # a random final-norm scale makes the tiny model's argmax vary, so the comparisons below see real text.
    with torch.no_grad():
        norm = adapter.model.model.language_model.norm.weight
        norm.copy_(torch.randn(norm.shape, generator=torch.Generator().manual_seed(1)))
    return adapter


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_teacher(TEXTS * 5, seed=0)


def manual_greedy(adapter, record, image, max_new_tokens):
    """Greedy decoding by hand: full forward (no cache) on the growing sequence, argmax of the last logits."""
    sample = adapter.prompt_inputs(record, image)
    ids = sample["input_ids"][None]
    pixels = {k: v for k, v in sample.items() if k not in ("input_ids", "labels", "attention_mask", "token_offsets")}
    eos = set(adapter.eos_token_ids)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}
            logits = adapter.model(**adapter.model_inputs(batch), use_cache=False).logits
            nxt = int(logits[0, -1].argmax())
            if nxt in eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    text = adapter.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text.strip()


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_generation_equals_manual_greedy_loop(side, request, tmp_path):
    adapter = request.getfixturevalue(side)
    records = make_records(3)
    out = generate_predictions(
        adapter,
        records,
        load_image,
        tmp_path / "p.jsonl",
        model_id="tiny",
        max_new_tokens=6,
        batch_size=1,
        progress=False,
    )
    got = {r["question_id"]: r["text"] for r in rows_of(out.path)}
    want = {r["id"]: manual_greedy(adapter, r, load_image(r), 6) for r in records}
    assert got == want
    assert any(want.values())


def test_left_padded_batches_give_the_same_text(student, tmp_path):
    records = make_records(4)
    one = generate_predictions(
        student,
        records,
        load_image,
        tmp_path / "b1.jsonl",
        model_id="m",
        max_new_tokens=6,
        batch_size=1,
        progress=False,
    )
    four = generate_predictions(
        student,
        records,
        load_image,
        tmp_path / "b4.jsonl",
        model_id="m",
        max_new_tokens=6,
        batch_size=4,
        progress=False,
    )
    texts = lambda p: {r["question_id"]: r["text"] for r in rows_of(p)}  # noqa: E731
    assert texts(four.path) == texts(one.path)


def test_rows_follow_pulse_format(student, tmp_path):
    records = make_records(2)
    out = generate_predictions(
        student, records, load_image, tmp_path / "p.jsonl", model_id="tiny-m", max_new_tokens=3, progress=False
    )
    rows = rows_of(out.path)
    assert [r["question_id"] for r in rows] == ["q-0", "q-1"]
    for r, rec in zip(rows, records, strict=True):
        assert set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert r["prompt"] == rec["conversations"][0]["value"].replace("<image>\n", "")
        assert r["model_id"] == "tiny-m" and r["metadata"] == {}
        assert r["answer_id"] == answer_id("tiny-m", r["question_id"])
    assert answer_id("a", "q") != answer_id("b", "q")


def test_resume_writes_each_id_once(student, tmp_path):
    records = make_records(4)
    kw = dict(model_id="tiny", max_new_tokens=4, batch_size=2, progress=False)
    path = tmp_path / "pred.jsonl"
    first = generate_predictions(student, records[:2], load_image, path, **kw)
    assert first.written == 2
    before = rows_of(path)
    with open(path, "a") as fh:  # a run killed in the middle of a line
        fh.write('{"question_id": "q-2", "text": "tor')
    second = generate_predictions(student, records, load_image, path, **kw)
    assert (second.written, second.resumed) == (2, 2)
    rows = rows_of(path)
    ids = [r["question_id"] for r in rows]
    assert sorted(ids) == ["q-0", "q-1", "q-2", "q-3"] and len(ids) == len(set(ids))
    assert rows[:2] == before
    fresh = generate_predictions(student, records, load_image, tmp_path / "fresh.jsonl", **kw)
    assert {r["question_id"]: r["text"] for r in rows} == {r["question_id"]: r["text"] for r in rows_of(fresh.path)}
    third = generate_predictions(student, records, load_image, path, **kw)
    assert (third.written, third.resumed) == (0, 4)
    assert len(rows_of(path)) == 4


def test_other_model_id_is_refused(student, tmp_path):
    path = tmp_path / "p.jsonl"
    generate_predictions(student, make_records(1), load_image, path, model_id="a", max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="model_id"):
        generate_predictions(student, make_records(2), load_image, path, model_id="b", max_new_tokens=2, progress=False)


def test_bad_records_are_reported_not_skipped(student, tmp_path):
    records = make_records(3)
    records[1] = {**records[1], "id": "no-image"}
    records.append(
        {"id": "bad-conv", "image": "x.png", "conversations": [{"from": "gpt", "value": "<image>\nanswer first"}]}
    )

    def loader(record):
        if record["id"] == "no-image":
            raise RecordError("record 'no-image': field 'image': file img/1.png not found")
        return tiny_image(0)

    out = generate_predictions(
        student, records, loader, tmp_path / "p.jsonl", model_id="m", max_new_tokens=2, progress=False
    )
    failed = dict(out.failed)
    assert set(failed) == {"no-image", "bad-conv"}
    assert "not found" in failed["no-image"] and "expected a user turn" in failed["bad-conv"]
    assert [r["question_id"] for r in rows_of(out.path)] == ["q-0", "q-2"]
    assert read_done(out.path) == {"q-0", "q-2"}


def test_duplicate_record_ids_are_an_error(student, tmp_path):
    records = make_records(2)
    records[1] = {**records[1], "id": "q-0"}
    with pytest.raises(ValueError, match="twice"):
        generate_predictions(student, records, load_image, tmp_path / "p.jsonl", model_id="m", progress=False)


def write_bench(root):
    from evl_ecg.data.records import Record, save_records

    cpsc = [
        ("cpsc-0", "AF; RBBB"),
        ("cpsc-1", "None of the listed diagnoses apply."),
        ("cpsc-2", "NORM"),
        ("cpsc-3", "PVC"),
    ]
    recs = {
        "cpsc-test": [
            {
                "id": rid,
                "image": f"cpsc-test/{rid}.png",
                "conversations": [{"from": "human", "value": f"<image>\n{PROMPTS[1]}"}, {"from": "gpt", "value": ans}],
            }
            for rid, ans in cpsc
        ],
        "csn-test-no-cot": [
            {
                "id": "csn-0",
                "image": "csn-test-no-cot/csn-0.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhich is shown?\nA. AF\nB. SB"},
                    {"from": "gpt", "value": "A. AF"},
                ],
            }
        ],
    }
    (root / "bench").mkdir()
    for subset, rows in recs.items():
        save_records(root / "bench" / f"{subset}.json", [Record.from_dict(r) for r in rows])
        for i, r in enumerate(rows):
            if r["id"] == "cpsc-2":
                continue  # a missing image: reported, not skipped silently
            path = root / "images" / r["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            tiny_image(i).save(path)
    return root / "bench"


def test_evaluate_model_generates_scores_and_resumes(student, tmp_path):
    from evl_ecg.eval.run import evaluate_model

    bench = write_bench(tmp_path)
    out = tmp_path / "out"
    doc = evaluate_model(student, bench, out, max_new_tokens=3, batch_size=2, model_id="tiny", progress=False)
    assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps(doc))
    assert {(r["subset"], r["scorer"]) for r in doc["results"]} == {
        (s, k) for s in ("cpsc-test", "csn-test-no-cot") for k in ("pulse", "strict")
    }
    gen = doc["generation"]["cpsc-test"]
    assert (gen["written"], gen["resumed"]) == (3, 0)
    assert [f[0] for f in gen["failed"]] == ["cpsc-2"]
    assert len(rows_of(out / "cpsc-test" / "predictions.jsonl")) == 3
    lik = doc["likelihood"]["cpsc-test"]
    assert lik["n"] == 3 and [f[0] for f in lik["failed"]] == ["cpsc-2"]
    assert lik["ece"] is not None and 0 <= lik["ece"] <= 1
    assert "csn-test-no-cot" not in doc["likelihood"]
    again = evaluate_model(student, bench, out, max_new_tokens=3, batch_size=2, model_id="tiny", progress=False)
    assert again["generation"]["cpsc-test"]["written"] == 0
    assert again["generation"]["cpsc-test"]["resumed"] == 3
    assert again["likelihood"] == doc["likelihood"]
    assert len(rows_of(out / "cpsc-test" / "predictions.jsonl")) == 3
