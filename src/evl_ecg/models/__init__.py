"""Model adapters: one per family, each wrapping a transformers model, its tokenizer and image processor.

* :class:`Qwen3VLAdapter`: the student (``Qwen3VLForConditionalGeneration``, ChatML, dynamic resolution).
* :class:`LlavaAdapter`: a single-tile LLaVA teacher (``LlavaForConditionalGeneration``, llava_v1).
* :class:`PulseAdapter`: PULSE-7B (flat any-resolution LLaVA-NeXT subclass); :func:`load_pulse` reads its
  original ``llava_llama`` checkpoint.

Each returns :class:`~evl_ecg.outputs.SideOutputs` from :meth:`Adapter.forward`. See docs/models.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from evl_ecg.models.base import ADAPTER_FILE, Adapter, Turn, conversation_turns, make_loss_context, require_files
from evl_ecg.models.llava import LlavaAdapter
from evl_ecg.models.pulse import PulseAdapter, PulseImageProcessor, PulseLlavaForConditionalGeneration, load_pulse
from evl_ecg.models.qwen3vl import Qwen3VLAdapter
from evl_ecg.models.tiny import build_tiny_pulse, build_tiny_student, build_tiny_teacher
from evl_ecg.models.tokenizers import train_tokenizer

FAMILIES: dict[str, type[Adapter]] = {"qwen3_vl": Qwen3VLAdapter, "llava": LlavaAdapter, "pulse": PulseAdapter}


def load_adapter(path: str | Path, **kwargs) -> Adapter:
    """Load any supported local checkpoint, choosing the family from its files.

    ``evl_ecg_adapter.json`` (written by :meth:`Adapter.save_pretrained`) names the family; otherwise the
    ``config.json``: ``llava_llama`` -> PULSE (original layout), ``qwen3_vl`` -> Qwen3-VL, ``llava`` -> LLaVA,
    ``llava_next`` with the PULSE architecture -> PULSE.
    """
    root = require_files(path, "model checkpoint", "config.json")
    if (root / ADAPTER_FILE).exists():
        family = json.loads((root / ADAPTER_FILE).read_text())["family"]
    else:
        cfg = json.loads((root / "config.json").read_text())
        model_type = cfg.get("model_type")
        archs = cfg.get("architectures") or []
        if model_type == "llava_llama" or "PulseLlavaForConditionalGeneration" in archs:
            family = "pulse"
        elif model_type in FAMILIES:
            family = model_type
        else:
            raise ValueError(f"{root / 'config.json'}: model_type {model_type!r} is not a supported family")
    return FAMILIES[family].from_pretrained(root, **kwargs)


__all__ = [
    "Adapter",
    "FAMILIES",
    "LlavaAdapter",
    "PulseAdapter",
    "PulseImageProcessor",
    "PulseLlavaForConditionalGeneration",
    "Qwen3VLAdapter",
    "Turn",
    "build_tiny_pulse",
    "build_tiny_student",
    "build_tiny_teacher",
    "conversation_turns",
    "load_adapter",
    "load_pulse",
    "make_loss_context",
    "train_tokenizer",
]
