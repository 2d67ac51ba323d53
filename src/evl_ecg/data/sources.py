"""Where a record's clean signal comes from: the views of an ECG (:mod:`evl_ecg.ecg.views`) need it.

Signal and rendering views change the signal or the drawing, so they need the record's
:class:`~evl_ecg.ecg.signal.Ecg` and the :class:`~evl_ecg.ecg.render.RenderSpec` its page was drawn with (the *base
spec*); image views need only the page. A corpus folder says which it can give, by its ``manifest.json``:

* a synthetic corpus (``evl-ecg data synth``): every record is regenerated from the corpus settings and its id
  (:func:`evl_ecg.data.corpus.synth_record`, the build's own code path), and checked against the ``signal_seed``
  its record carries;
* a corpus built from a public database (``evl-ecg data build``): the record's source file is read again through
  the readers' registry (:func:`evl_ecg.ecg.readers.read_record`) from the database folder the manifest names, as
  the build read it (a CODE-15% exam by its index in the HDF5 file);
* anything else (ECGBench's own images, a hand-made bench, a database corpus whose database folder is gone): the
  pages alone, so **image views only**; :attr:`RecordSource.why` says why in one line.

``open_record_source(folder)`` takes the corpus folder, its ``bench/`` or ``val/`` folder, or a file inside one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RecordSource", "SourceError", "corpus_root", "open_record_source"]


class SourceError(ValueError):
    """A record whose clean signal cannot be had; one line naming the record and the reason."""


def corpus_root(path: str | os.PathLike[str]) -> Path:
    """The corpus folder of ``path``: the folder holding ``manifest.json`` among ``path`` (or its folder, for a
    file), and its parent (``bench/``, ``val/``); ``path``'s own folder when none holds one."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    for candidate in (folder, folder.parent):
        if (candidate / "manifest.json").is_file():
            return candidate
    return folder


@dataclass
class RecordSource:
    """What a corpus can give of a record: its clean signal and base spec (``signals``), or its page only.

    Attributes:
        kind: ``"synthetic"``, ``"database"`` or ``"images"``.
        root: the corpus folder.
        why: for ``"images"``, one line saying why signal and rendering views cannot be had.
    """

    kind: str
    root: Path
    why: str = ""
    _settings: Any = field(default=None, repr=False)
    _entries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def signals(self) -> bool:
        """Whether the records' signals can be had (signal and rendering views); else image views only."""
        return self.kind != "images"

    def describe(self) -> str:
        """One line for a command's output: where the signals come from, or why there are none."""
        if self.kind == "synthetic":
            return f"{self.root}: synthetic corpus, signals regenerated from its settings (every view family)"
        if self.kind == "database":
            return f"{self.root}: database corpus, signals read from {self._settings['source']} (every view family)"
        return f"{self.root}: image views only ({self.why})"

    def clean(self, record: Any) -> tuple[Any, Any]:
        """``(ecg, base_spec)`` of ``record`` (a :class:`~evl_ecg.data.records.Record` or its dict), such that
        ``render(ecg, base_spec)`` is its page without augmentation; a :class:`SourceError` naming the record where
        it cannot be had (this source has no signals, the id is not the corpus's, the file cannot be read)."""
        rid = str(record.get("id") if isinstance(record, dict) else record.id)
        if self.kind == "synthetic":
            return self._synthetic(record, rid)
        if self.kind == "database":
            return self._database(rid)
        raise SourceError(f"record {rid!r}: no signal to view ({self.why}): image views only")

    def _synthetic(self, record: Any, rid: str) -> tuple[Any, Any]:
        from evl_ecg.data.corpus import parse_synth_record_id, synth_record

        image = record.get("image") if isinstance(record, dict) else getattr(record, "image", None)
        try:
            try:
                split, index = parse_synth_record_id(rid)
            except ValueError:  # a copy of a record under another id (the demo's `<id>~2`) names it by its page
                if not isinstance(image, str):
                    raise
                split, index = parse_synth_record_id(Path(image).stem)
            item = synth_record(self._settings, split, index)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise SourceError(f"{self.root}: record {rid!r}: cannot regenerate its signal ({exc})") from None
        meta = (record.get("meta") if isinstance(record, dict) else getattr(record, "meta", None)) or {}
        stored = meta.get("signal_seed")
        if stored is not None and int(stored) != item.signal_seed:
            raise SourceError(
                f"{self.root}: record {rid!r}: meta.signal_seed {stored} but the corpus settings give "
                f"{item.signal_seed}: the record is not this corpus's"
            )
        return item.ecg, item.base_spec

    def _database(self, rid: str) -> tuple[Any, Any]:
        from evl_ecg.ecg.readers import format_of, read_record
        from evl_ecg.ecg.render import RenderSpec
        from evl_ecg.ecg.signal import EcgError

        entry = self._entries.get(rid)
        if entry is None:
            raise SourceError(f"{self.root / 'manifest.json'}: records: no entry for record {rid!r}")
        path = Path(self._settings["source"]) / str(entry.get("source", ""))
        fmt = format_of(path)
        index = (entry.get("provenance") or {}).get("index") if fmt is not None and fmt.needs_index else None
        try:
            ecg = read_record(path, None if index is None else int(index))
        except (EcgError, OSError, ValueError, KeyError) as exc:
            raise SourceError(f"record {rid!r}: cannot read its source ({str(exc).splitlines()[0]})") from None
        s = self._settings
        size = tuple(s["size"]) if s.get("size") is not None else None
        return ecg, RenderSpec(layout=s.get("layout", "3x4"), size=size, dpi=s.get("dpi"))


def _images_only(root: Path, why: str) -> RecordSource:
    return RecordSource("images", root, why)


def open_record_source(path: str | os.PathLike[str]) -> RecordSource:
    """The :class:`RecordSource` of the corpus holding ``path`` (the corpus folder, its ``bench/`` or ``val/``
    folder, or a file in one; :func:`corpus_root`). Never raises for a folder without signals: it is an
    ``"images"`` source whose ``why`` says so."""
    from evl_ecg.data.corpus import CorpusError, read_corpus_settings

    root = corpus_root(path)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return _images_only(root, "no corpus manifest.json beside the bench: its pages carry no signal")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _images_only(root, f"{manifest}: unreadable ({getattr(exc, 'strerror', None) or exc})")
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if isinstance(fmt, str) and fmt.startswith("evl-ecg synthetic corpus"):
        try:
            settings = read_corpus_settings(manifest)
        except CorpusError as exc:
            return _images_only(root, str(exc))
        return RecordSource("synthetic", root, _settings=settings)
    if isinstance(fmt, str) and fmt.startswith("evl-ecg database corpus"):
        settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
        source = settings.get("source") or doc.get("source")
        if not source or not Path(source).is_dir():
            return _images_only(root, f"{manifest}: its database folder {source} is not here to read the signals from")
        entries = {str(e["id"]): e for e in doc.get("records", []) if isinstance(e, dict) and "id" in e}
        return RecordSource("database", root, _settings={**settings, "source": source}, _entries=entries)
    return _images_only(root, f"{manifest}: not the manifest of an evl-ecg corpus")
