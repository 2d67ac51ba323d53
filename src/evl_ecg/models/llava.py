"""The teacher family: LLaVA (transformers' ``LlavaForConditionalGeneration``) with the ``llava_v1`` template.

``llava_v1`` (LLaVA ``SeparatorStyle.TWO``)::

    {system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

Tokenisation follows LLaVA's ``tokenizer_image_token``: the prompt is split at ``<image>``, each chunk is tokenised
on its own (BOS kept on the first chunk only) and the image's N visual-token ids are inserted between the chunks.
Labels cover every answer and its ``</s>``.

The single-tile model (the tiny teacher) sees one ``image_size`` square (the ECG is resized, not cropped: a center
crop would cut leads off) and gives ``(image_size / patch_size)**2`` visual tokens (CLS dropped, layer -2).
PULSE-7B's flat any-resolution variant is :class:`evl_ecg.models.pulse.PulseAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

from evl_ecg.models.base import Adapter, Rendered
from evl_ecg.models.checkpoints import load_hf_checkpoint
from evl_ecg.models.conversation import ChatTurn
from evl_ecg.models.tokenizers import LLAVA_V1_SYSTEM, LLAVA_V1_TEMPLATE


class LlavaAdapter(Adapter):
    """LLaVA-1.5-style single-tile teacher (transformers ``LlavaForConditionalGeneration``)."""

    family = "llava"
    image_placeholder = "<image>"
    add_bos = True
    system = LLAVA_V1_SYSTEM

    def render(self, turns: Sequence[ChatTurn], *, generation: bool) -> Rendered:
        text = self.system + " "
        answers = []
        for i, turn in enumerate(turns):
            if turn.role == "user":
                text += "USER: " + (self.image_placeholder + "\n" if i == 0 else "") + turn.text + " "
            else:
                text += "ASSISTANT: "
                a0 = len(text)
                text += turn.text
                a1 = len(text)
                text += "</s>"
                answers.append((a0, a1, len(text)))
        if generation:
            text += "ASSISTANT:"
        return Rendered(text, answers)

    def tokens_per_image(self, pixel_values: Tensor) -> int:
        cfg = self.model.config
        vc = cfg.vision_config
        n = (pixel_values.shape[-2] // vc.patch_size) * (pixel_values.shape[-1] // vc.patch_size)
        return n + (1 if cfg.vision_feature_select_strategy == "full" else 0)

    def process_image(self, image: Any) -> tuple[dict[str, Tensor], int]:
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values}, self.tokens_per_image(pixel_values)

    def collate_images(self, samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {"pixel_values": torch.cat([s["pixel_values"] for s in samples], 0)}

    def model_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
        }

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype | str | None = None, **model_kwargs: Any
    ) -> LlavaAdapter:
        """Load a local LLaVA directory in the transformers layout."""
        _, model, tokenizer, processor = load_hf_checkpoint(
            path,
            "LLaVA checkpoint",
            cls.family,
            LlavaForConditionalGeneration,
            CLIPImageProcessorPil,
            LLAVA_V1_TEMPLATE,
            dtype=dtype,
            **model_kwargs,
        )
        return cls(model.eval(), tokenizer, processor)
