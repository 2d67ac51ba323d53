"""The embedding head: one ECG's elastic-dimension embedding from the student's hidden states, kept beside the
student as a pair of files (:data:`HEAD_WEIGHTS`, :data:`HEAD_CONFIG`). The losses that train it (``matryoshka``,
``mic``) are :mod:`evl_ecg.distill.elastic`; ``evl-ecg embed`` (:mod:`evl_ecg.infer.embed`) reads it."""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from evl_ecg.ecg.labels import FINDINGS
from evl_ecg.files import atomic_write_bytes
from evl_ecg.outputs import SideOutputs, compute_dtype

#: the head's files, written beside the student's (``embedding_head.safetensors`` + ``embedding_head.json``).
HEAD_WEIGHTS = "embedding_head.safetensors"
HEAD_CONFIG = "embedding_head.json"
HEAD_FORMAT = "evl-ecg/embedding-head"
HEAD_VERSION = 1
#: the positions the head pools over (:meth:`EmbeddingHead.position_mask`).
HEAD_POSITIONS = ("visual", "prompt", "all")
#: the tiny student's prefixes; the last is ``D``.
DEFAULT_PREFIXES: tuple[int, ...] = (8, 16, 32, 64, 128)
#: canonical findings, in :data:`evl_ecg.ecg.labels.FINDINGS` order: the columns of :func:`findings_multi_hot`.
FINDING_CODES: tuple[str, ...] = tuple(FINDINGS)

