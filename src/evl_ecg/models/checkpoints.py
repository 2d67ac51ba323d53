"""Checkpoint folders before and while they load: the files a family needs, its family from its files, safetensors
headers and weights checked against the model, one-line errors naming the folder or file (:class:`ModelLoadError`)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evl_ecg.files import read_text_file

ADAPTER_FILE = "evl_ecg_adapter.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_MAX_HEADER = 100 * 1024 * 1024


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded as the model it says it is: a corrupt or foreign file, weights of another
    model. The message names the folder or file and the problem, in one line."""


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__"?}``.

    The file starts with the header's length (little-endian u64) and the header itself; nothing else is read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise ValueError(f"{path}: header length {length} is not plausible; not a safetensors file")
        raw = fh.read(length)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable safetensors header ({exc.msg})") from None


def require_files(path: str | Path, what: str, *groups: str | tuple[str, ...]) -> Path:
    """Check that local directory ``path`` holds one file of each group; raise naming what is missing.

    Each group is a file name or a tuple of alternatives (e.g. the weight formats).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: {path} is not a local directory (nothing is downloaded; pass a local path)")
    missing = []
    for group in groups:
        alts = (group,) if isinstance(group, str) else group
        if not any((path / a).exists() for a in alts):
            missing.append(" or ".join(alts))
    if missing:
        raise FileNotFoundError(f"{what}: {path} lacks {'; '.join(missing)}")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in file ``path`` (``what`` it holds, for messages); :class:`ModelLoadError` if it is not one."""
    path = Path(path)
    text = read_text_file(path, ModelLoadError, what=what, missing=FileNotFoundError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{path}: the {what} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def checkpoint_family(path: str | Path) -> str:
    """The adapter family of the local checkpoint folder ``path``, from its files (no model is loaded).

    ``evl_ecg_adapter.json`` (written by :meth:`Adapter.save_pretrained`) names it; otherwise ``config.json``:
    ``llava_llama`` or the PULSE architecture -> ``pulse``, else its ``model_type``. Whether the family is supported
    is the caller's to check (:func:`evl_ecg.models.load_adapter`).
    """
    root = Path(path)
    adapter_file = root / ADAPTER_FILE
    if adapter_file.is_file():
        family = read_json_object(adapter_file, "adapter settings file").get("family")
        if not isinstance(family, str) or not family:
            raise ModelLoadError(f"{adapter_file}: 'family' must name the model family, got {family!r}")
        return family
    cfg = read_json_object(root / "config.json", "model configuration")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type == "llava_llama" or (isinstance(archs, list) and "PulseLlavaForConditionalGeneration" in archs):
        return "pulse"
    if not isinstance(model_type, str) or not model_type:
        raise ModelLoadError(f"{root / 'config.json'}: no model_type string, got {model_type!r}")
    return model_type


def check_safetensors(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is a whole ``.safetensors`` file (a readable header whose tensors the file holds).

    Reads the header only. Returns it; raises :class:`ModelLoadError` naming the file for a foreign, corrupt or
    truncated one.
    """

    path = Path(path)
    try:
        header = safetensors_header(path)
    except ValueError as exc:
        raise ModelLoadError(f"{exc} (corrupt or foreign weights)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: the safetensors header is not a JSON object; the weights are corrupt")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelLoadError(f"{path}: tensor {name!r} has no valid data_offsets; the weights are corrupt")
        end = max(end, offsets[1])
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
    size = path.stat().st_size
    if size < 8 + length + end:
        raise ModelLoadError(
            f"{path}: truncated: its header describes {8 + length + end} bytes, the file has {size} "
            "(an interrupted copy or download?)"
        )
    return header


def check_weight_files(root: str | Path) -> None:
    """Check the safetensors weights of checkpoint folder ``root`` (the index's shards exist, every file is whole)."""
    root = Path(root)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "weight index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: no 'weight_map' object; the weight index is corrupt")
        shards = sorted({str(f) for f in weight_map.values()})
        for shard in shards:
            if not (root / shard).is_file():
                raise FileNotFoundError(f"{root} lacks {shard}, listed in {index.name}")
            check_safetensors(root / shard)
    elif (root / "model.safetensors").is_file():
        check_safetensors(root / "model.safetensors")


@contextmanager
def loading(root: str | Path, what: str) -> Iterator[None]:
    """Report a failure to load ``what`` from folder ``root`` as one :class:`ModelLoadError` naming both.

    transformers' own load report (a table of keys) is silenced meanwhile: :func:`load_checked` says what is wrong.
    """
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    except (ModelLoadError, FileNotFoundError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"{root}: cannot load the {what}: {_first_line(exc)}") from exc
    finally:
        hf_logging.set_verbosity(level)


def _examples(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_hf_checkpoint(
    path: str | Path,
    what: str,
    family: str,
    model_cls: type,
    processor_cls: type,
    default_template: str,
    *,
    dtype: torch.dtype | str | None = None,
    **model_kwargs: Any,
) -> tuple[Path, nn.Module, Any, Any]:
    """``(path, model, tokenizer, image processor)`` of a local checkpoint in the transformers layout: the files
    checked first (:func:`require_files`), the model through :func:`load_checked` (``dtype`` default ``"auto"``), the
    tokenizer with ``default_template`` when it carries no chat template; nothing is downloaded."""
    root = require_files(path, what, "config.json", WEIGHT_FILES, "tokenizer.json", "preprocessor_config.json")
    model = load_checked(
        model_cls, root, family, dtype=dtype or "auto", local_files_only=True, trust_remote_code=False, **model_kwargs
    )
    from transformers import AutoTokenizer

    with loading(root, "tokenizer (tokenizer.json)"):
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, trust_remote_code=False)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = default_template
    with loading(root, "image processor (preprocessor_config.json)"):
        processor = processor_cls.from_pretrained(root, local_files_only=True)
    return root, model, tokenizer, processor


def load_checked(model_cls: type, root: str | Path, family: str, **kwargs: Any) -> nn.Module:
    """``model_cls.from_pretrained(root)``, refusing a folder whose files are not all of one such model.

    Checked: ``config.json`` is a JSON object of ``model_cls``'s ``model_type``; the safetensors weights are whole;
    the checkpoint has every weight the model has, no other, each of the model's shape (transformers'
    ``output_loading_info``). Anything else (a folder that mixes two models' files would otherwise load as a
    randomly initialised model) is a :class:`ModelLoadError` naming the folder.
    """
    root = Path(root)
    cfg = read_json_object(root / "config.json", "model configuration")
    expected = getattr(getattr(model_cls, "config_class", None), "model_type", None)
    if expected and cfg.get("model_type") != expected:
        raise ModelLoadError(
            f"{root / 'config.json'}: model_type {cfg.get('model_type')!r} is not {expected!r}, which the "
            f"{family!r} family loads ({model_cls.__name__}); the folder mixes the files of two models"
        )
    check_weight_files(root)
    kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below, with the folder's name
    with loading(root, f"{family} model ({model_cls.__name__})"):
        model, info = model_cls.from_pretrained(root, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if missing or unexpected or mismatched or errors:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's tensors missing ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors ({_examples(unexpected)})")
        if mismatched:
            key, in_file, in_model = mismatched[0]
            parts.append(
                f"{len(mismatched)} tensors of another shape ({key}: {list(in_file)} in the weights, "
                f"{list(in_model)} in config.json)"
            )
        if errors:
            parts.append(errors[0].splitlines()[0])
        raise ModelLoadError(
            f"{root}: the weights do not belong to the model config.json describes ({model_cls.__name__}): "
            + "; ".join(parts)
        )
    return model
