"""Is this the same model? A fingerprint of a local checkpoint folder, from its small files and weight headers.

:func:`model_fingerprint` reads, without loading the model:

* ``card.json``'s training facts (the ``facts`` of :mod:`evl_ecg.models.card`; its ``scores`` are left out, since an
  evaluation adds them to the folder of the model it scored) and ``provenance.json`` when the folder has one;
* the bytes (sha256) of the configuration files (``config.json``, ``generation_config.json``, the adapter settings,
  weight index files), of the tokenizer files and of the image-processor files, all small;
* for each weight file its size, and for ``*.safetensors`` its JSON header (tensor names, dtypes, shapes and byte
  offsets, at the start of the file): **not** a hash of the weights, so a 7B checkpoint is fingerprinted in
  milliseconds;
* for a PULSE checkpoint in the original layout whose ``mm_vision_tower`` is a local folder, that folder's digest.

File modification times play no part. ``digest`` is the sha256 of all of it as canonical JSON (``path`` excluded), so
two folders with the same digest hold the same configuration, tokenizer, processor, architecture and training facts.
Two checkpoints of one architecture that differ only in their weight *values* and carry no card (no training facts)
have the same digest: the headers cannot tell them apart.

One helper for every place that must know "is this the same model": the teacher-output cache
(:mod:`evl_ecg.train.teacher_cache`) and the resume of ``evl-ecg eval run`` (:mod:`evl_ecg.eval.run`).
:func:`describe_differences` says what differs between two fingerprints, for error messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evl_ecg.models.checkpoints import safetensors_header

FORMAT = 1

CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "evl_ecg_adapter.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CARD_FILE = "card.json"
PROVENANCE_FILE = "provenance.json"
#: a safetensors header larger than this is not a header (a corrupt or foreign file)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(data: Any) -> bytes:
    """``data`` as JSON with sorted keys and no whitespace (the bytes digests are taken of)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def count_parameters(directory: str | Path) -> int | None:
    """The number of weights in checkpoint folder ``directory``, from its safetensors headers (nothing is loaded);
    ``None`` when it has no ``.safetensors`` file or one is unreadable."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for path in files:
            for name, info in safetensors_header(path).items():
                if name != "__metadata__":
                    n = 1
                    for dim in info.get("shape", []):
                        n *= int(dim)
                    total += n
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return total


def _weights(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"size": path.stat().st_size}
    if path.suffix == ".safetensors":
        header = safetensors_header(path)
        entry["header_sha256"] = _sha256(canonical_json(header))
        entry["tensors"] = {
            name: [info.get("dtype"), list(info.get("shape", []))]
            for name, info in sorted(header.items())
            if name != "__metadata__"
        }
    return entry


def _card_facts(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"unreadable_sha256": _sha256(path.read_bytes())}
    return data.get("facts", data) if isinstance(data, dict) else {"value": data}


def _json_or_hash(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"unreadable_sha256": _sha256(path.read_bytes())}


def _vision_tower(root: Path) -> str | None:
    """The digest of a local ``mm_vision_tower`` folder (PULSE's original layout reads its CLIP tower from there)."""
    try:
        cfg = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return None
    tower = cfg.get("mm_vision_tower") if isinstance(cfg, dict) else None
    if not isinstance(tower, str):
        return None
    candidate = Path(tower) if Path(tower).is_absolute() else root / tower
    if not candidate.is_dir() or candidate.resolve() == root.resolve():
        return None
    return model_fingerprint(candidate)["digest"]


def model_fingerprint(directory: str | Path) -> dict[str, Any]:
    """The fingerprint of the model checkpoint in ``directory`` (see the module docstring).

    Returns:
        ``{"format", "path", "card", "provenance", "config", "tokenizer", "processor", "weights", "vision_tower",
        "digest"}``: ``config``/``tokenizer``/``processor`` map file names to their sha256; ``weights`` maps each
        weight file to ``{"size", "header_sha256", "tensors": {name: [dtype, shape]}}`` (size only for ``.bin``);
        ``digest`` is the sha256 of everything but ``path``.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"model fingerprint: {root} is not a local directory")

    def hashed(names: tuple[str, ...]) -> dict[str, str]:
        return {name: _sha256((root / name).read_bytes()) for name in names if (root / name).is_file()}

    weights = {
        p.name: _weights(p)
        for p in sorted(root.iterdir())
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin"
    }
    fingerprint: dict[str, Any] = {
        "format": FORMAT,
        "card": _card_facts(root / CARD_FILE),
        "provenance": _json_or_hash(root / PROVENANCE_FILE),
        "config": hashed(CONFIG_FILES),
        "tokenizer": hashed(TOKENIZER_FILES),
        "processor": hashed(PROCESSOR_FILES),
        "weights": weights,
        "vision_tower": _vision_tower(root),
    }
    if not fingerprint["config"] and not weights:
        raise FileNotFoundError(f"model fingerprint: {root} holds neither a config.json nor weight files")
    fingerprint["digest"] = _sha256(canonical_json(fingerprint))
    fingerprint["path"] = str(root.resolve())
    return fingerprint


def short(digest: str | None) -> str:
    """The first 12 hex digits of a digest, for messages."""
    return (digest or "none")[:12]


def _dict_changes(label: str, old: dict[str, Any] | None, new: dict[str, Any] | None, limit: int = 4) -> list[str]:
    old, new = old or {}, new or {}
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            out.append(f"{label} {key} only in the first")
        elif key not in old:
            out.append(f"{label} {key} only in the second")
        elif old[key] != new[key]:
            a, b = json.dumps(old[key], default=str), json.dumps(new[key], default=str)
            out.append(f"{label} {key} differs" if len(a) + len(b) > 120 else f"{label} {key}: {a} vs {b}")
    return out[:limit] + ([f"... ({len(out) - limit} more {label} differences)"] if len(out) > limit else [])


def describe_differences(first: dict[str, Any], second: dict[str, Any], limit: int = 6) -> list[str]:
    """What differs between two fingerprints, most telling first (``[]`` when the digests agree)."""
    if first.get("digest") == second.get("digest"):
        return []
    out: list[str] = []
    if first.get("format") != second.get("format"):
        out.append(f"fingerprint format {first.get('format')} vs {second.get('format')}")
    w1, w2 = first.get("weights") or {}, second.get("weights") or {}
    for name in sorted(set(w1) | set(w2)):
        if name not in w2 or name not in w1:
            out.append(f"weight file {name} only in the {'first' if name in w1 else 'second'}")
            continue
        t1, t2 = w1[name].get("tensors") or {}, w2[name].get("tensors") or {}
        changed = [k for k in sorted(set(t1) | set(t2)) if t1.get(k) != t2.get(k)]
        for k in changed[:3]:
            a = "absent" if k not in t1 else f"{t1[k][0]}{t1[k][1]}"
            b = "absent" if k not in t2 else f"{t2[k][0]}{t2[k][1]}"
            out.append(f"{name}: tensor {k} {a} vs {b}")
        if len(changed) > 3:
            out.append(f"{name}: {len(changed) - 3} more tensors differ")
        if not changed and w1[name] != w2[name]:
            out.append(f"{name}: size {w1[name].get('size')} vs {w2[name].get('size')} (same tensors)")
    for section in ("config", "tokenizer", "processor"):
        f1, f2 = first.get(section) or {}, second.get(section) or {}
        for name in sorted(set(f1) | set(f2)):
            if name not in f1 or name not in f2:
                out.append(f"{name} only in the {'first' if name in f1 else 'second'}")
            elif f1[name] != f2[name]:
                out.append(f"{name} differs")
    out += _dict_changes("card fact", first.get("card"), second.get("card"))
    if first.get("provenance") != second.get("provenance"):
        out.append("provenance.json differs")
    if first.get("vision_tower") != second.get("vision_tower"):
        out.append(f"vision tower {short(first.get('vision_tower'))} vs {short(second.get('vision_tower'))}")
    if not out:
        out.append("fingerprints differ")
    return out[:limit] + ([f"... ({len(out) - limit} more)"] if len(out) > limit else [])


# ---- what a cache of a model's outputs also depends on: its family's template and its image processor --------------
def model_family(directory: str | Path) -> str:
    """The adapter family :func:`evl_ecg.models.load_adapter` would choose for ``directory`` (same rule)."""
    from evl_ecg.models.checkpoints import checkpoint_family

    return checkpoint_family(directory)


def template_signature(directory: str | Path) -> dict[str, Any]:
    """The prompt format of the model in ``directory``: its adapter family and class, and a digest of what the
    family's template renders for a probe conversation (two turns, then a generation prompt).

    The template is code (:meth:`evl_ecg.models.base.Adapter.render`), not a file of the checkpoint: rendering a probe
    is how a change of it is seen. No model is loaded (``render`` reads only the family's class attributes).
    """
    from evl_ecg.models import FAMILIES
    from evl_ecg.models.conversation import ChatTurn

    family = model_family(directory)
    cls = FAMILIES.get(family)
    if cls is None:
        return {"family": family, "adapter": None, "render_sha256": None}
    probe = cls(None, None, None)
    turns = [ChatTurn("user", "q1"), ChatTurn("assistant", "a1"), ChatTurn("user", "q2"), ChatTurn("assistant", "a2")]
    rendered = [probe.render(turns, generation=False), probe.render(turns[:1], generation=True)]
    payload = [[r.text, r.answers] for r in rendered]
    payload.append([cls.image_placeholder, cls.add_bos])
    return {
        "family": family,
        "adapter": f"{cls.__module__}.{cls.__qualname__}",
        "render_sha256": _sha256(canonical_json(payload)),
    }


def image_processor_settings(directory: str | Path) -> dict[str, Any]:
    """The image-processor settings of the model in ``directory``: its processor files as JSON, and for PULSE's
    original layout the ``config.json`` keys its any-resolution preprocessing reads (pinpoints, tower)."""
    root = Path(directory)
    settings: dict[str, Any] = {}
    for name in PROCESSOR_FILES:
        value = _json_or_hash(root / name)
        if value is not None:
            settings[name] = value
    try:
        cfg = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    for key in ("image_grid_pinpoints", "mm_vision_tower", "image_aspect_ratio", "mm_patch_merge_type"):
        if isinstance(cfg, dict) and key in cfg:
            settings[f"config.json:{key}"] = cfg[key]
    return settings
