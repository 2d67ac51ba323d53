"""Conversation records: the ECGInstruct training format and the ECGBench subsets' formats.

Both are LLaVA "conversations" records (``reference/ecgbench-scoring.md`` §1.2, §2.1)::

    {"id": "mimic-44111511",
     "image": "mimic/p1127/p11273115/s44111511/44111511-0.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat ..."},
                       {"from": "gpt", "value": "..."}]}

* turns alternate ``human`` / ``gpt``, start with ``human`` and end with ``gpt``;
* ``<image>`` occurs exactly once, at the start of the first human turn, as ``"<image>\\n..."``;
* ``ecgqa-test`` stores ``value`` as ``list<str>``: the gold answer is a list of option strings, and the HF
  parquet export returns the *prompt* as a list of single characters (joined here, issue #5);
* the HF parquet export names the image ``image_path`` and carries the PNG bytes in an ``image`` column
  (:func:`extract_parquet_images` writes them under an image root, as the ECGBench README's recipe does).

Our own records may carry two extras that LLaVA's loader ignores: ``meta`` (how the record was made) and
``labels`` (the label sets the gold answer encodes, per vocabulary), so that scorers and probes need not
parse text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evl_ecg.files import atomic_write_bytes, read_text_file

IMAGE_TOKEN = "<image>"
HUMAN = "human"
GPT = "gpt"
ROLES: tuple[str, str] = (HUMAN, GPT)


class RecordError(ValueError):
    """A record or record file that cannot be used; the message names the file, the record id and the field."""


@dataclass
class Turn:
    """One conversation turn.

    Attributes:
        role: ``"human"`` or ``"gpt"`` (the JSON key is ``from``).
        value: the text; a gpt turn may hold a list of answer strings (``ecgqa-test`` gold answers).
    """

    role: str
    value: str | list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.role, "value": list(self.value) if isinstance(self.value, list) else self.value}


@dataclass
class Record:
    """A LLaVA conversation record (ECGInstruct / ECGBench).

    Attributes:
        id: unique record id.
        image: image path relative to an image root (ECGBench: ``data/ECGBench/images``).
        conversations: alternating human/gpt turns, starting with human.
        meta: free-form provenance (task type, generator seed, ...); written only when non-empty. One key is an
            instruction to training: ``"ce": false`` makes the answer context only, not a cross-entropy target
            (:func:`answer_is_target`; a label budget's pool records seen through the teacher's outputs alone).
        labels: label sets the gold answer encodes, per vocabulary (``{"ptbxl": ["MI", "CD"]}``); written only
            when non-empty.
    """

    id: str
    image: str
    conversations: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The first human turn without the leading ``"<image>\\n"`` (what PULSE's inference feeds the model)."""
        text = self.conversations[0].value
        text = "".join(text) if isinstance(text, list) else text
        return strip_image_token(text)

    @property
    def answer(self) -> str | list[str]:
        """The first gpt turn's value (the gold answer on ECGBench)."""
        return self.conversations[1].value

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (key order: id, image, conversations, then labels/meta when present)."""
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "conversations": [t.to_dict() for t in self.conversations],
        }
        if self.labels:
            out["labels"] = {k: list(v) for k, v in self.labels.items()}
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "record", normalize_image_token: bool = False
    ) -> Record:
        """Parse and :func:`validate` one record (a JSON object or a parquet row).

        Accepts the parquet export's ``image_path`` for ``image`` and joins character-split prompts.
        With ``normalize_image_token`` the first human turn gets LLaVA's treatment (``<image>`` removed and
        re-inserted as ``"<image>\\n"`` at its start) before validation.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: record is a {type(data).__name__}, expected an object")
        rid = data.get("id")
        label = f"{source}: record {rid!r}"
        image = data["image_path"] if "image_path" in data else data.get("image")
        raw_convs = data.get("conversations")
        if raw_convs is None:
            raise RecordError(f"{label}: field 'conversations' is missing")
        raw_convs = _as_list(raw_convs)
        if raw_convs is None:
            raise RecordError(f"{label}: field 'conversations' must be a list of turns")
        turns: list[Turn] = []
        for i, raw in enumerate(raw_convs):
            if not isinstance(raw, Mapping):
                raise RecordError(f"{label}: field conversations[{i}] must be an object with 'from' and 'value'")
            if "from" not in raw or "value" not in raw:
                missing = "from" if "from" not in raw else "value"
                raise RecordError(f"{label}: field conversations[{i}].{missing} is missing")
            role, value = raw["from"], raw["value"]
            listed = _as_list(value)
            if listed is not None:
                if not all(isinstance(x, str) for x in listed):
                    raise RecordError(f"{label}: field conversations[{i}].value must be a string or a list of strings")
                value = _unsplit(listed, role=role)
            turns.append(Turn(role=role, value=value))
        labels = data.get("labels") or {}
        meta = data.get("meta") or {}
        if not isinstance(labels, Mapping):
            raise RecordError(f"{label}: field 'labels' must be an object mapping vocabulary names to lists of strings")
        if not isinstance(meta, Mapping):
            raise RecordError(f"{label}: field 'meta' must be an object, got {type(meta).__name__}")
        record = cls(id=rid, image=image, conversations=turns, meta=dict(meta), labels=dict(labels))
        if normalize_image_token and turns and isinstance(turns[0].value, str):
            turns[0].value = with_image_token(turns[0].value)
        validate(record, source=source)
        return record


