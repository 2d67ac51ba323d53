"""Shared pieces of the baselines: dtypes, row alignment between two tokenisations, masked statistics.

Two kinds of rows are aligned between the student's and the teacher's tokenisation of the same response:

* **logit rows** (``kind="rows"``): position ``l`` whose next token ``l + 1`` is supervised, both valid
  (:func:`evl_ecg.distill.registry.next_token_targets`); its logits predict that token.
* **token positions** (``kind="tokens"``): positions holding a supervised token (:attr:`SideOutputs.response_mask`);
  their hidden states encode that token.

Alignments:

* ``"index"``: the ``i``-th row of a sample with the ``i``-th row of the same sample, truncated to the shorter
  (ULD's official truncation).
* ``"offsets"``: byte-offset alignment with :attr:`SideOutputs.token_offsets` (``[start, end)`` UTF-8 bytes of each
  response token inside its answer). Two token positions pair when their tokens *end* at the same byte of the same
  answer; two logit rows pair when the tokens they predict *start* at the same byte, i.e. when their contexts end at
  the same byte (the row before the first answer token pairs with the other side's: both have context end 0). The
  end token (``</s>`` / ``<|im_end|>``, an empty span at the answer's end) pairs with the other side's end token.
  Answers are numbered by the contiguous runs of supervised labels (multi-turn conversations).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from evl_ecg.distill.registry import Denominators, next_token_targets
from evl_ecg.outputs import SideOutputs

ALIGNMENTS = ("index", "offsets")


def no_autocast(t: Tensor) -> AbstractContextManager:
    """Autocast disabled on ``t``'s device (softmax, log-softmax and norms run in float32)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def denominator(denominators: Denominators | None, unit: str, local: Tensor | float) -> Tensor | float:
    """The global count of ``unit`` if the trainer passed one, else ``local`` (never below 1)."""
    return (denominators or Denominators()).get(unit, local)


def need_teacher(teacher: SideOutputs | None, name: str) -> SideOutputs:
    if teacher is None:
        raise ValueError(f"{name} needs the teacher's outputs")
    return teacher


def need_fields(side: SideOutputs, names: tuple[str, ...], loss: str, which: str) -> None:
    missing = [n for n in names if getattr(side, n) is None]
    if missing:
        raise ValueError(f"{loss} needs {which} SideOutputs.{', '.join(missing)}, which the adapter did not fill")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """Unbiased std of all entries of ``x`` (``B x L x D``) at the valid positions ``mask`` (``B x L``): a scalar."""
    vals = x[mask]
    if vals.numel() < 2:
        return torch.ones((), dtype=x.dtype, device=x.device)
    return vals.std()


def segment_ids(mask: Tensor) -> Tensor:
    """``B x L`` long: the index of the contiguous run of ``True`` holding each position, ``-1`` elsewhere."""
    m = mask.long()
    starts = (m - F.pad(m, (1, 0))[:, :-1]).clamp_min(0)
    return torch.where(mask, starts.cumsum(1) - 1, torch.full_like(m, -1))


def last_of_segment(mask: Tensor) -> Tensor:
    """``B x L`` bool: the last position of each contiguous run of ``True`` in ``mask``."""
    return mask & ~F.pad(mask[:, 1:], (0, 1), value=False)


def rank_positions(mask: Tensor) -> Tensor:
    """``B x R`` long: the positions of each row's ``True`` entries in order, ``-1``-padded (``R`` = max count)."""
    b = mask.shape[0]
    counts = mask.sum(1)
    r = int(counts.max()) if counts.numel() else 0
    out = torch.full((b, r), -1, dtype=torch.long, device=mask.device)
    rows, cols = mask.nonzero(as_tuple=True)
    rank = mask.long().cumsum(1) - 1
    out[rows, rank[rows, cols]] = cols
    return out


@dataclass
class Pairs:
    """Aligned positions: ``batch[k]``, ``student[k]``, ``teacher[k]`` (all length ``P``), grouped by sample."""

    batch: Tensor
    student: Tensor
    teacher: Tensor

    def __len__(self) -> int:
        return int(self.batch.numel())

    def per_sample_counts(self, batch_size: int) -> Tensor:
        return torch.bincount(self.batch, minlength=batch_size)


