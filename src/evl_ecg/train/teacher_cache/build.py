"""Building the teacher-output cache: the frozen teacher once over the training records, sharded, resumable, one
build per directory; and opening or building it from a run's configuration (see the package docstring)."""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from evl_ecg.data.label_sets import training_candidates
from evl_ecg.files import atomic_write_bytes, human_bytes
from evl_ecg.models.conversation import record_id
from evl_ecg.models.fingerprint import (
    model_fingerprint,
)
from evl_ecg.outputs import SideOutputs
from evl_ecg.train.paired import encode_label_set, encode_truncated, load_record_image
from evl_ecg.train.teacher_cache.key import (
    BUILD_FILE,
    CACHE_FILE,
    CONSTANTS_FILE,
    FORMAT,
    MAX_SHARD_RECORDS,
    SHARD_BYTES,
    SHARD_PATTERN,
    VOCAB_FILE,
    TeacherCacheError,
    cache_key,
    key_mismatches,
    method_fields,
)
from evl_ecg.train.teacher_cache.store import (
    TeacherCache,
    existing_ancestor,
    record_tensors,
    tensor_bytes,
)


# ---- building --------------------------------------------------------------------------------------------------
class _TeacherEncodings(torch.utils.data.Dataset):
    """``(index, the teacher's encoding of record index)`` for the records to build."""

    def __init__(
        self,
        records: Sequence[Any],
        indices: Sequence[int],
        image_loader: Any,
        teacher: Any,
        max_length: int | None = None,
        label_sets: dict[str, list[str]] | None = None,
    ) -> None:
        self.records, self.indices, self.image_loader, self.teacher = records, list(indices), image_loader, teacher
        self.max_length = max_length
        self.label_sets = label_sets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, dict[str, Tensor], Any]:
        index = self.indices[k]
        record = self.records[index]
        image = load_record_image(record, self.image_loader)
        # cut to max_length as a live run cuts the teacher's sample (the key holds max_length)
        encoded = encode_truncated(self.teacher, record, image, self.max_length, side="teacher")[0]
        candidates = None
        if self.label_sets is not None:  # the candidates a live run's dataset encodes (train.paired.PairedDataset)
            candidates = encode_label_set(self.teacher, record, image, self.label_sets)
        return index, encoded, candidates


class _Collate:
    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher

    def __call__(self, samples: list[tuple[int, dict[str, Tensor], Any]]) -> tuple[list[int], dict[str, Any]]:
        batch = self.teacher.collate([s for _, s, _ in samples], padding_side="right")
        batch["label_sets"] = [c for _, _, c in samples]
        return [i for i, _, _ in samples], batch


@contextmanager
def _rng_untouched() -> Any:
    """Run a block without moving any random state (a data loader draws its base seed from torch's generator):
    a run that builds its cache first then trains exactly as a later run that reuses it."""
    state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state)


