"""Conversations in the ECGInstruct format, as every model family reads them: turns checked and normalised, the
image marker removed from the first human turn, and a record's id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class ChatTurn:
    """One turn: ``role`` is ``"user"`` or ``"assistant"``; ``text`` has the ``<image>`` marker removed."""

    role: str
    text: str


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            return getattr(obj, name)
    return None


def record_id(record: Any) -> str:
    """The id of an ECGInstruct-style record (dict ``"id"`` or attribute ``.id``)."""
    rid = _field(record, "id")
    return "" if rid is None else str(rid)


def conversation_turns(record: Any) -> list[ChatTurn]:
    """The turns of a record in the ECGInstruct format, checked and normalised.

    Accepts a dict ``{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`` or an object with
    ``.conversations`` of turns with ``.role``/``.value``. A ``value`` given as a list (the ECG-QA export quirk)
    is joined. In a human turn the ``<image>`` marker is removed and the text stripped (LLaVA's
    ``preprocess_multimodal``); the image always belongs to the first human turn. Turns must alternate, starting
    with a human turn; anything else is an error (never silently skipped).
    """
    convs = _field(record, "conversations", "conversation")
    if not convs:
        raise ValueError(f"record {record_id(record)!r} has no conversations")
    turns: list[ChatTurn] = []
    for i, t in enumerate(convs):
        role = _field(t, "from", "role", "from_")
        value = _field(t, "value", "content")
        if role not in _ROLES:
            raise ValueError(f"record {record_id(record)!r} turn {i}: unknown role {role!r}")
        if isinstance(value, (list, tuple)):
            value = "".join(str(v) for v in value)
        if not isinstance(value, str):
            raise ValueError(f"record {record_id(record)!r} turn {i}: value must be a string, got {type(value)}")
        role = _ROLES[role]
        if role == "user" and IMAGE_MARKER in value:
            value = value.replace(IMAGE_MARKER, "").strip()
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"record {record_id(record)!r} turn {i}: expected a {expected} turn, got {role}")
        turns.append(ChatTurn(role, value))
    return turns


__all__ = ["IMAGE_MARKER", "ChatTurn", "conversation_turns", "record_id"]
