"""The adapters against the transformers models they wrap, and against hand-computed token arithmetic."""

import math

import pytest
import torch

from evl_ecg.distill.registry import LossContext
from evl_ecg.models import load_adapter
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

SIDES = ["teacher", "student", "pulse"]
END = {"teacher": "</s>", "student": "<|im_end|>", "pulse": "</s>"}


def _batch(adapter, records, image):
    return adapter.collate([adapter.encode(r, image) for r in records])


def _runs(labels):
    """Contiguous runs of supervised positions, as lists of indices."""
    runs, cur = [], []
    for i, v in enumerate(labels.tolist()):
        if v != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("side", SIDES)
def test_side_outputs_shapes(adapters, records, image, side):
    a = adapters[side]
    b = _batch(a, records, image)
    with torch.no_grad():
        out = a.forward(b)
    assert isinstance(out, SideOutputs)
    bsz, length = b["input_ids"].shape
    d = a.loss_context()["hidden"]
    assert out.logits.shape == (bsz, length, a.model.get_output_embeddings().weight.shape[0])
    assert out.hidden.shape == out.token_embeddings.shape == (bsz, length, d)
    assert out.visual.shape[0] == bsz and out.visual.shape[2] == a.loss_context()["visual"]
    assert out.image_positions.shape == out.visual_mask.shape == out.visual.shape[:2]
    assert out.token_offsets.shape == (bsz, length, 2)
    assert out.embedding_weight.shape[1] == out.lm_head_weight.shape[1] == d
    assert len(out.vocab) == out.logits.shape[-1]
    assert out.all_hidden is None and out.attentions is None
    assert torch.equal(out.attention_mask, b["attention_mask"].bool())