@contextmanager
def build_lock(directory: Path) -> Any:
    """An exclusive lock on building ``directory`` (``flock`` on a file beside it, released when the process ends):
    runs started at once with the same cache directory build it once, the others wait and reuse it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _shard_ranges(n: int, per_shard: int) -> list[range]:
    return [range(s, min(s + per_shard, n)) for s in range(0, n, per_shard)]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_teacher_cache(
    directory: str | os.PathLike[str],
    teacher: Any,
    records: Sequence[Any],
    image_loader: Any,
    key: dict[str, Any],
    *,
    fingerprint: dict[str, Any] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    shard_records: int | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> TeacherCache:
    """Run ``teacher`` (an adapter) over ``records`` and write what ``key["fields"]`` names into ``directory``.

    ``directory`` must be absent, empty, or a partial build under the same key (continued from its last complete
    shard). Prints the expected size first and refuses (:class:`TeacherCacheError`) when the disk lacks the room.
    ``shard_records``: records per shard (default: about :data:`SHARD_BYTES` per shard, from record 0's size).
    """
    directory = Path(directory)
    log = log or (lambda _message: None)
    fields = set(key["fields"])
    if not records:
        raise TeacherCacheError("teacher cache: no records to build it from")
    build_file = directory / BUILD_FILE
    previous = json.loads(build_file.read_text()) if build_file.is_file() else None
    if previous is not None:
        problems = key_mismatches(previous["key"], key)
        if problems or previous["ids"] != [record_id(r) for r in records] or set(previous["key"]["fields"]) != fields:
            problems = problems or ["other records or fields"]
            raise TeacherCacheError(
                f"teacher cache {directory} holds a partial build for {'; '.join(problems)}: empty it to rebuild"
            )
        shard_records = int(previous["shard_records"])
    elif directory.exists() and any(directory.iterdir()):
        raise TeacherCacheError(
            f"teacher cache {directory} is not empty and holds no cache: give an empty or absent directory"
        )

    model = teacher.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    requires = frozenset(f for f in ("all_hidden", "attentions", "label_logliks") if f in fields)
    label_sets = training_candidates(records) if "label_logliks" in fields else None
    t0 = time.perf_counter()
    with _rng_untouched(), torch.no_grad():
        # record 0 (or the first record still to build) gives the size of one record, before anything is written
        done_shards: set[int] = set()
        if shard_records is not None:
            done_shards = {
                k
                for k in range(len(_shard_ranges(len(records), shard_records)))
                if (directory / SHARD_PATTERN.format(k)).is_file()
            }
        todo = [
            i
            for k, r in enumerate(_shard_ranges(len(records), shard_records or len(records)))
            if k not in done_shards
            for i in r
        ]
        loader = torch.utils.data.DataLoader(
            _TeacherEncodings(records, todo, image_loader, teacher, key.get("max_length"), label_sets),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_Collate(teacher),
        )
        pending: dict[int, dict[str, Tensor]] = {}
        written = 0
        first = True
        for indices, batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = teacher.forward(batch, requires=requires)
            for j, index in enumerate(indices):
                pending[index] = record_tensors(batch, out, j, fields)
            if first:
                first = False
                shard_records = _start(
                    directory,
                    teacher,
                    records,
                    key,
                    fingerprint,
                    fields,
                    out,
                    pending[indices[0]],
                    todo,
                    shard_records,
                    previous is not None,
                    log,
                )
            written += _flush(directory, records, pending, shard_records, log, t0, written, len(todo))
            del out, batch
        if pending:
            raise RuntimeError(f"teacher cache {directory}: records {sorted(pending)[:5]} were not written")
    nbytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    build = json.loads(build_file.read_text())
    meta = {
        **build,
        "shards": [SHARD_PATTERN.format(k) for k in range(len(_shard_ranges(len(records), shard_records)))],
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_bytes(directory / CACHE_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    build_file.unlink()
    log(f"teacher cache: {len(records)} records in {directory} ({human_bytes(nbytes)}, {meta['seconds']:.1f} s)")
    return TeacherCache(directory)


def _start(
    directory: Path,
    teacher: Any,
    records: Sequence[Any],
    key: dict[str, Any],
    fingerprint: dict[str, Any] | None,
    fields: set[str],
    out: SideOutputs,
    one: dict[str, Tensor],
    todo: list[int],
    shard_records: int | None,
    resumed: bool,
    log: Callable[[str], None],
) -> int:
    """Size check, then the shared files and ``build.json``, once the first batch is known. Returns the records per
    shard."""
    per_record = tensor_bytes(one)
    constants = {}
    if "embedding_weight" in fields:
        constants["embedding_weight"] = out.embedding_weight.detach().to("cpu").contiguous().clone()
    if "lm_head_weight" in fields:
        constants["lm_head_weight"] = out.lm_head_weight.detach().to("cpu").contiguous().clone()
    vocab_bytes = json.dumps(teacher.vocab).encode("utf-8")
    shared = 0 if resumed else tensor_bytes(constants) + len(vocab_bytes)
    total = per_record * len(todo) + shared
    free = shutil.disk_usage(existing_ancestor(directory)).free
    stored = ", ".join(sorted(fields)) or "token ids only"
    log(
        f"teacher cache: {len(todo)} records x {human_bytes(per_record)} (record {todo[0]}: "
        f"{one['input_ids'].shape[0]} positions; {stored}) + {human_bytes(shared)} shared = about "
        f"{human_bytes(total)} in {directory} ({human_bytes(free)} free)"
    )
    if total > free:
        raise TeacherCacheError(
            f"teacher cache {directory} needs about {human_bytes(total)} ({len(todo)} records x "
            f"{human_bytes(per_record)}, from record {todo[0]}) but only {human_bytes(free)} are free there"
        )
    if shard_records is None:
        shard_records = max(1, min(MAX_SHARD_RECORDS, SHARD_BYTES // max(per_record, 1)))
    if not resumed:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / VOCAB_FILE, vocab_bytes)
        if constants:
            save_file(constants, str(directory / CONSTANTS_FILE))
        model = teacher.model
        context = teacher.loss_context()
        build = {
            "format": FORMAT,
            "key": key,
            "fingerprint": fingerprint,
            "ids": [record_id(r) for r in records],
            "shard_records": shard_records,
            "teacher": {
                "family": teacher.family,
                "hidden": int(context["hidden"]),
                "visual": int(context["visual"]),
                "layers": int(context["layers"]),
                "heads": int(context["heads"]),
                "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
                "image_token_id": int(teacher.image_token_id),
                "pad_token_id": int(teacher.pad_token_id),
                "dtype": str(out.hidden.dtype).removeprefix("torch."),
                "device": str(out.hidden.device),
                "attn_implementation": getattr(model.config, "_attn_implementation", None),
            },
            "versions": _versions(),
        }
        atomic_write_bytes(directory / BUILD_FILE, json.dumps(build, indent=1).encode("utf-8"))
    return shard_records


def _flush(
    directory: Path,
    records: Sequence[Any],
    pending: dict[int, dict[str, Tensor]],
    shard_records: int,
    log: Callable[[str], None],
    t0: float,
    written: int,
    todo: int,
) -> int:
    """Write every shard whose records are all in ``pending`` (atomically); returns how many records it wrote."""
    ranges = _shard_ranges(len(records), shard_records)
    count = 0
    for k in sorted({i // shard_records for i in pending}):
        rng = ranges[k]
        if not all(i in pending for i in rng):
            continue
        tensors = {f"{i}.{name}": t for i in rng for name, t in pending.pop(i).items()}
        path = directory / SHARD_PATTERN.format(k)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"first": str(rng.start), "records": str(len(rng))})
        os.replace(tmp, path)
        count += len(rng)
        rate = (written + count) / max(time.perf_counter() - t0, 1e-9)
        log(f"teacher cache: shard {k + 1}/{len(ranges)} written ({written + count}/{todo} records, {rate:.1f}/s)")
    return count


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("evl-ecg", "torch", "transformers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---- from a run configuration ----------------------------------------------------------------------------------
def open_or_build(
    config: Any,
    records: Sequence[Any],
    image_loader: Any,
    *,
    fields: Iterable[str] | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> TeacherCache:
    """The cache ``config.teacher_cache`` for a KD run of ``config`` (an :class:`~evl_ecg.train.config.EvlConfig`)
    over ``records``: reused when its key matches, built when the directory is empty or absent (the teacher is
    loaded for that and freed after), refused otherwise.

    ``fields`` defaults to what ``config.method`` / ``config.objective`` read (:func:`method_fields`). The main process
    builds first; the others wait for it and open the result.
    """
    if not config.teacher_cache:
        raise ValueError("open_or_build needs config.teacher_cache (a directory)")
    if not config.teacher:
        raise ValueError("a teacher cache needs the teacher checkpoint too (teacher=DIR): its fingerprint is the key")
    if fields is None:
        fields = method_fields([config.method], config.objective) or frozenset()
    directory = Path(config.teacher_cache)
    fingerprint = model_fingerprint(config.teacher)
    key = cache_key(config.teacher, config.train_file, config.max_length, fields, fingerprint=fingerprint)
    with config.main_process_first(local=False, desc="teacher cache"):
        if not (directory / CACHE_FILE).is_file():
            if config.process_index != 0:
                raise TeacherCacheError(f"teacher cache {directory}: the main process did not build it")
            with build_lock(directory):
                if not (directory / CACHE_FILE).is_file():  # another process may have built it while we waited
                    _build_from_config(config, directory, records, image_loader, key, fingerprint, log)
        cache = TeacherCache(directory)
        cache.verify(key, fingerprint)
        cache.check_records(records)
        cache.serve(fields)  # read only what this run's objective needs
    if log is not None and config.process_index == 0:
        log(f"teacher cache: {directory} ({len(cache)} records; {', '.join(sorted(cache.fields)) or 'ids only'})")
    return cache


def _build_from_config(
    config: Any,
    directory: Path,
    records: Sequence[Any],
    image_loader: Any,
    key: dict[str, Any],
    fingerprint: dict[str, Any],
    log: Callable[[str], None] | None,
) -> None:
    """Load the teacher, build the cache on the run's device and batch size, free the teacher."""
    from evl_ecg.models import load_adapter

    with config.unsharded_loading():
        teacher = load_adapter(config.teacher, family=config.teacher_family, dtype=config.teacher_torch_dtype)
    try:
        build_teacher_cache(
            directory,
            teacher,
            records,
            image_loader,
            key,
            fingerprint=fingerprint,
            batch_size=config.per_device_train_batch_size,
            device=config.device,
            num_workers=config.dataloader_num_workers,
            log=log,
        )
    finally:
        del teacher
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
