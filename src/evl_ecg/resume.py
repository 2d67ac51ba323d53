"""One resume rule for every output a command adds to over several runs: a key of the settings that change it.

A resumable command (``eval run``, ``predict --out FILE.jsonl``, ``embed``, ``study``; later the teacher's pool
answers) records, beside its output, a **resume key**: the command and every setting that can change an answer or a
score it writes (the model's fingerprint, generation length and mode, batch size, render settings, the digest of the
input files, ...). A rerun into the same output compares its own key with the recorded one before it writes anything:

* no output yet: the key is written (or replaced) and the command starts;
* the same command and settings: the command resumes;
* another command, or a setting with another value: refused with one line naming the output, the setting and both
  values (:class:`ResumeKeyError`), unless the user asked to start again (``--fresh``): then the command removes its
  own earlier output and starts afresh. Another command's output is never removed;
* output without a key (written before keys existed, or by something else): its settings are unknown, so it is
  refused too, unless ``--fresh``.

``settings`` must all match. ``parts`` are settings of one part of the output (one bench subset's file digest): they
are compared where both keys have the part, and a new part is added. ``info`` is recorded, never compared. A setting
that a key written by an older version lacks is taken with a warning (that version did not record it). A refusal
names the first setting that differs in the order the command lists them (the model first, where it is one) and
counts the others.

The key is a small JSON file (:func:`key_file`: ``resume-key.json`` inside an output folder, ``<file>.resume-key.json``
beside an output file), or a document the caller stores inside its output (``embed`` keeps it in the safetensors
metadata) and passes as ``stored``. See docs/hostile.md, "The resume rule".
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evl_ecg.files import sha256_file

logger = logging.getLogger(__name__)

KEY_FORMAT = "evl-ecg/resume-key"
FOLDER_KEY = "resume-key.json"
FILE_KEY_SUFFIX = ".resume-key.json"
_UNREAD = object()


class ResumeKeyError(ValueError):
    """An output that cannot be resumed with these settings; one line naming it, the setting and both values."""


def key_file(out: str | os.PathLike[str], *, folder: bool) -> Path:
    """Where the key of ``out`` lives: ``out/resume-key.json`` for a folder, ``out.resume-key.json`` for a file."""
    out = Path(out)
    return out / FOLDER_KEY if folder else out.with_name(out.name + FILE_KEY_SUFFIX)


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<16 hex>`` of a file's bytes (an input whose content the output depends on)."""
    return "sha256:" + sha256_file(path)[:16]