def answer_is_target(record: Any) -> bool:
    """Whether training fits the record's answer with cross-entropy: yes unless its ``meta`` says ``"ce": false``
    (the answer is then context for the other losses only)."""
    meta = record.get("meta") if isinstance(record, Mapping) else getattr(record, "meta", None)
    return not (isinstance(meta, Mapping) and meta.get("ce") is False)


def strip_image_token(text: str) -> str:
    """Text without ``<image>`` and the whitespace around it (PULSE removes ``"<image>\\n"``)."""
    return text.replace(IMAGE_TOKEN, "").strip()


def with_image_token(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: ``<image>`` removed, then put back as ``"<image>\\n" + text``."""
    return f"{IMAGE_TOKEN}\n{strip_image_token(text)}"


def _as_list(value: Any) -> list[Any] | None:
    """A list for lists, tuples and numpy arrays (pandas returns parquet lists as arrays); ``None`` otherwise."""
    if isinstance(value, list | tuple):
        return list(value)
    if type(value).__name__ == "ndarray":
        return list(value.tolist())
    return None


def _unsplit(items: list[Any], *, role: Any) -> str | list[str]:
    """Undo the ``list<str>`` quirk of ``ecgqa-test``.

    A human turn is always joined into one string (the prompt). A gpt turn stays a list of answer strings, but
    one that came back as single characters (``['y', 'e', 's']``) is joined into a one-element list.
    """
    strings = [str(x) for x in items]
    if role == HUMAN:
        return "".join(strings)
    if len(strings) > 1 and all(len(s) <= 1 for s in strings):
        return ["".join(strings)]
    return strings


def validate(record: Record, *, source: str = "record") -> None:
    """Check the ECGInstruct/ECGBench record rules; raise :class:`RecordError` naming the record and the field.

    Rules: ``id`` and ``image`` are non-empty strings, ``image`` is a relative path; ``conversations`` has an even
    number (>= 2) of turns alternating ``human``/``gpt`` from ``human``; human values are strings, gpt values
    strings or lists of strings; ``<image>`` occurs exactly once in the whole conversation, at the start of the
    first human turn as ``"<image>\\n"``; ``labels`` maps vocabulary names to lists of strings.
    """
    label = f"{source}: record {record.id!r}"
    if not isinstance(record.id, str) or not record.id.strip():
        raise RecordError(f"{label}: field 'id' must be a non-empty string")
    if not isinstance(record.image, str) or not record.image.strip():
        raise RecordError(f"{label}: field 'image' must be a non-empty string (a path relative to the image root)")
    if record.image.startswith(("/", "\\")) or (len(record.image) > 1 and record.image[1] == ":"):
        raise RecordError(f"{label}: field 'image' must be a relative path, got {record.image!r}")
    convs = record.conversations
    if not isinstance(convs, list) or len(convs) < 2:
        raise RecordError(f"{label}: field 'conversations' needs at least one human and one gpt turn")
    if len(convs) % 2:
        raise RecordError(f"{label}: field 'conversations' has {len(convs)} turns; it must end with a gpt turn")
    n_tokens = 0
    for i, turn in enumerate(convs):
        expected = ROLES[i % 2]
        if turn.role != expected:
            raise RecordError(f"{label}: field conversations[{i}].from is {turn.role!r}, expected {expected!r}")
        value = turn.value
        if isinstance(value, list):
            if turn.role == HUMAN:
                raise RecordError(f"{label}: field conversations[{i}].value must be a string")
            if not value or not all(isinstance(v, str) for v in value):
                raise RecordError(f"{label}: field conversations[{i}].value must be a non-empty list of strings")
            n_tokens += sum(v.count(IMAGE_TOKEN) for v in value)
            continue
        if not isinstance(value, str):
            raise RecordError(f"{label}: field conversations[{i}].value must be a string")
        if not value.strip():
            raise RecordError(f"{label}: field conversations[{i}].value is empty")
        n_tokens += value.count(IMAGE_TOKEN)
    first = convs[0].value
    if not (isinstance(first, str) and first.startswith(IMAGE_TOKEN + "\n")):
        raise RecordError(f"{label}: field conversations[0].value must start with '<image>\\n'")
    if n_tokens != 1:
        raise RecordError(f"{label}: field 'conversations' holds '<image>' {n_tokens} times; expected exactly once")
    if not strip_image_token(first):
        raise RecordError(f"{label}: field conversations[0].value has no text after '<image>'")
    if not isinstance(record.labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)
        for k, v in record.labels.items()
    ):
        raise RecordError(f"{label}: field 'labels' must map vocabulary names to lists of strings")
    if not isinstance(record.meta, Mapping):
        raise RecordError(f"{label}: field 'meta' must be an object")


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterable[tuple[str, Any]]:
    """(location, raw row) pairs of a JSON list, JSONL or parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.exists():
            raise RecordError(f"{path}: file not found")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise RecordError(f"{path}: cannot read parquet file: {exc}") from exc
        columns = [c for c in table.column_names if c != "image"]  # leave the PNG bytes unread
        for i, row in enumerate(table.select(columns).to_pylist()):
            yield f"{path}: row {i}", row
        return
    text = read_text_file(path, RecordError)
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}: item {i}", row