def student_rows(side: SideOutputs, kind: str, skip_eos: bool = False) -> Tensor:
    """``B x L`` bool: the logit rows (``kind="rows"``) or token positions (``"tokens"``) of ``side``.

    ``skip_eos`` drops the row predicting (or the position holding) the last supervised token of each answer.
    """
    resp = side.response_mask
    if kind == "tokens":
        return resp & ~last_of_segment(resp) if skip_eos else resp
    if kind != "rows":
        raise ValueError(f"kind must be 'rows' or 'tokens', got {kind!r}")
    _, mask = next_token_targets(side)
    if skip_eos:
        last = F.pad(last_of_segment(resp)[:, 1:], (0, 1), value=False)
        mask = mask & ~last
    return mask


def _offset_keys(side: SideOutputs, kind: str) -> tuple[Tensor, Tensor]:
    """``(segment, byte)`` keys (``B x L`` each) of the selected rows/tokens of ``side``."""
    if side.token_offsets is None:
        raise ValueError("align='offsets' needs SideOutputs.token_offsets, which the adapter did not fill")
    resp = side.response_mask
    seg = segment_ids(resp)
    offs = side.token_offsets
    if kind == "tokens":
        # empty spans (the end token) get a distinct key so they pair with the other side's end token only
        end = torch.where(offs[..., 1] > offs[..., 0], offs[..., 1] * 2, offs[..., 1] * 2 + 1)
        return seg, end
    seg_next = F.pad(seg[:, 1:], (0, 1), value=-1)
    start_next = F.pad(offs[:, 1:, 0], (0, 1), value=-1)
    empty_next = F.pad((offs[:, 1:, 1] <= offs[:, 1:, 0]).long(), (0, 1), value=0)
    return seg_next, start_next * 2 + empty_next


def align(
    student: SideOutputs,
    teacher: SideOutputs,
    how: str,
    kind: str = "rows",
    skip_student_eos: bool = False,
    skip_teacher_eos: bool = False,
) -> Pairs:
    """Pair the student's rows (or token positions) with the teacher's, per sample (see the module docstring)."""
    check_choice("align", how, ALIGNMENTS)
    m_s = student_rows(student, kind, skip_student_eos)
    m_t = student_rows(teacher, kind, skip_teacher_eos)
    device = m_s.device
    if how == "index":
        ps, pt = rank_positions(m_s), rank_positions(m_t)
        r = min(ps.shape[1], pt.shape[1])
        ps, pt = ps[:, :r], pt[:, :r]
        ok = (ps >= 0) & (pt >= 0)
        b, k = ok.nonzero(as_tuple=True)
        return Pairs(b, ps[b, k], pt[b, k])
    seg_s, key_s = _offset_keys(student, kind)
    seg_t, key_t = _offset_keys(teacher, kind)
    out_b: list[int] = []
    out_s: list[int] = []
    out_t: list[int] = []
    for b in range(m_s.shape[0]):
        t_pos = m_t[b].nonzero().flatten().tolist()
        t_seg, t_key = seg_t[b].tolist(), key_t[b].tolist()
        table: dict[tuple[int, int], int] = {}
        for p in t_pos:
            if t_seg[p] >= 0 and t_key[p] >= 0:
                table.setdefault((t_seg[p], t_key[p]), p)
        s_seg, s_key = seg_s[b].tolist(), key_s[b].tolist()
        used: set[int] = set()
        for p in m_s[b].nonzero().flatten().tolist():
            q = table.get((s_seg[p], s_key[p]))
            if q is not None and q not in used:
                used.add(q)
                out_b.append(b)
                out_s.append(p)
                out_t.append(q)

    def t(x: list[int]) -> Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    return Pairs(t(out_b), t(out_s), t(out_t))


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row, from log-probabilities (``... x V``); entries where ``p = 0`` contribute 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    return terms.sum(-1)