@pytest.mark.parametrize("side", SIDES)
def test_logits_and_hidden_equal_the_models_own_forward(adapters, records, image, side):
    a = adapters[side]
    b = _batch(a, records, image)
    with torch.no_grad():
        out = a.forward(b)
        ref = a.model(**a.model_inputs(b), output_hidden_states=True, return_dict=True)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.hidden, ref.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(a.model.lm_head(out.hidden), out.logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("side", SIDES)
def test_labels_cover_exactly_the_answers(adapters, records, image, side):
    a = adapters[side]
    for rec in records:
        enc = a.encode(rec, image)
        answers = [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]
        runs = _runs(enc["labels"])
        assert len(runs) == len(answers)
        for run, answer in zip(runs, answers, strict=True):
            ids = enc["input_ids"][run]
            assert torch.equal(enc["labels"][run], ids)
            assert a.tokenizer.decode(ids[:-1]).strip() == answer
            assert a.tokenizer.convert_ids_to_tokens(int(ids[-1])) == END[side]


@pytest.mark.parametrize("side", SIDES)
def test_token_offsets_rebuild_each_answer(adapters, records, image, side):
    a = adapters[side]
    rec = records[0]
    enc = a.encode(rec, image)
    answers = [t["value"].encode() for t in rec["conversations"] if t["from"] == "gpt"]
    offs = enc["token_offsets"]
    assert bool(((offs[:, 0] >= 0) == (enc["labels"] != IGNORE_INDEX)).all())
    for run, answer in zip(_runs(enc["labels"]), answers, strict=True):
        pieces = [answer[s:e] for s, e in offs[run].tolist()]
        assert b"".join(pieces) == answer
        assert offs[run[-1]].tolist() == [len(answer), len(answer)]  # the end token: empty span at the end


def _smart_resize_tokens(h, w, factor=32, min_pixels=784, max_pixels=50176, merge=2, patch=16):
    """Qwen2-VL smart_resize, written out: dims to multiples of 32 within the pixel limits; tokens = (h/16)(w/16)/4."""
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = (
            max(factor, math.floor(h / beta / factor) * factor),
            max(factor, math.floor(w / beta / factor) * factor),
        )
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return (hb // patch) * (wb // patch) // merge**2


@pytest.mark.parametrize(
    ("side", "size", "expected"),
    [
        ("student", (512, 384), 48),  # 384 x 512 -> 192 x 256 -> 12 x 16 patches -> 48
        ("student", (300, 700), 40),  # h 700, w 300 -> 320 x 128 -> 20 x 8 patches -> 40
        ("student", (2200, 1700), 42),  # h 1700, w 2200 -> 192 x 224 -> 12 x 14 patches -> 42
        ("teacher", (512, 384), 196),  # 448 x 448 / patch 32 -> 14 x 14
        ("teacher", (2200, 1700), 196),
        ("pulse", (512, 384), 80),  # 4:3 -> 64 x 64 grid (4 tiles) + base = 5 tiles x 16
        ("pulse", (400, 200), 48),  # 2:1 -> 64 x 32 (2 tiles) + base = 3 x 16
        ("pulse", (600, 200), 64),  # 3:1 -> 96 x 32 (3 tiles) + base = 4 x 16
        ("pulse", (200, 600), 64),  # 1:3 -> 32 x 96
    ],
)
def test_visual_token_counts_match_the_arithmetic(adapters, records, make_image, side, size, expected):
    a = adapters[side]
    img = make_image(*size)
    if side == "student":
        assert _smart_resize_tokens(size[1], size[0]) == expected
    enc = a.encode(records[1], img)
    n_ids = int((enc["input_ids"] == a.image_token_id).sum())
    assert n_ids == expected
    with torch.no_grad():
        out = a.forward(a.collate([enc]))
    assert out.visual.shape[1] == int(out.visual_mask.sum()) == expected
    pos = out.image_positions[0]
    assert torch.equal(enc["input_ids"][pos], torch.full((expected,), a.image_token_id))
    torch.testing.assert_close(out.visual[0], out.token_embeddings[0, pos])


def test_student_smart_resize_reference_values():
    assert _smart_resize_tokens(384, 512) == 48
    assert _smart_resize_tokens(700, 300) == 40  # 320 x 128 -> 20 x 8 -> 40
    assert _smart_resize_tokens(1700, 2200) == 42  # 192 x 224 -> 12 x 14 -> 42


@pytest.mark.parametrize("side", SIDES)
def test_visual_tokens_are_the_projector_output(adapters, records, image, side):
    a = adapters[side]
    b = _batch(a, records, image)
    inputs = a.model_inputs(b)
    with torch.no_grad():
        out = a.forward(b)
        if side == "student":
            feats = a.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        elif side == "teacher":
            feats = a.model.get_image_features(inputs["pixel_values"]).pooler_output
        else:
            feats = a.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    for i, f in enumerate(feats):
        torch.testing.assert_close(out.visual[i][out.visual_mask[i]], f.reshape(-1, f.shape[-1]))


@pytest.mark.parametrize("side", SIDES)
def test_right_padding_does_not_change_valid_outputs(adapters, records, image, make_image, side):
    a = adapters[side]
    imgs = [image, make_image(400, 200, seed=1)]
    encs = [a.encode(r, im) for r, im in zip(records, imgs, strict=True)]
    with torch.no_grad():
        both = a.forward(a.collate(encs))
        for i, e in enumerate(encs):
            alone = a.forward(a.collate([e]))
            n = e["input_ids"].shape[0]
            torch.testing.assert_close(both.logits[i, :n], alone.logits[0], rtol=1e-4, atol=1e-4)
            k = int(alone.visual_mask.sum())
            torch.testing.assert_close(both.visual[i, :k], alone.visual[0, :k], rtol=1e-4, atol=1e-4)
            assert not both.attention_mask[i, n:].any() and not both.visual_mask[i, k:].any()
            assert (both.image_positions[i, k:] == -1).all()


@pytest.mark.parametrize("side", ["teacher", "student"])
def test_needs_add_all_hidden_and_attentions(adapters, records, image, side):
    a = adapters[side]
    b = _batch(a, records[:1], image)
    with torch.no_grad():
        out = a.forward(b, requires=frozenset({"all_hidden", "attentions"}))
    ctx = a.loss_context()
    length = b["input_ids"].shape[1]
    assert len(out.all_hidden) == ctx["layers"] + 1
    torch.testing.assert_close(out.all_hidden[-1], out.hidden)
    torch.testing.assert_close(out.all_hidden[0], out.token_embeddings)
    assert len(out.attentions) == ctx["layers"]
    assert out.attentions[0].shape == (1, ctx["heads"], length, length)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, ctx["heads"], length))