def load_records(path: str | os.PathLike[str], *, normalize_image_token: bool = False) -> list[Record]:
    """Read records from a JSON list (``.json``), JSON lines (``.jsonl``) or the HF parquet export (``.parquet``).

    Every record is validated; the first bad one raises :class:`RecordError` naming the file, the record id and
    the field. Duplicate ids are an error too (scorers look rows up by id).
    """
    path = Path(path)
    records: list[Record] = []
    seen: dict[str, str] = {}
    for where, row in _rows(path):
        record = Record.from_dict(row, source=where, normalize_image_token=normalize_image_token)
        if record.id in seen:
            raise RecordError(f"{where}: record {record.id!r}: field 'id' duplicates {seen[record.id]}")
        seen[record.id] = where
        records.append(record)
    return records


#: Names of the temporary files :func:`atomic_write_bytes` writes beside ``<name>`` (and of those ``mkstemp``
#: wrote before): ``.<name>.<8 random characters>.tmp``; group 1 is ``<name>``.
TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def dumps_records(records: Sequence[Record], *, jsonl: bool = False) -> bytes:
    """The bytes :func:`save_records` writes (UTF-8, deterministic)."""
    if jsonl:
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    return (json.dumps([r.to_dict() for r in records], ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def save_records(path: str | os.PathLike[str], records: Sequence[Record]) -> None:
    """Validate and write records atomically: a JSON list (``.json``) or JSON lines (``.jsonl``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".json", ".jsonl"}:
        raise RecordError(f"{path}: unsupported record file type {suffix!r}; use .json or .jsonl")
    seen: set[str] = set()
    for record in records:
        validate(record, source=str(path))
        if record.id in seen:
            raise RecordError(f"{path}: record {record.id!r}: field 'id' is not unique")
        seen.add(record.id)
    atomic_write_bytes(path, dumps_records(records, jsonl=suffix == ".jsonl"))


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _safe_join(image_root: Path, rel: str, *, where: str) -> Path:
    """``image_root / rel``, refusing absolute paths, ``..`` components and symlinks that leave the root."""
    if not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise RecordError(f"{where}: field 'image' {rel!r} is absolute; it must be relative to {image_root}")
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        raise RecordError(f"{where}: field 'image' {rel!r} contains '..'; it must stay inside {image_root}")
    root = image_root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise RecordError(f"{where}: field 'image' {rel!r} resolves to {target}, outside {root} (symlink?)")
    return target


def resolve_image(record: Record, image_root: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """The image file of ``record`` under ``image_root``.

    Raises :class:`RecordError` (naming the record and the path) when the path is absolute, contains ``..``,
    escapes the root through a symlink, or (``must_exist``) names no file.
    """
    where = f"record {record.id!r}"
    target = _safe_join(Path(image_root), record.image, where=where)
    if must_exist and not target.is_file():
        raise RecordError(f"{where}: field 'image': file {target} not found")
    return target


def default_image_root(train_file: str | os.PathLike[str]) -> Path:
    """The images of a training file: ``images/`` beside it where that folder exists (the corpus layout), else the
    file's own folder."""
    parent = Path(train_file).parent
    return parent / "images" if (parent / "images").is_dir() else parent


def open_image(record: Record, image_root: str | os.PathLike[str]) -> Any:
    """Open and fully decode the record's image as RGB (a ``PIL.Image.Image``).

    A missing, truncated or non-image file raises :class:`RecordError` naming the record and the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = resolve_image(record, image_root)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RecordError(f"record {record.id!r}: field 'image': {path} is not a readable image ({exc})") from None


def extract_parquet_images(path: str | os.PathLike[str], image_root: str | os.PathLike[str]) -> int:
    """Write the PNG bytes of an ECGBench parquet file to ``image_root/<image_path>``; return how many.

    Existing files are left alone. Paths are checked like :func:`resolve_image`.
    """
    import pyarrow.parquet as pq

    path, root = Path(path), Path(image_root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        table = pq.read_table(path, columns=["id", "image_path", "image"])
    except Exception as exc:
        raise RecordError(f"{path}: cannot read columns id, image_path, image: {exc}") from exc
    written = 0
    for i, row in enumerate(table.to_pylist()):
        where = f"{path}: row {i}: record {row.get('id')!r}"
        image = row.get("image")
        data = image.get("bytes") if isinstance(image, Mapping) else image
        if not isinstance(data, bytes | bytearray) or not data:
            raise RecordError(f"{where}: field 'image' holds no image bytes")
        target = _safe_join(root, str(row.get("image_path") or ""), where=where)
        if target.exists():
            continue
        atomic_write_bytes(target, bytes(data))
        written += 1
    return written


def write_png(path: str | os.PathLike[str], image: Any) -> None:
    """Save a ``PIL.Image`` as PNG atomically (temporary file + ``os.replace``); same pixels give the same bytes."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def image_is_valid(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a complete, decodable image file (used to resume interrupted builds)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:
        return False


__all__ = [
    "answer_is_target",
    "GPT",
    "HUMAN",
    "IMAGE_TOKEN",
    "Record",
    "RecordError",
    "TEMP_NAME",
    "Turn",
    "dumps_records",
    "extract_parquet_images",
    "image_is_valid",
    "load_records",
    "open_image",
    "resolve_image",
    "save_records",
    "strip_image_token",
    "validate",
    "with_image_token",
    "write_png",
]
