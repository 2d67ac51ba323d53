"""The adapter API shared by every model family: one sample in, one :class:`~evl_ecg.outputs.SideOutputs` out.

An :class:`Adapter` wraps a transformers model, its tokenizer and its image processor. It

* renders a conversation in the family's own chat template and tokenises it the way the family was trained
  (:meth:`Adapter.encode`), putting labels on the assistant answers and their end token only;
* pads a batch of its own samples (:meth:`Adapter.collate`), independently of the other side;
* runs the real transformers forward and collects what the losses read (:meth:`Adapter.forward`);
* generates greedily from the first human turn (:meth:`Adapter.prompt_inputs`, :meth:`Adapter.generate`).

Families implement the hooks :meth:`render`, :meth:`process_image`, :meth:`collate_images`, :meth:`model_inputs`.

The visual tokens and the sequence's input embeddings are read with hooks on the language model's input (the
``inputs_embeds`` the multimodal model passes it, images already spliced in), and the last hidden state with a hook
on its output, so the adapter runs exactly the model's own ``forward`` and nothing else.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from evl_ecg.models.checkpoints import ADAPTER_FILE
from evl_ecg.models.conversation import IMAGE_MARKER, ChatTurn, conversation_turns, record_id
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs


@dataclass
class Rendered:
    """A conversation in a family's template: the text, with one image placeholder, and answer character spans.

    ``answers`` holds ``(start, end, end_with_marker)`` per assistant turn: the answer is ``text[start:end]``, its
    end token (``</s>``, ``<|im_end|>``) is ``text[end:end_with_marker]``; both are supervised.
    """

    text: str
    answers: list[tuple[int, int, int]]


# ---- the adapter --------------------------------------------------------------------------------------------
def image_positions(image_mask: Tensor) -> Tensor:
    """``B x N`` sequence position of each sample's image tokens in order, ``-1`` past a sample's count.

    ``image_mask``: ``B x L`` (the image-token positions that are not padding); ``N`` is the largest count.
    """
    counts = image_mask.sum(1)
    n_max = int(counts.max()) if counts.numel() else 0
    positions = torch.full((image_mask.shape[0], n_max), -1, dtype=torch.long, device=image_mask.device)
    rows, cols = image_mask.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=rows.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    positions[rows, slot] = cols
    return positions


class Adapter:
    """Base class: one model family. Attributes ``model``, ``tokenizer``, ``image_processor``."""

    family: ClassVar[str] = ""
    #: the placeholder the template puts where the image goes; ``tokenize`` expands it to N image-token ids.
    image_placeholder: ClassVar[str] = IMAGE_MARKER
    #: whether each tokenised chunk starts with a BOS the tokenizer adds (dropped on all chunks but the first).
    add_bos: ClassVar[bool] = False

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self._vocab: list[str] | None = None

    # ---- family hooks -----------------------------------------------------------------------------------------
    def render(self, turns: Sequence[ChatTurn], *, generation: bool) -> Rendered:  # pragma: no cover - abstract
        raise NotImplementedError

    def process_image(self, image: Any) -> tuple[dict[str, Tensor], int]:  # pragma: no cover - abstract
        """``(tensors for this one image, number of visual tokens it becomes)``."""
        raise NotImplementedError

    def collate_images(self, samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def model_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- sizes --------------------------------------------------------------------------------------------------
    @property
    def text_config(self) -> Any:
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg.text_config

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    @property
    def vocab(self) -> list[str]:
        """Token strings by logit index (``V`` entries; rows the tokenizer lacks get placeholder names)."""
        if self._vocab is None:
            from evl_ecg.models.tokenizers import vocab_strings

            self._vocab = vocab_strings(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
        return self._vocab

    def loss_context(self) -> dict[str, Any]:
        """What losses may need to know of this side: hidden size, visual-token width, vocab, layers, heads."""
        tc = self.text_config
        return {
            "hidden": int(tc.hidden_size),
            "visual": int(tc.hidden_size),
            "vocab": self.vocab,
            "layers": int(tc.num_hidden_layers),
            "heads": int(tc.num_attention_heads),
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ---- encoding ---------------------------------------------------------------------------------------------
    def _tokenize_chunk(self, text: str, *, first: bool) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=self.add_bos, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if self.add_bos and not first and ids and ids[0] == self.tokenizer.bos_token_id:
            ids, offs = ids[1:], offs[1:]
        return ids, offs

    def tokenize(self, text: str, n_visual: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of ``text``; the image placeholder becomes ``n_visual`` image ids.

        The text is split at the placeholder and each chunk tokenised on its own (LLaVA's ``tokenizer_image_token``;
        for tokenizers where the placeholder is a special token this equals tokenising the expanded text at once).
        Image ids and tokens outside the text get offsets ``(-1, -1)`` / ``(0, 0)``.
        """
        chunks = text.split(self.image_placeholder)
        if len(chunks) > 2:
            raise ValueError(f"only one image per conversation is supported, got {len(chunks) - 1}")
        ids: list[int] = []
        offs: list[tuple[int, int]] = []
        start = 0
        for k, chunk in enumerate(chunks):
            if k > 0:
                ids += [self.image_token_id] * n_visual
                offs += [(-1, -1)] * n_visual
                start += len(self.image_placeholder)
            c_ids, c_offs = self._tokenize_chunk(chunk, first=k == 0)
            ids += c_ids
            offs += [(s + start, e + start) if e > s else (-1, -1) for s, e in c_offs]
            start += len(chunk)
        return ids, offs

    @staticmethod
    def _labels_and_offsets(
        ids: Sequence[int], offs: Sequence[tuple[int, int]], rendered: Rendered
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Labels (id on answer + end-token positions, -100 elsewhere) and UTF-8 byte offsets inside each answer."""
        labels = [IGNORE_INDEX] * len(ids)
        byte_offs = [(-1, -1)] * len(ids)
        text = rendered.text
        for a0, a1, m1 in rendered.answers:
            answer = text[a0:a1]
            cum = [0]
            for ch in answer:
                cum.append(cum[-1] + len(ch.encode("utf-8")))
            for i, (s, e) in enumerate(offs):
                if e <= s or e <= a0 or s >= m1:
                    continue
                labels[i] = ids[i]
                if e > a0 and s < a1:
                    byte_offs[i] = (cum[max(s, a0) - a0], cum[min(e, a1) - a0])
                else:  # the end token (</s>, <|im_end|>): an empty span at the answer's end
                    byte_offs[i] = (cum[-1], cum[-1])
        return labels, byte_offs

    def encode(
        self,
        record: Any,
        image: Any,
        *,
        train: bool = True,
        processed: tuple[dict[str, Tensor], int] | None = None,
    ) -> dict[str, Tensor]:
        """One sample: ``input_ids``, ``labels``, ``attention_mask``, ``token_offsets`` (``L x 2``), image tensors.

        ``train=True``: the whole conversation, labels on every assistant answer and its end token.
        ``train=False``: the first human turn in the template with the generation prompt, no labels supervised.
        ``processed``: :meth:`process_image` of ``image``, computed once and reused when several conversations
        about one image are encoded (the candidate answers of :mod:`evl_ecg.eval.likelihood`); the samples then
        share its tensors, which nothing modifies.
        """
        turns = conversation_turns(record)
        if train:
            if turns[-1].role != "assistant":
                raise ValueError(f"record {record_id(record)!r} ends with a human turn; nothing to supervise")
        else:
            turns = turns[:1]
        pixels, n_visual = processed if processed is not None else self.process_image(image)
        rendered = self.render(turns, generation=not train)
        ids, offs = self.tokenize(rendered.text, n_visual)
        labels, byte_offs = self._labels_and_offsets(ids, offs, rendered)
        out = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "token_offsets": torch.tensor(byte_offs, dtype=torch.long).reshape(len(ids), 2),
        }
        out.update(pixels)
        return out

    def truncate(self, sample: dict[str, Tensor], max_length: int, *, what: str = "sample") -> bool:
        """Cut an encoded sample to its first ``max_length`` tokens in place; ``True`` if anything was cut.

        The sequence tensors (``input_ids``, ``labels``, ``attention_mask``, ``token_offsets``) lose their tail; the
        image tensors stay whole, so the visual tokens must fit: a ``ValueError`` naming ``what`` if the last image
        token lies at or beyond ``max_length`` (cutting inside the image would leave the model more image features
        than placeholders).
        """
        ids = sample["input_ids"]
        if ids.shape[0] <= max_length:
            return False
        image = (ids == self.image_token_id).nonzero()
        if image.numel() and int(image[-1]) >= max_length:
            raise ValueError(
                f"{what}: max_length {max_length} would cut into the image's {image.numel()} visual tokens (the last "
                f"at position {int(image[-1])}); raise max_length above {int(image[-1]) + 1}"
            )
        for key in ("input_ids", "labels", "attention_mask", "token_offsets"):
            if key in sample:
                sample[key] = sample[key][:max_length]
        return True

    def prompt_inputs(self, record: Any, image: Any) -> dict[str, Tensor]:
        """Generation inputs for one sample: the first human turn in the template, generation prompt appended."""
        return self.encode(record, image, train=False)

    def collate(self, samples: Sequence[dict[str, Tensor]], *, padding_side: str = "right") -> dict[str, Tensor]:
        """Pad this side's samples on their own (right padding for training, ``"left"`` for generation)."""
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")

        def pad(key: str, value: int) -> Tensor:
            seqs = [s[key] for s in samples]
            if padding_side == "left":
                seqs = [s.flip(0) for s in seqs]
            out = pad_sequence(seqs, batch_first=True, padding_value=value)
            return out.flip(1) if padding_side == "left" else out

        batch = {
            "input_ids": pad("input_ids", self.pad_token_id),
            "labels": pad("labels", IGNORE_INDEX),
            "attention_mask": pad("attention_mask", 0),
            "token_offsets": pad("token_offsets", -1),
        }
        batch.update(self.collate_images(samples))
        return batch

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor], *, requires: frozenset[str] = frozenset()) -> SideOutputs:
        """Run the model on a collated batch and return :class:`SideOutputs`.

        ``requires`` is the union of the losses' ``requires``: ``"all_hidden"`` adds every layer's hidden states,
        ``"attentions"`` every layer's attention probabilities (switching the model to eager attention).
        """
        want_attn = "attentions" in requires
        want_all = "all_hidden" in requires
        if want_attn and self.model.config._attn_implementation != "eager":
            self.model.set_attn_implementation("eager")
        captured: dict[str, Tensor] = {}

        def pre_hook(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            captured["embeds"] = kwargs["inputs_embeds"]

        def post_hook(_module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> None:
            captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        lm = self.language_model
        handles = [
            lm.register_forward_pre_hook(pre_hook, with_kwargs=True),
            lm.register_forward_hook(post_hook, with_kwargs=True),
        ]
        try:
            out = self.model(
                **self.model_inputs(batch),
                use_cache=False,
                output_hidden_states=want_all,
                output_attentions=want_attn,
                return_dict=True,
            )
        finally:
            for h in handles:
                h.remove()
        input_ids = batch["input_ids"]
        attention_mask = batch["attention_mask"].bool()
        image_mask = (input_ids == self.image_token_id) & attention_mask
        embeds = captured["embeds"]
        positions = image_positions(image_mask)
        visual_mask = positions >= 0
        gather = positions.clamp_min(0).unsqueeze(-1).expand(-1, -1, embeds.shape[-1])
        visual = torch.gather(embeds, 1, gather) * visual_mask.unsqueeze(-1).to(embeds.dtype)
        return SideOutputs(
            logits=out.logits,
            hidden=captured["hidden"],
            attention_mask=attention_mask,
            labels=batch["labels"],
            input_ids=input_ids,
            text_mask=attention_mask & ~image_mask,
            visual=visual,
            visual_mask=visual_mask,
            image_positions=positions,
            token_embeddings=embeds,
            embedding_weight=self.model.get_input_embeddings().weight,
            lm_head_weight=self.model.get_output_embeddings().weight,
            all_hidden=tuple(out.hidden_states) if want_all else None,
            attentions=tuple(out.attentions) if want_attn else None,
            attention_kind="probs",
            token_offsets=batch.get("token_offsets"),
            vocab=self.vocab,
            findings=batch.get("findings"),
            ce_mask=batch.get("ce_mask"),
            **self._label_set_outputs(batch, requires),
        )

    __call__ = forward

    # ---- label-set candidates ------------------------------------------------------------------------------------
    def encode_candidates(self, conversations: Sequence[Any], image: Any) -> list[dict[str, Tensor]]:
        """One label-set question's candidate answers (two-turn conversations, :mod:`evl_ecg.data.label_sets`),
        encoded with their image processed once: what a batch's ``"label_sets"`` entry holds for
        :meth:`candidate_logliks`."""
        processed = self.process_image(image)
        return [self.encode(c, image, train=True, processed=processed) for c in conversations]

    def candidate_logliks(self, entries: Sequence[Sequence[dict[str, Tensor]] | None]) -> tuple[Tensor, Tensor]:
        """``(total, mask)``, both ``B x K``: the summed log-probability of each candidate answer's supervised tokens
        (teacher-forced) of each sample's label-set question, and which candidates exist (``None`` entries: samples
        without one). Differentiable. Each question's prompt and image run once and their key/value cache serves
        every candidate (:meth:`continuation_logprobs`), except under gradient checkpointing while training, which
        has no cache: there every candidate runs whole (the same numbers to float rounding)."""
        device = next(self.model.parameters()).device
        whole = torch.is_grad_enabled() and self.model.training and activation_checkpointing(self.model)
        rows: list[Tensor | None] = [None] * len(entries)
        splits: dict[int, tuple[dict[str, Tensor], list[Tensor], list[Tensor]]] = {}
        for i, samples in enumerate(entries):
            if not samples:
                continue
            split = None if whole else shared_prompt(samples)
            if split is None:
                rows[i] = summed_logliks(self, samples)[0]
            else:
                splits[i] = split
        for i, logp in self._grouped_logprobs(splits).items():
            supervised = splits[i][2]
            rows[i] = torch.stack([(lp * m.to(lp.device)).sum() for lp, m in zip(logp, supervised, strict=True)])
        width = max((int(r.shape[0]) for r in rows if r is not None), default=0)
        total = torch.zeros(len(rows), width, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        padded = []
        for i, r in enumerate(rows):
            if r is None:
                padded.append(total[i])
                continue
            mask[i, : r.shape[0]] = True
            padded.append(F.pad(r.to(device), (0, width - int(r.shape[0]))))
        return (torch.stack(padded) if padded else total), mask

    def _label_set_outputs(self, batch: Mapping[str, Any], requires: frozenset[str]) -> dict[str, Tensor]:
        if "label_logliks" not in requires:
            return {}
        entries = batch.get("label_sets")
        if entries is None:
            raise ValueError(
                "a loss reads label_logliks, but the batch carries no label sets (PairedDataset(label_sets=...))"
            )
        total, mask = self.candidate_logliks(entries)
        return {"label_logliks": total, "label_mask": mask}

    # ---- scoring continuations of one prompt ---------------------------------------------------------------------
    def continuation_position_ids(self, start: int, length: int, rows: int) -> Tensor:
        """Position ids of ``rows`` continuations of ``length`` tokens after prompts of ``start`` tokens that the
        model has just run (:meth:`continuation_logprobs`; the rows of each prompt together, in prompt order):
        ``start, start + 1, ...`` (``rows x length``)."""
        return torch.arange(start, start + length).view(1, length).expand(rows, length)

    @torch.no_grad()
    def continuation_logprobs(self, prompt: dict[str, Tensor], continuations: Sequence[Tensor]) -> list[Tensor]:
        """Log-probability of each token of each continuation after one prompt, teacher-forced.

        ``prompt``: one encoded sample cut before its first continuation token (its image inputs included);
        ``continuations``: token id vectors. The prompt (and its image) runs once and its key/value cache serves
        every continuation, which equals running each ``prompt + continuation`` whole (tested to float rounding).
        Returns one vector per continuation (on the CPU): ``log p(c_j | prompt, c_<j)``.
        """
        return [lp.cpu() for lp in self._continuation_logprobs([prompt], [continuations])[0]]

    @torch.no_grad()
    def batch_continuation_logprobs(
        self, prompts: Sequence[dict[str, Tensor]], continuations: Sequence[Sequence[Tensor]]
    ) -> list[list[Tensor]]:
        """:meth:`continuation_logprobs` of several prompts, each with its own continuations: prompts of one length
        and one number of continuations run as one batch (:func:`prompt_groups`), the rest on their own. The same
        numbers as one prompt at a time, to float rounding."""
        got = self._grouped_logprobs(dict(enumerate(zip(prompts, continuations, strict=True))))
        return [[lp.cpu() for lp in got[i]] for i in range(len(prompts))]

    def _grouped_logprobs(self, items: Mapping[int, Sequence[Any]]) -> dict[int, list[Tensor]]:
        """``index -> (prompt, continuations, ...)`` scored a group at a time (:func:`prompt_groups`): ``index ->``
        the log-probabilities of its continuations, on the model's device."""
        out: dict[int, list[Tensor]] = {}
        for group in prompt_groups(items):
            logps = self._continuation_logprobs([items[i][0] for i in group], [items[i][1] for i in group])
            out.update(zip(group, logps, strict=True))
        return out

    def _continuation_logprobs(
        self, prompts: Sequence[dict[str, Tensor]], continuations: Sequence[Sequence[Tensor]]
    ) -> list[list[Tensor]]:
        """Per prompt, the log-probabilities of its continuations, on the model's device, differentiable where
        gradients are on. The prompts must have one length and one number of continuations each
        (:func:`prompt_groups`): they run as one batch, and their key/value cache, each prompt's repeated for its
        continuations, serves every continuation in a second forward."""
        device = next(self.model.parameters()).device
        per = len(continuations[0])
        if any(len(c) != per for c in continuations) or len({int(p["input_ids"].shape[0]) for p in prompts}) != 1:
            raise ValueError("prompts scored together need one length and one number of continuations each")
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.collate(list(prompts)).items()}
        params = inspect.signature(self.model.forward).parameters
        last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the prompt's last logits only
        out = self.model(**self.model_inputs(batch), use_cache=True, return_dict=True, **last)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        flat = [c for cs in continuations for c in cs]
        rows, start = len(flat), int(batch["input_ids"].shape[1])
        length = max(int(c.shape[0]) for c in flat)
        ids = torch.full((rows, length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(rows, start + length, dtype=torch.long, device=device)
        mask[:, :start] = 1
        for i, c in enumerate(flat):
            ids[i, : c.shape[0]] = c.to(device)
            mask[i, start : start + c.shape[0]] = 1
        cache.batch_repeat_interleave(per)
        name = "cache" if "cache" in params else "past_key_values"
        nxt = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=self.continuation_position_ids(start, length, rows).to(device),
            use_cache=False,
            return_dict=True,
            **{name: cache},
        )
        first = out.logits[:, -1:].repeat_interleave(per, 0)
        logits = torch.cat([first, nxt.logits[:, :-1]], dim=1)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        rows_of = [logp[i, : c.shape[0]] for i, c in enumerate(flat)]
        return [rows_of[j * per : (j + 1) * per] for j in range(len(prompts))]

    # ---- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: Mapping[str, Tensor], max_new_tokens: int = 64) -> list[str]:
        """Greedy decoding from a left-padded batch of :meth:`prompt_inputs`; returns the new text per sample."""
        inputs = self.model_inputs(batch)
        if bool((batch["attention_mask"][:, -1] == 0).any()):
            raise ValueError("generate needs a left-padded batch: collate(samples, padding_side='left')")
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---- persistence --------------------------------------------------------------------------------------------
    def adapter_settings(self) -> dict[str, Any]:
        return {}

    def save_pretrained(self, path: str | Path, *, state_dict: dict[str, Tensor] | None = None) -> None:
        """Save model (safetensors), tokenizer, image processor and the adapter's own settings into ``path``.

        ``state_dict``: the model's full weights when its own parameters are shards (DeepSpeed ZeRO-3, FSDP): the
        engine gathers them and this writes them in place of the local ones.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / ADAPTER_FILE).write_text(json.dumps({"family": self.family, **self.adapter_settings()}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Adapter:  # pragma: no cover - abstract
        raise NotImplementedError


def shared_prompt(samples: Sequence[dict[str, Tensor]]) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]] | None:
    """``(prompt, continuations, supervised)`` of encoded samples that differ only after a common prompt (one
    question's candidate answers): the first sample cut before the earliest supervised token, each sample's tokens
    from there, and which of those are supervised; ``None`` where the samples do not share that prompt."""
    firsts = [(s["labels"] != IGNORE_INDEX).nonzero() for s in samples]
    if any(len(f) == 0 for f in firsts):
        raise ValueError("a candidate answer has no supervised token")
    start = min(int(f[0]) for f in firsts)
    prompt_ids = samples[0]["input_ids"][:start]
    if start == 0 or any(not torch.equal(s["input_ids"][:start], prompt_ids) for s in samples):
        return None
    cut = ("input_ids", "labels", "attention_mask", "token_offsets")
    prompt = {k: (v[:start] if k in cut else v) for k, v in samples[0].items()}
    continuations = [s["input_ids"][start:] for s in samples]
    supervised = [s["labels"][start:] != IGNORE_INDEX for s in samples]
    return prompt, continuations, supervised


def prompt_groups(items: Mapping[int, Sequence[Any]], size: int = 8) -> list[list[int]]:
    """The keys of ``items`` (``index -> (prompt, continuations, ...)``) in groups that run as one batch: the same
    prompt length and number of continuations, at most ``size`` prompts, in the keys' order within a group."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    for i, (prompt, continuations, *_) in items.items():
        runs = groups.setdefault((int(prompt["input_ids"].shape[0]), len(continuations)), [[]])
        if len(runs[-1]) >= size:
            runs.append([])
        runs[-1].append(i)
    return [g for runs in groups.values() for g in runs]


def summed_logliks(adapter: Adapter, samples: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """``(total, count)``, each ``B``: the summed log-probability of the supervised tokens of each encoded sample and
    their number, run whole in one batch (teacher forcing: :meth:`SideOutputs.next_token_targets`, the logits at ``l``
    score the token at ``l + 1``; the log-softmax on the supervised rows only). Differentiable where gradients are on.
    """
    device = next(adapter.model.parameters()).device
    batch = adapter.collate(list(samples), padding_side="right")
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    out = adapter.forward(batch)
    targets, mask = out.next_token_targets()
    count = mask.sum(1).to(torch.float32)
    if bool((count == 0).any()):
        raise ValueError("a candidate answer has no supervised token")
    rows, cols = mask.nonzero(as_tuple=True)
    logp = F.log_softmax(out.logits[rows, cols].float(), dim=-1)
    tok = logp.gather(-1, targets[rows, cols].unsqueeze(-1)).squeeze(-1)
    total = torch.zeros(mask.shape[0], dtype=torch.float32, device=tok.device).index_add(0, rows, tok)
    return total, count


def activation_checkpointing(model: nn.Module) -> bool:
    """Whether ``model`` recomputes activations in its backward pass (transformers' gradient/activation
    checkpointing, under either name), which turns its key/value cache off while training."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if isinstance(getattr(type(model), name, None), property):
            return bool(getattr(model, name))
    return False
