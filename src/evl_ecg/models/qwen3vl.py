"""The student family: transformers' ``Qwen3VLForConditionalGeneration`` with ChatML and dynamic resolution.

Images go through the PIL backend of the Qwen2-VL image processor (``Qwen2VLImageProcessorPil``, the one
``AutoImageProcessor`` maps ``qwen3_vl`` to without torchvision): ``smart_resize`` to multiples of
``patch_size x merge_size`` within ``[min_pixels, max_pixels]``, then ``t x h x w`` patches; the merger turns every
``merge_size x merge_size`` patches into one visual token, so an image becomes ``h * w / merge_size**2`` tokens.
The visual tokens in :class:`~evl_ecg.outputs.SideOutputs` are the merger output at the ``<|image_pad|>``
positions (what the language model receives there), not the DeepStack side features.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration

from evl_ecg.models.base import Adapter, Rendered
from evl_ecg.models.checkpoints import load_hf_checkpoint
from evl_ecg.models.conversation import ChatTurn
from evl_ecg.models.tokenizers import CHATML_TEMPLATE

#: Paper Table 2's student pixel limits (784 to 50,176 px: at most 224 x 224, i.e. about 49 visual tokens).
PAPER_MIN_PIXELS = 784
PAPER_MAX_PIXELS = 50176

_PROBE = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
    {"role": "assistant", "content": "a"},
]


class Qwen3VLAdapter(Adapter):
    """Qwen3-VL (the student). ChatML: ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>
    \\n<|im_start|>assistant\\n{a}<|im_end|>\\n``; labels on ``{a}<|im_end|>``."""

    family = "qwen3_vl"
    image_placeholder = "<|image_pad|>"
    add_bos = False

    @property
    def eos_token_ids(self) -> list[int]:
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return [int(i) for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    def render(self, turns: Sequence[ChatTurn], *, generation: bool) -> Rendered:
        text = ""
        answers = []
        for i, turn in enumerate(turns):
            text += f"<|im_start|>{turn.role}\n"
            if turn.role == "user":
                if i == 0:
                    text += "<|vision_start|>" + self.image_placeholder + "<|vision_end|>"
                text += turn.text + "<|im_end|>\n"
            else:
                a0 = len(text)
                text += turn.text
                a1 = len(text)
                text += "<|im_end|>"
                answers.append((a0, a1, len(text)))
                text += "\n"
        if generation:
            text += "<|im_start|>assistant\n"
        return Rendered(text, answers)

    def process_image(self, image: Any) -> tuple[dict[str, Tensor], int]:
        out = self.image_processor(images=[image], return_tensors="pt")
        grid = out["image_grid_thw"]
        n = int(grid.prod()) // self.image_processor.merge_size**2
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, n

    def collate_images(self, samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {
            "pixel_values": torch.cat([s["pixel_values"] for s in samples], 0),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples], 0),
        }

    def model_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ids = batch["input_ids"]
        return {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
            "image_grid_thw": batch["image_grid_thw"],
            "mm_token_type_ids": (ids == self.image_token_id).to(torch.int32),
        }

    def continuation_position_ids(self, start: int, length: int, rows: int) -> Tensor:
        """Multimodal RoPE positions of the text after the prompts: ``start + j`` plus each prompt's rope delta
        (what its image's grid positions shifted), as in generation; ``3 x rows x length``, each prompt's rows
        together."""
        text = torch.arange(start, start + length).view(1, 1, length).expand(3, rows, length)
        delta = getattr(self.model.model, "rope_deltas", None)
        if delta is None:
            return text
        return text + delta.to(text.device).repeat_interleave(rows // delta.shape[0], 0)

    def check_template(self) -> bool:
        """Whether the tokenizer's own chat template renders what :meth:`render` builds (warns if not)."""
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            return False
        got = self.tokenizer.apply_chat_template(_PROBE, tokenize=False)
        ok = got == self.render([ChatTurn("user", "q"), ChatTurn("assistant", "a")], generation=False).text
        if not ok:
            warnings.warn(
                f"the checkpoint's chat template renders {got!r}, not the ChatML the adapter builds", stacklevel=2
            )
        return ok

    def adapter_settings(self) -> dict[str, Any]:
        size = self.image_processor.size
        return {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        dtype: torch.dtype | str | None = None,
        **model_kwargs: Any,
    ) -> Qwen3VLAdapter:
        """Load a local Qwen3-VL directory (HF layout). ``min_pixels``/``max_pixels`` override the processor's."""
        path, model, tokenizer, processor = load_hf_checkpoint(
            path,
            "Qwen3-VL checkpoint",
            cls.family,
            Qwen3VLForConditionalGeneration,
            Qwen2VLImageProcessorPil,
            CHATML_TEMPLATE,
            dtype=dtype,
            **model_kwargs,
        )
        if min_pixels is not None or max_pixels is not None:
            size = {"shortest_edge": processor.size["shortest_edge"], "longest_edge": processor.size["longest_edge"]}
            if min_pixels is not None:
                size["shortest_edge"] = min_pixels
            if max_pixels is not None:
                size["longest_edge"] = max_pixels
            processor.size = size
        adapter = cls(model.eval(), tokenizer, processor)
        adapter.check_template()
        return adapter
