"""Model adapters: one per family, each wrapping a transformers model, its tokenizer and image processor.

* :class:`Qwen3VLAdapter`: the student (``Qwen3VLForConditionalGeneration``, ChatML, dynamic resolution).
* :class:`LlavaAdapter`: a single-tile LLaVA teacher (``LlavaForConditionalGeneration``, llava_v1).
* :class:`PulseAdapter`: PULSE-7B (flat any-resolution LLaVA-NeXT subclass); :func:`load_pulse` reads its
  original ``llava_llama`` checkpoint.

Each returns :class:`~evl_ecg.outputs.SideOutputs` from :meth:`Adapter.forward`. See docs/models.md.
"""

from __future__ import annotations

from pathlib import Path

from evl_ecg.models.base import Adapter
from evl_ecg.models.checkpoints import ADAPTER_FILE, ModelLoadError, checkpoint_family, require_files
from evl_ecg.models.conversation import ChatTurn, conversation_turns
from evl_ecg.models.llava import LlavaAdapter
from evl_ecg.models.pulse import PulseAdapter, PulseImageProcessor, PulseLlavaForConditionalGeneration, load_pulse
from evl_ecg.models.qwen3vl import Qwen3VLAdapter
from evl_ecg.models.tiny import build_tiny_pulse, build_tiny_student, build_tiny_teacher
from evl_ecg.models.tokenizers import train_tokenizer

FAMILIES: dict[str, type[Adapter]] = {"qwen3_vl": Qwen3VLAdapter, "llava": LlavaAdapter, "pulse": PulseAdapter}


#: Names a configuration may give a teacher's family (``EvlConfig.teacher_family``) -> the family that loads it.
FAMILY_ALIASES: dict[str, str] = {"llava": "llava", "llava_next": "pulse", "pulse": "pulse", "qwen3_vl": "qwen3_vl"}


def load_adapter(path: str | Path, *, family: str | None = None, **kwargs) -> Adapter:
    """Load any supported local checkpoint, choosing the family from its files.

    ``evl_ecg_adapter.json`` (written by :meth:`Adapter.save_pretrained`) names the family; otherwise the
    ``config.json``: ``llava_llama`` -> PULSE (original layout), ``qwen3_vl`` -> Qwen3-VL, ``llava`` -> LLaVA,
    ``llava_next`` with the PULSE architecture -> PULSE. ``family`` (``None``/``"auto"``: detect) names the family the
    caller expects (:data:`FAMILY_ALIASES`: ``llava_next`` is PULSE's); a checkpoint of another is refused.

    A folder that is not one whole model of its family (a corrupt ``config.json`` or adapter settings, a truncated or
    foreign weight file, weights or a config of another model) raises :class:`ModelLoadError` naming the folder or
    file; a missing file, ``FileNotFoundError``.
    """
    root = require_files(path, "model checkpoint", "config.json")
    expected = None if family in (None, "auto") else FAMILY_ALIASES.get(family, family)
    family = checkpoint_family(root)
    if expected is not None and family != expected:
        raise ModelLoadError(
            f"{root}: a {family!r} checkpoint, not the {expected!r} family the configuration names; fix teacher_family "
            "(or set it to 'auto')"
        )
    if family not in FAMILIES:
        source = root / ADAPTER_FILE if (root / ADAPTER_FILE).is_file() else root / "config.json"
        what = "family" if source.name == ADAPTER_FILE else "model_type"
        raise ModelLoadError(
            f"{source}: {what} {family!r} is not a supported family (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[family].from_pretrained(root, **kwargs)


__all__ = [
    "Adapter",
    "FAMILIES",
    "LlavaAdapter",
    "ModelLoadError",
    "PulseAdapter",
    "PulseImageProcessor",
    "PulseLlavaForConditionalGeneration",
    "Qwen3VLAdapter",
    "ChatTurn",
    "build_tiny_pulse",
    "build_tiny_student",
    "build_tiny_teacher",
    "checkpoint_family",
    "conversation_turns",
    "load_adapter",
    "load_pulse",
    "train_tokenizer",
]
