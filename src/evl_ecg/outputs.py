"""The typed outputs a model adapter gives the distillation losses, one per side.

Model adapters (``evl_ecg.models``) fill :class:`SideOutputs`; losses (``evl_ecg.distill``) read it. Neither
imports the other: this small module is all they share. Shapes use ``B`` (batch), ``L`` (sequence positions
of that side's own tokenisation), ``V`` (that side's vocabulary), ``D`` (that side's hidden size), ``N`` (that
side's visual-token count) and ``D'`` (the width of the visual tokens fed into the language model, = D for
both model families we ship). Student and teacher differ in L, V, D and N: that is the normal case.

Conventions (those of transformers):

* ``labels`` are aligned with the input ids, ``-100`` where a position is not supervised; the logits at
  position ``l`` predict the token at ``l + 1``. :meth:`SideOutputs.next_token_targets` does the shift.
* Masks are boolean, ``True`` = take part. Padding is ``False`` in every mask and never takes part in a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

IGNORE_INDEX = -100


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype a loss or a head computes its reductions in: float32, or float64 when the input is float64
    (gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass
class SideOutputs:
    """Everything one model (student or teacher) gives the losses for one batch.

    Required:
        logits: ``B x L x V`` next-token logits (unshifted).
        hidden: ``B x L x D`` last-layer hidden states (after the final norm), i.e. transformers'
            ``hidden_states[-1]``.
        attention_mask: ``B x L`` bool, valid (non-padding) positions.
        labels: ``B x L`` long, the token id at supervised (assistant-response) positions, ``-100`` elsewhere.

    Optional (filled by the adapters; some baselines need them):
        input_ids: ``B x L`` long, this side's token ids (image placeholder ids included).
        text_mask: ``B x L`` bool, valid positions that are text (not image) tokens.
        visual: ``B x N x D'`` the visual tokens fed into the language model (projector / merger output).
        visual_mask: ``B x N`` bool, valid visual tokens.
        image_positions: ``B x N`` long, the sequence position of each visual token (``-1`` on padding).
        token_embeddings: ``B x L x D`` the input embeddings of the sequence (image positions included).
        embedding_weight: ``V x D`` the input embedding matrix.
        lm_head_weight: ``V x D`` the output projection.
        all_hidden: ``(B x L x D, ...)`` every layer's hidden states, embeddings first (TinyBERT).
        attentions: ``(B x H x L x L, ...)`` every layer's pre-softmax attention scores or
            probabilities (``attention_kind`` says which).
        attention_kind: ``"scores"`` or ``"probs"``.
        token_offsets: ``B x L x 2`` long, ``[start, end)`` UTF-8 byte offsets of each response token inside
            its turn's response text, ``-1`` outside responses (ULD byte alignment).
        vocab: token strings by id (cross-vocabulary maps).
        findings: ``B x C`` float multi-hot of each record's canonical findings (``labels["findings"]`` in
            :data:`evl_ecg.ecg.labels.FINDINGS` order), for losses over labels (``matryoshka``, ``mic``); ``None``
            when a record of the batch does not carry them.
        label_logliks: ``B x K`` the summed log-probability of each candidate answer of the sample's label-set
            question (:meth:`~evl_ecg.models.base.Adapter.candidate_logliks`; label answers in vocabulary order, then
            the no-label answers), 0 where ``label_mask`` is False (a sample without one, or fewer candidates).
        label_mask: ``B x K`` bool, the candidates that exist.
        ce_mask: ``B`` bool, the samples whose answer is a cross-entropy target (``None``: every sample's);
            a record whose ``meta`` says ``"ce": false`` is context for the other losses only.
    """

    logits: Tensor
    hidden: Tensor
    attention_mask: Tensor
    labels: Tensor
    input_ids: Tensor | None = None
    text_mask: Tensor | None = None
    visual: Tensor | None = None
    visual_mask: Tensor | None = None
    image_positions: Tensor | None = None
    token_embeddings: Tensor | None = None
    embedding_weight: Tensor | None = None
    lm_head_weight: Tensor | None = None
    all_hidden: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    attention_kind: str = "probs"
    token_offsets: Tensor | None = None
    vocab: list[str] | None = None
    findings: Tensor | None = None
    label_logliks: Tensor | None = None
    label_mask: Tensor | None = None
    ce_mask: Tensor | None = None

    def __post_init__(self) -> None:
        b, length = self.hidden.shape[:2]
        for name in ("logits", "attention_mask", "labels"):
            t = getattr(self, name)
            if tuple(t.shape[:2]) != (b, length):
                raise ValueError(f"SideOutputs.{name} has shape {tuple(t.shape)}, expected ({b}, {length}, ...)")
        if self.attention_mask.dtype != torch.bool:
            self.attention_mask = self.attention_mask.bool()
        if self.visual is not None:
            if self.visual_mask is None:
                self.visual_mask = torch.ones(self.visual.shape[:2], dtype=torch.bool, device=self.visual.device)
            elif self.visual_mask.dtype != torch.bool:
                self.visual_mask = self.visual_mask.bool()
        if self.text_mask is not None and self.text_mask.dtype != torch.bool:
            self.text_mask = self.text_mask.bool()

    # ---- derived views ------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def response_mask(self) -> Tensor:
        """``B x L`` bool: positions holding a supervised (response) token."""
        return (self.labels != IGNORE_INDEX) & self.attention_mask

    def next_token_targets(self) -> tuple[Tensor, Tensor]:
        """``(targets, mask)``, both ``B x L``: the token the logits at ``l`` must predict, and where it is supervised.

        ``targets[:, l] = labels[:, l + 1]`` (``-100`` at the last position).
        """
        targets = torch.full_like(self.labels, IGNORE_INDEX)
        targets[:, :-1] = self.labels[:, 1:]
        mask = (targets != IGNORE_INDEX) & self.attention_mask
        return targets, mask

    def position_mask(self, which: str = "all") -> Tensor:
        """``B x L`` bool mask of the positions taking part in a hidden-state loss.

        ``all``: every valid position; ``response``: supervised positions; ``text``: valid non-image positions.
        """
        if which == "all":
            return self.attention_mask
        if which == "response":
            return self.response_mask
        if which == "text":
            if self.text_mask is None:
                raise ValueError("positions='text' needs SideOutputs.text_mask, which this adapter did not fill")
            return self.text_mask & self.attention_mask
        raise ValueError(f"unknown position set {which!r}; expected 'all', 'response' or 'text'")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SideOutputs:
        """A copy with every tensor on ``device`` and every floating tensor in ``dtype`` (``None``: unchanged).

        The trainer brings the teacher's outputs to the student's device, and out of a bf16 teacher into the
        student's float32 when no autocast is on (an objective's float32 modules would otherwise meet bf16 inputs).
        """

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = move(v)
            elif isinstance(v, tuple) and v and isinstance(v[0], Tensor):
                changes[f.name] = tuple(move(t) for t in v)
        return replace(self, **changes)

    def detached(self) -> SideOutputs:
        """A copy with every tensor detached (the teacher side)."""
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v.detach()
            elif isinstance(v, tuple) and v and isinstance(v[0], Tensor):
                changes[f.name] = tuple(t.detach() for t in v)
        return replace(self, **changes)