#: the floor of a norm (L2 normalisation of embeddings)
TINY = 1e-12


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_prefixes(prefixes: Iterable[int]) -> tuple[int, ...]:
    """``prefixes`` as a tuple of strictly increasing positive ints (the last is ``D``); raise otherwise."""
    items = [] if isinstance(prefixes, (str, bytes)) else list(prefixes)
    ok = bool(items) and all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in items)
    out = tuple(int(p) for p in items) if ok else ()
    if not ok or out[0] < 1 or any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"prefixes must be strictly increasing positive ints (the last is D), got {prefixes!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingHeadConfig:
    """The head's sizes and choices (written to :data:`HEAD_CONFIG`).

    Attributes:
        hidden_size: ``D_s``, the student's hidden size.
        prefixes: ``d_1 < ... < d_K``; ``D = d_K`` is the embedding's width.
        positions: the positions pooled: ``"visual"`` (default: the image positions, valid positions that are not
            text; under causal attention their states see the system prompt and the image only, not the question),
            ``"prompt"`` (every valid position that is not a response token: the whole prompt, question included)
            or ``"all"`` (every valid position, the response included).
        bias: a bias in the linear map (default False: ``e = W pool(H_s)``).
    """

    hidden_size: int
    prefixes: tuple[int, ...] = DEFAULT_PREFIXES
    positions: str = "visual"
    bias: bool = False

    def __post_init__(self) -> None:
        if int(self.hidden_size) < 1:
            raise ValueError(f"hidden_size must be a positive int, got {self.hidden_size}")
        object.__setattr__(self, "hidden_size", int(self.hidden_size))
        object.__setattr__(self, "prefixes", check_prefixes(self.prefixes))
        check_choice("positions", self.positions, HEAD_POSITIONS)
        object.__setattr__(self, "bias", bool(self.bias))

    @property
    def dim(self) -> int:
        """``D``, the full embedding's width (the last prefix)."""
        return self.prefixes[-1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prefixes"] = list(self.prefixes)
        return {"format": HEAD_FORMAT, "version": HEAD_VERSION, **out, "dim": self.dim, "pooling": "mean"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "embedding head config") -> EmbeddingHeadConfig:
        if data.get("format") != HEAD_FORMAT:
            raise ValueError(f"{source}: not an embedding head config (format {data.get('format')!r})")
        if int(data.get("version", 0)) > HEAD_VERSION:
            raise ValueError(f"{source}: version {data.get('version')} is newer than this code ({HEAD_VERSION})")
        if data.get("pooling", "mean") != "mean":
            raise ValueError(f"{source}: pooling {data.get('pooling')!r} is not supported (mean)")
        try:
            config = cls(
                hidden_size=data["hidden_size"],
                prefixes=tuple(data["prefixes"]),
                positions=data["positions"],
                bias=data.get("bias", False),
            )
        except KeyError as err:
            raise ValueError(f"{source}: missing field {err.args[0]!r}") from None
        if "dim" in data and int(data["dim"]) != config.dim:
            raise ValueError(f"{source}: dim {data['dim']} is not the last prefix {config.dim}")
        return config


class EmbeddingHead(nn.Module):
    r"""One ECG's embedding from the student's hidden states: a mean over positions, then a linear map to ``D``.

    .. math::  \bar h_b = \frac{1}{|P_b|} \sum_{l \in P_b} H_s^{(b,l)}, \qquad e_b = W \bar h_b \;(+\, c),
               \qquad e_b^{(k)} = e_b[:d_k]

    ``H_s``: ``B x L x D_s`` last-layer hidden states; ``P_b``: the positions of sample ``b`` in ``positions``
    (:attr:`EmbeddingHeadConfig.positions`); ``W``: ``D x D_s``. The mean runs in float32; the map under the ambient
    autocast. A sample with no position in ``P_b`` (no image, say) is refused. ``e^{(k)}`` is used L2-normalised
    (:meth:`truncate`): every loss here compares prefixes by cosine, except the classifier of ``task="bce"``.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        prefixes: Sequence[int] = DEFAULT_PREFIXES,
        positions: str = "visual",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.config = EmbeddingHeadConfig(hidden_size, tuple(prefixes), positions, bias)
        self.proj = nn.Linear(self.config.hidden_size, self.config.dim, bias=self.config.bias)

    @classmethod
    def from_config(cls, config: EmbeddingHeadConfig) -> EmbeddingHead:
        return cls(config.hidden_size, prefixes=config.prefixes, positions=config.positions, bias=config.bias)

    @property
    def prefixes(self) -> tuple[int, ...]:
        return self.config.prefixes

    @property
    def dim(self) -> int:
        return self.config.dim

    def extra_repr(self) -> str:
        c = self.config
        return f"D_s={c.hidden_size}, prefixes={list(c.prefixes)}, positions={c.positions!r}, pooling='mean'"

    def position_mask(self, side: SideOutputs) -> Tensor:
        """``B x L`` bool: the positions pooled (see :class:`EmbeddingHeadConfig`)."""
        which = self.config.positions
        if which == "all":
            return side.attention_mask
        if which == "prompt":
            return side.attention_mask & ~side.response_mask
        if side.text_mask is None:
            raise ValueError("positions='visual' needs SideOutputs.text_mask, which this adapter did not fill")
        return side.attention_mask & ~side.text_mask

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """``B x D`` embeddings from ``hidden`` (``B x L x D_s``) pooled over ``mask`` (``B x L`` bool)."""
        if hidden.shape[-1] != self.config.hidden_size:
            raise ValueError(f"embedding head expects hidden size {self.config.hidden_size}, got {hidden.shape[-1]}")
        counts = mask.sum(dim=1)
        if bool((counts == 0).any()):
            empty = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"embedding head: sample(s) {empty} have no {self.config.positions!r} position to pool over"
            )
        dtype = compute_dtype(hidden)
        h = torch.where(mask[..., None], hidden.to(dtype), torch.zeros((), dtype=dtype, device=hidden.device))
        pooled = h.sum(dim=1) / counts[:, None].to(dtype)
        return self.proj(pooled.to(self.proj.weight.dtype))

    def embed(self, side: SideOutputs) -> Tensor:
        """``B x D`` embeddings of a side's batch (its ``hidden`` over :meth:`position_mask`)."""
        return self(side.hidden, self.position_mask(side))

    @staticmethod
    def truncate(embedding: Tensor, dim: int, *, normalize: bool = True) -> Tensor:
        """The ``dim``-dimensional prefix ``e[:, :dim]``, L2-normalised unless ``normalize=False``."""
        prefix = embedding[..., :dim]
        return F.normalize(prefix, dim=-1, eps=TINY) if normalize else prefix

    # ---- files -----------------------------------------------------------------------------------------------
    def save(
        self, directory: str | os.PathLike[str], *, state_dict: dict[str, Tensor] | None = None
    ) -> tuple[Path, Path]:
        """Write :data:`HEAD_WEIGHTS` (float32 tensors) and :data:`HEAD_CONFIG` into ``directory``, atomically.

        ``state_dict``: this head's weights gathered from their shards (DeepSpeed ZeRO-3, FSDP), written instead of
        the module's own parameters, which are then shards; its keys must be the module's.
        """
        folder = Path(directory)
        own = self.state_dict()
        if state_dict is not None and sorted(state_dict) != sorted(own):
            raise ValueError(f"embedding head: gathered weights {sorted(state_dict)} are not the head's {sorted(own)}")
        source = own if state_dict is None else state_dict
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in source.items()}
        weights, config = folder / HEAD_WEIGHTS, folder / HEAD_CONFIG
        atomic_write_bytes(weights, safetensors_bytes(tensors, metadata={"format": HEAD_FORMAT}))
        atomic_write_bytes(config, (json.dumps(self.config.to_dict(), indent=1) + "\n").encode("utf-8"))
        return weights, config

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> EmbeddingHead:
        """The head saved by :meth:`save` in ``directory`` (its tensors must match its config exactly)."""
        folder = Path(directory)
        weights, config_path = folder / HEAD_WEIGHTS, folder / HEAD_CONFIG
        for path in (weights, config_path):
            if not path.is_file():
                raise FileNotFoundError(f"no embedding head in {folder}: {path.name} is missing")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
        head = cls.from_config(EmbeddingHeadConfig.from_dict(data, source=str(config_path)))
        state = load_file(str(weights), device=str(device))
        expected = head.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"{weights}: tensors {sorted(state)} do not match the config's {sorted(expected)}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"{weights}: {key} has shape {tuple(value.shape)}, the config says {tuple(expected[key].shape)}"
                )
        head.load_state_dict(state)
        return head.to(device)


__all__ = [
    "DEFAULT_PREFIXES",
    "FINDING_CODES",
    "HEAD_CONFIG",
    "HEAD_FORMAT",
    "HEAD_POSITIONS",
    "HEAD_VERSION",
    "HEAD_WEIGHTS",
    "TINY",
    "EmbeddingHead",
    "EmbeddingHeadConfig",
    "check_choice",
    "check_prefixes",
]
