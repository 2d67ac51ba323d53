"""Tiny presets: the same model classes as the paper's pair, small enough to train on a CPU in minutes.

On the default 512 x 384 px ECG images:

* tiny teacher (``LlavaForConditionalGeneration``): CLIP-like tower, 448 x 448 input (the image is resized, not
  cropped), patch 32, layer -2 patch features: **196 visual tokens**; Llama text model with D_t = 256;
  SentencePiece-like tokenizer (~1,000 tokens), llava_v1 template. Two sizes (:data:`TEACHER_PRESETS`): ``v1`` (the
  shipped teacher: a 3-layer, 64-wide tower and a 2-layer language model, about 2.5x the student) and ``v2`` (a
  6-layer, 192-wide tower and a 3-layer language model, 8.6x the student; not shipped: docs/train.md section 3).
* tiny student (``Qwen3VLForConditionalGeneration``): patch 16, spatial merge 2, the paper's pixel limits
  (784 to 50,176 px): 512 x 384 -> 256 x 192 -> **48 visual tokens**; D_s = 128; byte-level BPE (~1,500 tokens),
  ChatML.
* tiny PULSE (``PulseLlavaForConditionalGeneration``): PULSE's flat any-resolution layout scaled down (tile 32,
  patch 8: 16 tokens per tile, pinpoints = PULSE's x 32/336), for tests of the paper-scale code path.

Weights are random (``seed``); the tokenizers are trained on the texts passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from evl_ecg.models.llava import LlavaAdapter
from evl_ecg.models.pulse import (
    PULSE_GRID_PINPOINTS,
    PulseAdapter,
    PulseImageProcessor,
    PulseLlavaForConditionalGeneration,
    clip_image_processor,
    pulse_config,
)
from evl_ecg.models.qwen3vl import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, Qwen3VLAdapter
from evl_ecg.models.tokenizers import train_tokenizer

#: the tiny teacher that ships with the package: v2 (generator 2; ``python scripts/tiny_teacher.py`` with
#: configs/tiny/teacher.yaml). The v1 teacher of the earlier releases is rebuilt by its documented command
#: (docs/train.md section 3) and given as ``--teacher DIR``.
SHIPPED_TEACHER = "assets/tiny-teacher"


def shipped_teacher() -> Path | None:
    """The shipped tiny teacher's folder (``None`` if this install has none)."""
    from importlib import resources

    path = Path(str(resources.files("evl_ecg") / SHIPPED_TEACHER))
    return path if (path / "config.json").exists() else None


TEACHER_IMAGE_SIZE = 448
TEACHER_PATCH = 32


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


#: Tiny teacher sizes: vision tower (hidden, MLP, layers, heads) and language model (hidden, MLP, layers, heads).
TEACHER_PRESETS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "v1": {"vision": (64, 128, 3, 4), "text": (256, 512, 2, 4)},
    "v2": {"vision": (192, 768, 6, 6), "text": (256, 768, 3, 4)},
}


def check_teacher_preset(preset: str) -> str:
    """Return ``preset`` if it names a :data:`TEACHER_PRESETS` entry, else raise ``ValueError``."""
    if preset not in TEACHER_PRESETS:
        raise ValueError(f"unknown tiny teacher preset {preset!r}; known: {', '.join(TEACHER_PRESETS)}")
    return preset


def tiny_teacher_text_config(vocab_size: int, tokenizer, preset: str = "v1") -> LlamaConfig:
    hidden, mlp, layers, heads = TEACHER_PRESETS[check_teacher_preset(preset)]["text"]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def tiny_clip_config(image_size: int, patch_size: int, preset: str = "v1") -> CLIPVisionConfig:
    hidden, mlp, layers, heads = TEACHER_PRESETS[check_teacher_preset(preset)]["vision"]
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        projection_dim=64,
    )


def build_tiny_teacher(texts: Iterable[str], seed: int = 0, vocab_size: int = 1000, preset: str = "v1") -> LlavaAdapter:
    """A single-tile LLaVA teacher (196 visual tokens on any image, D = 256) with its own tokenizer; ``preset`` is
    its size (:data:`TEACHER_PRESETS`)."""
    check_teacher_preset(preset)
    tokenizer = train_tokenizer(texts, "teacher", vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=tiny_clip_config(TEACHER_IMAGE_SIZE, TEACHER_PATCH, preset),
        text_config=tiny_teacher_text_config(len(tokenizer), tokenizer, preset),
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    _seeded(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = clip_image_processor(TEACHER_IMAGE_SIZE, crop=False)
    return LlavaAdapter(model, tokenizer, processor)


def build_tiny_student(texts: Iterable[str], seed: int = 0, vocab_size: int = 1500) -> Qwen3VLAdapter:
    """A Qwen3-VL student (48 visual tokens on a 512 x 384 image, D = 128) with its own tokenizer."""
    tokenizer = train_tokenizer(texts, "student", vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    ids.update({t: tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")})
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [8, 4, 4],
                "mrope_interleaved": True,
            },
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 128,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    _seeded(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(
        min_pixels=PAPER_MIN_PIXELS,
        max_pixels=PAPER_MAX_PIXELS,
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLAdapter(model, tokenizer, processor)


def build_tiny_pulse(
    texts: Iterable[str], seed: int = 0, vocab_size: int = 600, tile: int = 32, patch: int = 8
) -> PulseAdapter:
    """PULSE's flat any-resolution model at toy scale: ``(tile / patch)**2 x (1 + tiles)`` visual tokens.

    The ``<image>`` id lies outside the model vocabulary, as in PULSE (LLaVA's ``IMAGE_TOKEN_INDEX``).
    """
    tokenizer = train_tokenizer(texts, "teacher", vocab_size)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    pinpoints = [[w * tile // 336, h * tile // 336] for w, h in PULSE_GRID_PINPOINTS]
    text = tiny_teacher_text_config(image_id, tokenizer).to_dict()
    llava_llama = {
        **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")},
        **{k: text[k] for k in ("num_attention_heads", "num_key_value_heads", "max_position_embeddings")},
        "rms_norm_eps": 1e-5,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "image_grid_pinpoints": pinpoints,
        "mm_vision_select_layer": -2,
    }
    config = pulse_config(llava_llama, tiny_clip_config(tile, patch), image_id)
    _seeded(seed)
    model = PulseLlavaForConditionalGeneration(config).eval()
    return PulseAdapter(model, tokenizer, PulseImageProcessor(clip_image_processor(tile), pinpoints))


def save_compact(adapter: Any, path: str | Path, weight_dtype: torch.dtype = torch.float16) -> Path:
    """Save ``adapter`` with its weights stored in ``weight_dtype`` (half the bytes) that load back as float32.

    The checkpoint's ``config.json`` keeps ``dtype: float32``, so :func:`evl_ecg.models.load_adapter` (``dtype="auto"``)
    upcasts the stored weights on load; the model in memory is not changed.
    """
    path = Path(path)
    model = adapter.model
    original = next(model.parameters()).dtype
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.to(weight_dtype)
        adapter.save_pretrained(path)
    finally:
        model.to(original)
        model.load_state_dict(state)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())

    def _set_dtype(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("dtype", "torch_dtype"):
                if key in node:
                    node[key] = "float32"
            for value in node.values():
                _set_dtype(value)

    _set_dtype(config)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
