"""The teacher-output cache's key: which fields an objective reads of the teacher, and what a cache must agree on
with a run to serve it (see the package docstring)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evl_ecg.files import sha256_file
from evl_ecg.models.fingerprint import (
    canonical_json,
    describe_differences,
    image_processor_settings,
    model_fingerprint,
    short,
    template_signature,
)

FORMAT = 1
CACHE_FILE = "cache.json"
BUILD_FILE = "build.json"
VOCAB_FILE = "vocab.json"
CONSTANTS_FILE = "constants.safetensors"
SHARD_PATTERN = "shard-{:05d}.safetensors"
#: target bytes per shard (the record count per shard follows from record 0's size)
SHARD_BYTES = 512 * 1024**2
MAX_SHARD_RECORDS = 4096

#: per-record integer tensors, always stored (the masks and image positions are derived from them)
BASE_FIELDS = ("input_ids", "labels", "token_offsets")
#: what can be stored of the teacher's outputs
#: (``label_logliks``: the summed log-likelihood of each candidate answer of the record's label-set question, empty
#: where it has none; the candidates follow from the training file, which the key holds)
PER_RECORD_FIELDS = ("hidden", "logits", "visual", "all_hidden", "attentions", "label_logliks")
CONSTANT_FIELDS = ("embedding_weight", "lm_head_weight")
FIELDS = PER_RECORD_FIELDS + CONSTANT_FIELDS


class TeacherCacheError(ValueError):
    """A teacher cache that cannot serve this run (mismatched key, missing records, no room on disk, ...)."""


# ---- which fields an objective needs ---------------------------------------------------------------------------
def spec_fields(spec: dict[str, Any]) -> frozenset[str] | None:
    """The fields an objective spec (an :class:`~evl_ecg.distill.objective.ObjectiveConfig` dict) reads of the
    teacher; ``None`` when it needs no teacher at all (SFT, ``alpha = 0``)."""
    from evl_ecg.distill.registry import registered

    terms = spec.get("terms") or {}
    if not float(spec.get("alpha", 0.0)) > 0 or not terms:
        return None
    fields: set[str] = set()
    needed = False
    for name, options in terms.items():
        cls = registered().get(name)
        if cls is None:
            raise KeyError(f"no loss registered as {name!r}")
        if not getattr(cls, "needs_teacher", True):
            continue
        needed = True
        reads = cls.teacher_reads({**cls.defaults(), **{k: v for k, v in options.items() if k != "weight"}})
        if reads is None:
            raise TeacherCacheError(
                f"teacher cache: loss {name!r} does not declare what it reads of the teacher (its class's "
                "teacher_fields, or teacher_reads); run it with the live teacher (no teacher_cache) or declare them"
            )
        unknown = sorted(set(reads) - set(FIELDS))
        if unknown:
            raise TeacherCacheError(f"teacher cache: loss {name!r} reads {unknown}, which a cache cannot hold")
        fields |= reads
    return frozenset(fields) if needed else None


def method_fields(methods: Iterable[str], overrides: dict[str, Any] | None = None) -> frozenset[str] | None:
    """The union of :func:`spec_fields` over presets (``overrides``: the config's ``objective``, applied to each)."""
    from evl_ecg.distill.presets import get_preset

    out: set[str] | None = None
    for method in methods:
        fields = spec_fields(get_preset(method, **dict(overrides or {})))
        if fields is not None:
            out = set(fields) | (out or set())
    return None if out is None else frozenset(out)


# ---- the key ---------------------------------------------------------------------------------------------------


def data_signature(train_file: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 of the training file and of the ``manifest.json`` beside it (``None`` when there is none)."""
    path = Path(train_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training file")
    manifest = path.parent / "manifest.json"
    return {
        "train_file_sha256": sha256_file(path),
        "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
    }


def cache_key(
    teacher_dir: str | os.PathLike[str],
    train_file: str | os.PathLike[str],
    max_length: int,
    fields: Iterable[str],
    *,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The key a cache is built under and checked against (see the module docstring)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"teacher cache: unknown field(s) {unknown}; known: {list(FIELDS)}")
    fingerprint = fingerprint or model_fingerprint(teacher_dir)
    return {
        "format": FORMAT,
        "teacher": {"digest": fingerprint["digest"], "path": fingerprint["path"]},
        "template": template_signature(teacher_dir),
        "image_processor": image_processor_settings(teacher_dir),
        "data": data_signature(train_file),
        "max_length": int(max_length),
        "fields": sorted(set(fields)),
    }


def key_digest(key: dict[str, Any]) -> str:
    """The digest of a key without the teacher's path (moving the teacher keeps its caches)."""
    stripped = {**key, "teacher": {"digest": key["teacher"]["digest"]}}
    return hashlib.sha256(canonical_json(stripped)).hexdigest()


def key_mismatches(
    built: dict[str, Any],
    wanted: dict[str, Any],
    *,
    built_fingerprint: dict[str, Any] | None = None,
    wanted_fingerprint: dict[str, Any] | None = None,
) -> list[str]:
    """What keeps a cache built under ``built`` from serving a run whose key is ``wanted``, one phrase each
    (``"data manifest sha X, this run's is Y"``); ``[]`` when it can serve it (its fields may be a superset)."""
    out = []
    if built.get("format") != wanted.get("format"):
        out.append(f"cache format {built.get('format')}, this code's is {wanted.get('format')}")
    bt, wt = built.get("teacher", {}), wanted.get("teacher", {})
    if bt.get("digest") != wt.get("digest"):
        why = ""
        if built_fingerprint and wanted_fingerprint:
            why = " (" + ", ".join(describe_differences(built_fingerprint, wanted_fingerprint, limit=3)) + ")"
        out.append(
            f"teacher fingerprint {short(bt.get('digest'))} ({bt.get('path')}), this run's teacher is "
            f"{short(wt.get('digest'))} ({wt.get('path')}){why}"
        )
    if built.get("template") != wanted.get("template"):
        b, w = built.get("template") or {}, wanted.get("template") or {}
        out.append(
            f"teacher template {b.get('family')}/{short(b.get('render_sha256'))}, this run's is "
            f"{w.get('family')}/{short(w.get('render_sha256'))}"
        )
    if built.get("image_processor") != wanted.get("image_processor"):
        b, w = built.get("image_processor") or {}, wanted.get("image_processor") or {}
        names = sorted(k for k in set(b) | set(w) if b.get(k) != w.get(k))
        out.append(f"other teacher image processor settings ({', '.join(names)})")
    bd, wd = built.get("data", {}), wanted.get("data", {})
    if bd.get("manifest_sha256") != wd.get("manifest_sha256"):
        out.append(
            f"data manifest sha {short(bd.get('manifest_sha256'))}, this run's is {short(wd.get('manifest_sha256'))}"
        )
    if bd.get("train_file_sha256") != wd.get("train_file_sha256"):
        out.append(
            f"training file sha {short(bd.get('train_file_sha256'))}, this run's is "
            f"{short(wd.get('train_file_sha256'))}"
        )
    if built.get("max_length") != wanted.get("max_length"):
        out.append(f"max_length {built.get('max_length')}, this run's is {wanted.get('max_length')}")
    missing = sorted(set(wanted.get("fields", [])) - set(built.get("fields", [])))
    if missing:
        out.append(
            f"fields {built.get('fields')}, this run's objective also reads {missing} (build a cache with "
            "`evl-ecg train cache --method ...` for every method it should serve)"
        )
    return out


def refusal(directory: Path, problems: list[str]) -> TeacherCacheError:
    return TeacherCacheError(
        f"teacher cache {directory} was built for {'; '.join(problems)}: use another directory for this run, or empty "
        "this one to rebuild it"
    )