def test_student_gradients_reach_the_merger(student, records, image):
    out = student.forward(_batch(student, records[:1], image))
    (out.visual.square().mean() + out.hidden.mean()).backward()
    merger = student.model.model.visual.merger
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in merger.parameters())
    student.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("side", SIDES)
def test_greedy_generation_starts_with_the_argmax(adapters, records, image, side):
    a = adapters[side]
    prompts = [a.prompt_inputs(r, image) for r in records]
    assert all((p["labels"] == IGNORE_INDEX).all() for p in prompts)
    batch = a.collate(prompts, padding_side="left")
    texts = a.generate(batch, max_new_tokens=3)
    assert len(texts) == 2
    with torch.no_grad():
        first = a.forward(batch).logits[:, -1].argmax(-1)
        seq = a.model.generate(**a.model_inputs(batch), max_new_tokens=1, do_sample=False, pad_token_id=a.pad_token_id)
    assert torch.equal(seq[:, -1], first)


def test_loss_context(teacher, student, pulse):
    ctx = LossContext.from_adapters(student, teacher)
    assert (ctx.student_hidden, ctx.teacher_hidden) == (128, 256)
    assert (ctx.student_visual, ctx.teacher_visual) == (128, 256)
    assert (ctx.student_layers, ctx.teacher_layers, ctx.student_heads, ctx.teacher_heads) == (2, 2, 4, 4)
    assert ctx.student_vocab[student.tokenizer.convert_tokens_to_ids("<|im_end|>")] == "<|im_end|>"
    assert ctx.teacher_vocab[2] == "</s>"
    assert len(pulse.vocab) == pulse.image_token_id  # PULSE's <image> lies outside the logit vocabulary


@pytest.mark.parametrize("side", SIDES)
def test_save_and_load_round_trip_offline(adapters, records, image, side, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = adapters[side]
    a.save_pretrained(tmp_path / side)
    b = load_adapter(tmp_path / side)
    assert type(b) is type(a)
    ea, eb = a.encode(records[0], image), b.encode(records[0], image)
    for key in ea:
        assert torch.equal(ea[key], eb[key]), key
    with torch.no_grad():
        torch.testing.assert_close(a.forward(a.collate([ea])).logits, b.forward(b.collate([eb])).logits)


def test_student_pixel_limits_override_on_load(student, records, image, tmp_path):
    student.save_pretrained(tmp_path)
    small = load_adapter(tmp_path, min_pixels=784, max_pixels=16384)
    n = int((small.encode(records[1], image)["input_ids"] == small.image_token_id).sum())
    assert n == _smart_resize_tokens(384, 512, max_pixels=16384) == 12  # 96 x 128 -> 6 x 8 patches -> 12
    assert small.adapter_settings() == {"min_pixels": 784, "max_pixels": 16384}


@pytest.mark.parametrize("missing", ["tokenizer.json", "preprocessor_config.json", "model.safetensors"])
def test_missing_file_error_names_the_file(student, tmp_path, missing):
    student.save_pretrained(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_adapter(tmp_path)


def test_not_a_directory_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_adapter(tmp_path / "Qwen/Qwen3-VL-2B-Instruct")


def test_bad_conversation_is_an_error(student, image):
    bad = {"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}
    with pytest.raises(ValueError, match="expected a user turn"):
        student.encode(bad, image)
    quirk = {
        "id": "q",
        "conversations": [{"from": "human", "value": list("<image>\nQ?")}, {"from": "gpt", "value": "A"}],
    }
    assert student.encode(quirk, image)["labels"].ne(IGNORE_INDEX).sum() == 2  # "A" + <|im_end|>
