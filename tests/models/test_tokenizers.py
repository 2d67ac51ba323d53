"""The locally trained tokenizers: different vocabularies, and templates rendering the exact family strings."""

import pytest

from evl_ecg.models import conversation_turns, train_tokenizer

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the rhythm?"}]},
    {"role": "assistant", "content": "Sinus rhythm."},
    {"role": "user", "content": "Any ST changes?"},
]


def test_llava_v1_template_renders_exact_string(teacher):
    got = teacher.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert (
        got
        == SYSTEM + " USER: <image>\nWhat is the rhythm? ASSISTANT: Sinus rhythm.</s>USER: Any ST changes? ASSISTANT:"
    )


def test_chatml_template_renders_exact_string(student):
    got = student.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert got == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is the rhythm?<|im_end|>\n"
        "<|im_start|>assistant\nSinus rhythm.<|im_end|>\n<|im_start|>user\nAny ST changes?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("side", ["teacher", "student", "pulse"])
def test_adapter_render_equals_chat_template(adapters, records, side):
    adapter = adapters[side]
    for rec in records:
        turns = conversation_turns(rec)
        msgs = []
        for i, t in enumerate(turns):
            content = [{"type": "image"}, {"type": "text", "text": t.text}] if i == 0 else t.text
            msgs.append({"role": t.role, "content": content})
        want = adapter.tokenizer.apply_chat_template(msgs, tokenize=False)
        assert adapter.render(turns, generation=False).text == want
        want = adapter.tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
        assert adapter.render(turns[:1], generation=True).text == want


def test_vocabularies_differ(teacher, student):
    tv, sv = teacher.tokenizer.get_vocab(), student.tokenizer.get_vocab()
    assert [teacher.tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert any(t.startswith("▁") for t in tv) and not any(t.startswith("▁") for t in sv)
    assert any(t.startswith("Ġ") for t in sv)
    for tok in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert tok in sv and tok not in tv
    assert "<image>" in tv and "<image>" not in sv
    assert teacher.tokenizer("ECG").input_ids[0] == teacher.tokenizer.bos_token_id
    assert student.tokenizer("ECG").input_ids[0] != student.tokenizer.bos_token_id
    assert teacher.tokenizer.pad_token == "<unk>" and student.tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_unseen_characters_round_trip(kind):
    tok = train_tokenizer(["sinus rhythm normal ECG"] * 3, kind, 400 if kind == "teacher" else 300)
    text = "QT 0.44 s, Ω≠µ — 心电图"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_train_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(["a b"], "bert")
    with pytest.raises(ValueError, match="non-empty"):
        train_tokenizer([], "student")