def show(value: Any, limit: int = 80) -> str:
    """A setting's value as the message shows it: strings bare, others as compact JSON, cut at ``limit``."""
    if value is None:
        text = "none"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class ResumeKey:
    """The key of one output (see the module docstring).

    Attributes:
        out: the output (a folder or a file), as the messages name it.
        command: the command that writes it (``"eval run"``); another command's output is refused.
        settings: every setting that can change what is written; each must match on resume.
        parts: per-part settings, compared where both keys hold the part, merged otherwise.
        info: recorded, never compared.
        folder: whether ``out`` is a folder (where the key file goes: :func:`key_file`).
        fresh_option: the option that starts again (named in the refusal), or ``None`` where there is none.
        path: the key file (default: :func:`key_file`); ``out`` itself for a key kept inside the output.
    """

    out: Path
    command: str
    settings: Mapping[str, Any]
    parts: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    folder: bool = True
    fresh_option: str | None = "--fresh"
    path: Path | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        # values made JSON-like (as they will be read back); the settings keep the caller's order, the most telling
        # first (the model, where it is one), which is the order a refusal names them in
        self.settings = {k: _jsonable(v) for k, v in dict(self.settings).items()}
        self.parts = _jsonable(dict(self.parts))
        self.info = _jsonable(dict(self.info))
        if self.path is None:
            self.path = key_file(self.out, folder=self.folder)
        self._stored: dict[str, Any] | None = None

    # ---- the document ---------------------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The key as written: the stored parts this run did not touch are kept."""
        parts = {**((self._stored or {}).get("parts") or {}), **self.parts}
        return {
            "format": KEY_FORMAT,
            "command": self.command,
            "settings": dict(self.settings),
            "parts": dict(sorted(parts.items())),
            "info": dict(self.info),
        }

    def read(self, legacy: Callable[[Any], dict[str, Any] | None] | None = None) -> dict[str, Any] | None:
        """The key recorded in :attr:`path` (``None`` when there is none); an unreadable one raises
        :class:`ResumeKeyError` naming it. ``legacy`` turns a document of an older layout into a key (or ``None``)."""
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ResumeKeyError(f"{self.path}: cannot read the resume key ({_why(exc)}); {self._advice()}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResumeKeyError(f"{self.path}: unreadable resume key ({exc.msg}); {self._advice()}") from None
        return self.parse(doc, where=self.path, legacy=legacy)

    def parse(
        self, doc: Any, *, where: Path | str, legacy: Callable[[Any], dict[str, Any] | None] | None = None
    ) -> dict[str, Any]:
        """A stored key document checked for its layout (``legacy`` converts an older one)."""
        if isinstance(doc, dict) and doc.get("format") != KEY_FORMAT and legacy is not None:
            doc = legacy(doc)
        if not isinstance(doc, dict) or doc.get("format", KEY_FORMAT) != KEY_FORMAT:
            raise ResumeKeyError(f"{where}: not an evl-ecg resume key; {self._advice()}")
        if not isinstance(doc.get("command"), str) or not isinstance(doc.get("settings"), dict):
            raise ResumeKeyError(f"{where}: resume key without its command or settings; {self._advice()}")
        return doc

    # ---- the rule -------------------------------------------------------------------------------------------
    def differences(self, stored: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(setting, recorded, now)`` for each setting that differs, in the order the command lists its settings
        (the model first, where it is one), then each common part that differs, in name order."""
        old, old_parts = stored.get("settings") or {}, stored.get("parts") or {}
        diffs = [(k, old[k], v) for k, v in self.settings.items() if k in old and old[k] != v]
        diffs += [(k, old_parts[k], v) for k, v in sorted(self.parts.items()) if k in old_parts and old_parts[k] != v]
        return diffs

    def check(
        self,
        *,
        has_output: bool,
        fresh: bool = False,
        clear: Callable[[], None] | None = None,
        stored: Any = _UNREAD,
        legacy: Callable[[Any], dict[str, Any] | None] | None = None,
    ) -> str:
        """Apply the rule; ``"new"``, ``"resumed"`` or ``"fresh"``. Nothing is written (:meth:`write` does that
        once the caller's own checks pass), except that ``fresh`` calls ``clear`` to remove the earlier output.

        Args:
            has_output: whether ``out`` already holds what this command writes.
            fresh: the user asked to start again (``--fresh``).
            clear: removes this command's earlier output (called only with ``fresh``).
            stored: the recorded key when the caller keeps it elsewhere (``None``: none); default: :meth:`read`.
            legacy: see :meth:`read`.
        """
        doc = self.read(legacy) if stored is _UNREAD else stored
        if doc is not None and stored is not _UNREAD:
            doc = self.parse(doc, where=self.out, legacy=legacy)
        if doc is not None and doc["command"] != self.command:
            raise ResumeKeyError(
                f"{self.out}: holds the output of `evl-ecg {doc['command']}`, not of `evl-ecg {self.command}`; "
                "use another --out"
            )
        if fresh:
            if clear is not None:
                clear()
            self._stored = None
            return "fresh"
        if doc is None:
            if has_output:
                where = f" ({self.path.name})" if self.path != self.out else ""
                raise ResumeKeyError(
                    f"{self.out}: holds output without a resume key{where}, so the settings it was written with are "
                    f"unknown; {self._advice()}"
                )
            return "new"
        if not has_output:  # a key with nothing written under it yet: nothing to mix, take the new settings
            self._stored = None
            return "new"
        diffs = self.differences(doc)
        if diffs:
            name, old, new = diffs[0]
            verb = "differs" if len(diffs) == 2 else "differ"
            more = f" ({len(diffs) - 1} more {verb}: {', '.join(d[0] for d in diffs[1:4])})" if len(diffs) > 1 else ""
            raise ResumeKeyError(
                f"{self.out}: was written with {name}={show(old)}, now {show(new)}{more}; {self._advice()}"
            )
        for name in sorted(set(self.settings) - set(doc["settings"])):
            logger.warning(
                "%s: %s was not recorded when it was written (an older evl-ecg); taking %s=%s",
                self.out,
                name,
                name,
                show(self.settings[name]),
            )
        self._stored = doc
        return "resumed"

    def write(self) -> None:
        """Record the key (atomically; for a key kept elsewhere, use :meth:`document`)."""
        from evl_ecg.files import atomic_write_bytes

        assert self.path is not None
        doc = self.document()
        atomic_write_bytes(self.path, (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode("utf-8"))
        self._stored = doc

    def ensure(self, *, has_output: bool, fresh: bool = False, clear: Callable[[], None] | None = None, **kw) -> str:
        """:meth:`check`, then :meth:`write`."""
        state = self.check(has_output=has_output, fresh=fresh, clear=clear, **kw)
        self.write()
        return state

    def _advice(self) -> str:
        if self.fresh_option is None:
            return "use another --out"
        return f"use {self.fresh_option} to start again, or another --out"


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


__all__ = ["FOLDER_KEY", "KEY_FORMAT", "ResumeKey", "ResumeKeyError", "file_digest", "key_file", "show"]
