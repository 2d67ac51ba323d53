"""A one-to-one map between two vocabularies built from identical token strings.

Baselines that compare distributions over a vocabulary (Vanilla KL, TinyBERT's prediction layer, EM-KD with
``vsd_space="mapped"`` or ``match="logits"``, its ``L_rld``) are defined only on a vocabulary both models share. We
use the **string intersection**: student id ``i`` and teacher id ``j`` are paired when their token strings are equal
after normalisation. Several ids can normalise to the same string; the lowest id wins on each side, so the map is one
to one. Distributions are then renormalised on the shared sub-vocabulary (a softmax over its columns only).

Normalisations (``normalize``):

* ``"none"``: the raw strings.
* ``"space"`` (default): the word-start markers of SentencePiece (``▁``, U+2581; LLaMA/Vicuna) and byte-level BPE
  (``Ġ``, U+0120; GPT-2/Qwen) both become a plain space, so ``▁the`` and ``Ġthe`` pair.
* ``"bytes"``: each token becomes the bytes it stands for: byte-level BPE strings are decoded through GPT-2's
  byte-to-unicode table (``Ċ`` -> ``\\n``), SentencePiece byte tokens ``<0x0A>`` become their byte and ``▁`` a space.
  Which scheme a vocabulary uses is detected from its strings (:func:`detect_scheme`).

``special_pairs`` (``{teacher string: student string}``, raw strings) adds explicit pairs first, e.g.
``{"</s>": "<|im_end|>"}`` to pair the two end-of-answer tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

NORMALIZATIONS = ("none", "space", "bytes")
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's inverse byte-to-unicode table (printable stand-ins for the 256 bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def detect_scheme(vocab: list[str]) -> str:
    """``"byte_level"`` (``Ġ`` word starts), ``"sentencepiece"`` (``▁`` word starts) or ``"plain"``."""
    g = sum(1 for t in vocab if t.startswith("\u0120"))
    s = sum(1 for t in vocab if t.startswith("\u2581"))
    if g == 0 and s == 0:
        return "plain"
    return "byte_level" if g >= s else "sentencepiece"


def normalize_token(token: str, mode: str, scheme: str = "plain") -> str | bytes:
    """The key under which ``token`` is compared (see the module docstring)."""
    if mode == "none":
        return token
    if mode == "space":
        return token.replace("\u2581", " ").replace("\u0120", " ")
    if mode != "bytes":
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    m = _SP_BYTE.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    if scheme == "byte_level":
        dec = _byte_decoder()
        if all(c in dec for c in token):
            return bytes(dec[c] for c in token)
        return token.encode("utf-8")
    return token.replace("\u2581", " ").encode("utf-8")


@dataclass
class VocabMap:
    """Paired ids: ``student_ids[k]`` and ``teacher_ids[k]`` are the same token (``K`` pairs, sorted by teacher id)."""

    student_ids: Tensor
    teacher_ids: Tensor
    student_size: int
    teacher_size: int

    def __len__(self) -> int:
        return int(self.student_ids.numel())

    @property
    def coverage_student(self) -> float:
        """Fraction of the student's vocabulary entries that are mapped."""
        return len(self) / max(self.student_size, 1)

    @property
    def coverage_teacher(self) -> float:
        """Fraction of the teacher's vocabulary entries that are mapped."""
        return len(self) / max(self.teacher_size, 1)

    def to(self, device: torch.device) -> VocabMap:
        if self.student_ids.device == device:
            return self
        return VocabMap(self.student_ids.to(device), self.teacher_ids.to(device), self.student_size, self.teacher_size)

    def check(self, v_s: int, v_t: int) -> None:
        """Raise if the logits are narrower than the vocabularies the map was built from."""
        if v_s < self.student_size or v_t < self.teacher_size:
            raise ValueError(
                f"vocabulary map built for V_s={self.student_size}, V_t={self.teacher_size} but logits have "
                f"V_s={v_s}, V_t={v_t}"
            )


def build_vocab_map(
    student_vocab: list[str],
    teacher_vocab: list[str],
    normalize: str = "space",
    special_pairs: dict[str, str] | None = None,
) -> VocabMap:
    """Pair the ids of equal (normalised) token strings; the lowest id wins where several share a string."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    pairs: list[tuple[int, int]] = []  # (teacher id, student id)
    used_s: set[int] = set()
    used_t: set[int] = set()
    for t_str, s_str in (special_pairs or {}).items():
        if t_str not in teacher_vocab or s_str not in student_vocab:
            raise ValueError(f"special pair {t_str!r} -> {s_str!r}: a string is missing from its vocabulary")
        j, i = teacher_vocab.index(t_str), student_vocab.index(s_str)
        if i in used_s or j in used_t:
            raise ValueError(f"special pair {t_str!r} -> {s_str!r} reuses an id")
        pairs.append((j, i))
        used_s.add(i)
        used_t.add(j)
    scheme_s, scheme_t = detect_scheme(student_vocab), detect_scheme(teacher_vocab)
    teacher_index: dict[str | bytes, int] = {}
    for j, tok in enumerate(teacher_vocab):
        if j not in used_t:
            teacher_index.setdefault(normalize_token(tok, normalize, scheme_t), j)
    taken: set[str | bytes] = set()
    for i, tok in enumerate(student_vocab):
        if i in used_s:
            continue
        key = normalize_token(tok, normalize, scheme_s)
        if key in taken:
            continue
        j = teacher_index.get(key)
        if j is not None:
            taken.add(key)
            pairs.append((j, i))
    if not pairs:
        raise ValueError("the two vocabularies share no token string: no vocabulary map")
    pairs.sort()
    return VocabMap(
        student_ids=torch.tensor([i for _, i in pairs], dtype=torch.long),
        teacher_ids=torch.tensor([j for j, _ in pairs], dtype=torch.long),
        student_size=len(student_vocab),
        teacher_size=len(teacher_vocab),
    )


class VocabMapCache:
    """Builds the map once, from :class:`LossContext` vocabularies if given, else from the first batch's
    :attr:`SideOutputs.vocab`; keeps one copy per device."""

    def __init__(
        self,
        student_vocab: list[str] | None,
        teacher_vocab: list[str] | None,
        normalize: str = "space",
        special_pairs: dict[str, str] | None = None,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize
        self.special_pairs = dict(special_pairs or {})
        self._map: VocabMap | None = None
        if student_vocab is not None and teacher_vocab is not None:
            self._map = build_vocab_map(student_vocab, teacher_vocab, normalize, self.special_pairs)

    def get(self, student_vocab: list[str] | None, teacher_vocab: list[str] | None, device: torch.device) -> VocabMap:
        if self._map is None:
            if student_vocab is None or teacher_vocab is None:
                raise ValueError(
                    "a vocabulary map needs LossContext.student_vocab / teacher_vocab (or SideOutputs.vocab)"
                )
            self._map = build_vocab_map(student_vocab, teacher_vocab, self.normalize, self.special_pairs)
        self._map = self._map.to(device)
        return self._map
