"""Locally trained BPE tokenizers for the tiny presets, and the two families' chat templates.

Two deliberately different vocabularies, as between PULSE-7B (Vicuna/LLaMA SentencePiece) and Qwen3-VL (byte-level
BPE), so that the tiny pair has the same cross-tokenizer problem as the real one:

* ``kind="teacher"``: SentencePiece-like BPE: ``Metaspace`` pre-tokenizer (``"▁"`` for spaces, a ``"▁"`` prefixed to
  each piece as SentencePiece's dummy prefix), byte fallback (``<0x00>`` ... ``<0xFF>`` at ids 3..258), ``<unk>`` = 0,
  ``<s>`` = 1 (prepended to every encoding), ``</s>`` = 2, pad = unk (as in LLaVA), ``<image>`` as an added token.
* ``kind="student"``: Qwen-like byte-level BPE (Qwen2's split regex, ``ByteLevel`` bytes-to-unicode), no BOS, the
  Qwen special tokens appended after the learned vocabulary: ``<|endoftext|>`` (pad), ``<|im_start|>``,
  ``<|im_end|>`` (eos), ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``,
  ``<|video_pad|>``.

Each tokenizer carries its family's chat template (:data:`LLAVA_V1_TEMPLATE`, :data:`CHATML_TEMPLATE`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

#: The ``llava_v1`` conversation template (LLaVA ``SeparatorStyle.TWO``, sep ``" "``, sep2 ``"</s>"``) as Jinja.
#: An image item in a user message renders as ``"<image>\n"`` before its text (LLaVA's ``preprocess_multimodal``).
LLAVA_V1_TEMPLATE = (
    "{%- set system = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' ' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- 'ASSISTANT: ' + message['content'] + '</s>' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' -}}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{{- '</s>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

#: ChatML as Qwen3-VL-Instruct renders it (no default system message; an image item renders as
#: ``<|vision_start|><|image_pad|><|vision_end|>`` in place).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: Qwen2's pre-tokenisation regex (also Qwen3-VL's).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAVA_SPECIALS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))


def _teacher_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    n_fixed = len(LLAVA_SPECIALS) + len(BYTE_TOKENS)
    if vocab_size <= n_fixed + 10:
        raise ValueError(f"teacher vocab_size must exceed {n_fixed + 10} (specials + 256 byte tokens)")
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_fixed + 100, special_tokens=[], show_progress=False, limit_alphabet=200
    )
    draft.train_from_iterator(texts, trainer=trainer)
    learned = draft.get_vocab()
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(draft.to_str())["model"]["merges"]
    ]
    # SentencePiece/LLaMA layout: specials, then the 256 byte-fallback pieces, then the learned pieces by id.
    vocab: dict[str, int] = {t: i for i, t in enumerate(LLAVA_SPECIALS + BYTE_TOKENS)}
    for tok, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if len(vocab) >= vocab_size:
            break
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = LLAVA_V1_TEMPLATE
    return fast


def _student_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    n_special = len(QWEN_SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS),
    )
    fast.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def train_tokenizer(
    texts: Iterable[str], kind: str = "student", vocab_size: int | None = None
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer offline on ``texts`` (e.g. every conversation turn of the training records).

    Args:
        texts: the corpus, one string per turn.
        kind: ``"teacher"`` (SentencePiece-like, llava_v1 template) or ``"student"`` (Qwen-like byte-level, ChatML).
        vocab_size: total size including special tokens (defaults: 1000 teacher, 1500 student).

    Returns:
        A transformers fast tokenizer with special tokens and ``chat_template`` set.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer needs a non-empty corpus")
    if kind == "teacher":
        return _teacher_tokenizer(texts, vocab_size or 1000)
    if kind == "student":
        return _student_tokenizer(texts, vocab_size or 1500)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'teacher' or 'student'")


def corpus_from_records(records: Iterable) -> list[str]:
    """Every turn's text of ECGInstruct-style records (dicts or objects with ``.conversations``), no ``<image>``."""
    from evl_ecg.models.conversation import conversation_turns

    out = []
    for rec in records:
        for turn in conversation_turns(rec):
            out.append(turn.text)
    return out


def vocab_strings(tokenizer, size: int) -> list[str]:
    """Token strings by id for ``size`` logit rows; ids the tokenizer lacks (padded rows) get ``"<|unused_{id}|>"``."""
    n = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(min(n, size))))
    strings = [s if s is not None else f"<|unused_{i}|>" for i, s in enumerate(strings)]
    strings += [f"<|unused_{i}|>" for i in range(n, size)]
    return strings
