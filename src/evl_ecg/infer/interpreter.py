r"""One ECG in, an interpretation out: :class:`Interpreter` wraps a trained model folder for single-ECG use.

``Interpreter.from_pretrained(DIR).predict(x)`` takes a record path (WFDB, DICOM, ``file.hdf5:exam_id``), an image
path, an :class:`~evl_ecg.ecg.signal.Ecg`, a PIL image or an :class:`~evl_ecg.infer.inputs.EcgInput`, and returns a
:class:`Prediction`:

* signals are rendered exactly as the model's training images were (:func:`resolve_render_spec`: the settings recorded
  in the model's ``card.json``, else the training corpus's ``manifest.json``, else the renderer's default, with a
  warning; augmentation is always off); images are used as they are, with a warning when their size or aspect is far
  from the training images';
* the question (:mod:`evl_ecg.infer.questions`) is put in the model's chat template and answered greedily;
* the answer's labels are parsed with the strict scorer's rules (:func:`evl_ecg.eval.parsing.strict_labels`), and
  with PULSE's published substring rule for comparison;
* each label's probability comes from the teacher-forced likelihood of the answer naming that label alone
  (:mod:`evl_ecg.eval.likelihood`, ``softmax`` normalisation over the label answers and the corpus's no-label
  answers):

  .. math::

      p_c(x) = \frac{\exp \ell(y_c \mid x)}
                    {\sum_{c'} \exp \ell(y_{c'} \mid x) + \sum_{y \in N} \exp \ell(y \mid x)}

  These are the model's own probabilities, **uncalibrated** unless the card records a calibration (a temperature
  ``T`` fitted on held-out data: :math:`\ell / T` in place of :math:`\ell`).

Every :class:`Prediction` carries :data:`DISCLAIMER` and the model card's path. The object is also where other uses of
a trained model belong: :meth:`Interpreter.embed` gives an ECG's mean visual token.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evl_ecg.ecg.signal import Ecg
from evl_ecg.infer.inputs import EcgInput, image_warnings, read_input
from evl_ecg.infer.questions import QUESTIONS, Question, get_question
from evl_ecg.models.card import DISCLAIMER  # said by every output (CLI text, JSON, the page)

__all__ = [
    "DISCLAIMER",
    "Interpreter",
    "ModelCard",
    "Prediction",
    "parse_render_spec",
    "resolve_render_spec",
]


PROBABILITY_METHOD = (
    "softmax of the teacher-forced log-likelihoods of the answers naming one label each and of the no-label "
    "answers (evl_ecg.eval.likelihood, normalization 'softmax')"
)

_RENDER_KEYS = ("layout", "size", "dpi")


# ---- the model card ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCard:
    """What the interpreter needs of a model's card: its name and path, the training facts, the calibration."""

    name: str
    path: str
    facts: dict[str, Any]

    @property
    def calibration(self) -> dict[str, Any] | None:
        cal = self.facts.get("calibration")
        return cal if isinstance(cal, dict) and cal.get("temperature") else None

    @classmethod
    def read(cls, model_dir: Path) -> ModelCard:
        card_json, readme = model_dir / "card.json", model_dir / "README.md"
        doc: dict[str, Any] = {}
        if card_json.is_file():
            try:
                doc = json.loads(card_json.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{card_json}: the model card's facts are not readable JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{card_json}: the model card's facts must be a JSON object")
        path = readme if readme.is_file() else card_json if card_json.is_file() else None
        shown = str(path) if path is not None else f"none ({model_dir} has no README.md or card.json)"
        facts = doc.get("facts") if isinstance(doc.get("facts"), dict) else {}
        return cls(name=str(doc.get("name") or model_dir.name), path=shown, facts=facts)


# ---- render settings ---------------------------------------------------------------------------------------------
def parse_render_spec(text: str | dict[str, Any]) -> dict[str, Any]:
    """``"layout=3x4,size=512x384"``, ``"dpi=200"``, a JSON object or the path of a JSON file -> render settings
    (``layout``, ``size`` [w, h], ``dpi``); a ``ValueError`` naming what is wrong otherwise."""
    if isinstance(text, dict):
        doc = dict(text)
    else:
        raw = text.strip()
        if raw.startswith("{"):
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"--render-spec: not valid JSON ({exc})") from None
        elif raw.endswith(".json") and Path(raw).is_file():
            try:
                doc = json.loads(Path(raw).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{raw}: not valid JSON ({exc})") from None
        else:
            doc = {}
            for part in filter(None, (p.strip() for p in raw.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"--render-spec: {part!r} is not KEY=VALUE (keys: {', '.join(_RENDER_KEYS)})")
                doc[key.strip()] = value.strip()
    if not isinstance(doc, dict):
        raise ValueError("--render-spec: must be a JSON object or KEY=VALUE pairs")
    unknown = sorted(set(doc) - set(_RENDER_KEYS) - {"augment", "train_augmented", "source"})
    if unknown:
        raise ValueError(f"--render-spec: unknown key(s) {', '.join(unknown)}; known: {', '.join(_RENDER_KEYS)}")
    out: dict[str, Any] = {}
    if doc.get("layout") is not None:
        out["layout"] = str(doc["layout"])
    size = doc.get("size")
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            size = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--render-spec: size must be WIDTHxHEIGHT in px, got {doc['size']!r}") from None
    if size is not None:
        if not (isinstance(size, list | tuple) and len(size) == 2):
            raise ValueError(f"--render-spec: size must be [width, height], got {size!r}")
        out["size"] = [int(size[0]), int(size[1])]
    if doc.get("dpi") not in (None, "", "none", "None"):
        try:
            out["dpi"] = float(doc["dpi"])
        except (TypeError, ValueError):
            raise ValueError(f"--render-spec: dpi must be a number, got {doc['dpi']!r}") from None
    _spec_from(out)  # validate
    return out


def _spec_from(settings: dict[str, Any]) -> Any:
    """A :class:`~evl_ecg.ecg.render.RenderSpec` from settings; a size wins over a dpi when both are given (the
    corpus records both; the pixels are what the model saw)."""
    from evl_ecg.ecg.render import RenderSpec

    kwargs: dict[str, Any] = {}
    if settings.get("layout"):
        kwargs["layout"] = settings["layout"]
    if settings.get("size"):
        kwargs["size"] = tuple(settings["size"])
    elif settings.get("dpi"):
        kwargs.update(size=None, dpi=float(settings["dpi"]))
    try:
        return RenderSpec(**kwargs)
    except ValueError as exc:
        raise ValueError(f"render settings {settings}: {exc}") from None


def _manifest_settings(train_file: Any) -> dict[str, Any] | None:
    if not isinstance(train_file, str) or not train_file:
        return None
    manifest = Path(train_file).parent / "manifest.json"
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    return settings if isinstance(settings, dict) else None


def resolve_render_spec(card: ModelCard, override: str | dict[str, Any] | None = None) -> tuple[Any, str, list[str]]:
    """``(RenderSpec, where it came from, warnings)`` for signals given to this model.

    Order: ``override`` (``--render-spec``); ``card.json``'s ``facts.render`` (recorded at training time); the
    ``manifest.json`` beside the card's training file; the renderer's default (a warning says so).
    """
    if override is not None:
        return _spec_from(parse_render_spec(override)), "--render-spec", []
    recorded = card.facts.get("render")
    if isinstance(recorded, dict) and (recorded.get("size") or recorded.get("dpi")):
        return _spec_from(recorded), "card.json (facts.render)", []
    settings = _manifest_settings(card.facts.get("train_file"))
    if settings is not None:
        picked = {k: settings.get(k) for k in _RENDER_KEYS}
        return _spec_from(picked), f"{Path(card.facts['train_file']).parent / 'manifest.json'} (training corpus)", []
    spec = _spec_from({})
    note = (
        f"the model card records no render settings; signals are drawn with the renderer's default "
        f"({spec.layout}, {spec.size[0]}x{spec.size[1]} px, the evl-ecg corpus default); pass --render-spec if the "
        "model was trained on other images"
    )
    return spec, "renderer default", [note]


def spec_dict(spec: Any) -> dict[str, Any]:
    return {"layout": spec.layout, "size": list(spec.size) if spec.size else None, "dpi": spec.dpi, "augment": False}


def expected_size(spec: Any) -> tuple[int, int]:
    from evl_ecg.ecg.render import geometry

    geom = geometry(spec)
    return geom.width, geom.height


# ---- the typed result ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """The interpretation of one ECG.

    Attributes:
        source: the input as named (a path, ``file.hdf5:exam_id``, ``"<image>"``).
        kind: ``wfdb``, ``dicom``, ``code15``, ``image`` or ``ecg`` (an ``Ecg`` object).
        question: the question's key; ``prompt`` its text.
        answer: the model's greedy answer.
        labels: per vocabulary, the labels the answer names by the strict scorer's rules (one vocabulary for a label
            question, all three for a free interpretation).
        labels_pulse: the labels PULSE's published scorer would read (case-sensitive substrings; label questions).
        probabilities: each label's probability (:data:`PROBABILITY_METHOD`); empty for a free interpretation.
        none_probability: the probability of the no-label answers (``None`` without probabilities).
        calibrated: whether the probabilities were calibrated (the card records a temperature); otherwise they are
            the model's raw likelihood reading.
        image_size: ``(width, height)`` of the image the model saw.
        render: the render settings used (``None`` for an image input) and ``render_source`` where they came from.
        warnings: what the user should know (render settings guessed, image far from the training images, ...).
        model, model_card, dtype: the model folder, its card, its weights' dtype.
        disclaimer: :data:`DISCLAIMER`.
        seconds: wall time of this prediction (its share of a batch).
    """

    source: str
    kind: str
    question: str
    prompt: str
    answer: str
    labels: dict[str, list[str]]
    labels_pulse: list[str]
    probabilities: dict[str, float]
    none_probability: float | None
    calibrated: bool
    probability_method: str | None
    image_size: tuple[int, int]
    render: dict[str, Any] | None
    render_source: str | None
    warnings: tuple[str, ...]
    model: str
    model_card: str
    dtype: str
    disclaimer: str = DISCLAIMER
    seconds: float = 0.0
    image: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the image is left out)."""
        doc = asdict(replace_image(self))
        doc.pop("image", None)
        doc["image_size"] = list(self.image_size)
        doc["warnings"] = list(self.warnings)
        doc["probabilities_note"] = self.probabilities_note
        return doc

    @property
    def probabilities_note(self) -> str:
        if not self.probabilities:
            return "no label probabilities for a free interpretation; ask a label question (ptbxl, cpsc, code15)"
        return "calibrated" if self.calibrated else "uncalibrated: the model's raw likelihood reading, not a risk"

    def text(self) -> str:
        """A human-readable block (what ``evl-ecg predict`` prints)."""
        lines = [f"{self.source}  [{self.kind}, {self.image_size[0]}x{self.image_size[1]} px]"]
        lines.append(f"question ({self.question}): {self.prompt}")
        lines.append(f"answer: {self.answer}")
        for vocab, labels in self.labels.items():
            lines.append(f"labels ({vocab}, strict scorer rules): {', '.join(labels) if labels else '(none)'}")
        if self.probabilities:
            tag = "calibrated" if self.calibrated else "uncalibrated"
            probs = ", ".join(f"{k} {v:.3f}" for k, v in self.probabilities.items())
            lines.append(f"label probabilities ({tag}): {probs}; none of them {self.none_probability:.3f}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append(f"model: {self.model} ({self.dtype}); model card: {self.model_card}")
        lines.append(self.disclaimer)
        return "\n".join(lines)


def replace_image(pred: Prediction) -> Prediction:
    from dataclasses import replace

    return replace(pred, image=None)


# ---- the interpreter ----------------------------------------------------------------------------------------------
class Interpreter:
    """A trained model folder ready to read single ECGs. Thread-safe: model calls are serialised by a lock."""

    def __init__(
        self,
        adapter: Any,
        model_dir: str | os.PathLike[str],
        card: ModelCard,
        render_spec: Any,
        render_source: str,
        notes: Sequence[str] = (),
    ) -> None:
        self.adapter = adapter
        self.model_dir = Path(model_dir)
        self.card = card
        self.render_spec = render_spec
        self.render_source = render_source
        self.notes = tuple(notes)
        self._lock = threading.Lock()
        self.adapter.model.eval()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike[str],
        *,
        render_spec: str | dict[str, Any] | None = None,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> Interpreter:
        """Load a local model folder (any family :func:`evl_ecg.models.load_adapter` reads, exported ones included).

        ``render_spec`` overrides the card's render settings (:func:`parse_render_spec`).
        """
        from evl_ecg.quiet import library_noise_quieted

        with library_noise_quieted():  # torchao's load lines: transformers imports it whenever it is installed
            from transformers.utils import logging as hf_logging

            from evl_ecg.models import load_adapter

        root = Path(model_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such model folder (nothing is downloaded; pass a local path)")
        card = ModelCard.read(root)
        spec, source, notes = resolve_render_spec(card, render_spec)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: one model, nothing to follow
        try:
            with warnings.catch_warnings(), library_noise_quieted():
                warnings.simplefilter("ignore")
                adapter = load_adapter(root, **kwargs)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if device is not None:
            adapter.model.to(device)
        return cls(adapter, root, card, spec, source, notes)

    # ---- properties
    @property
    def dtype(self) -> str:
        export = self.card.facts.get("export")
        if isinstance(export, dict) and export.get("dtype"):
            return str(export["dtype"])
        return str(next(self.adapter.model.parameters()).dtype).removeprefix("torch.")

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        return next(self.adapter.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """The model, its card, its render settings and the disclaimer (``GET /health``, ``predict --json``)."""
        return {
            "model": str(self.model_dir),
            "name": self.card.name,
            "family": self.family,
            "dtype": self.dtype,
            "model_card": self.card.path,
            "render": spec_dict(self.render_spec),
            "render_source": self.render_source,
            "calibrated": self.card.calibration is not None,
            "questions": {k: q.title for k, q in QUESTIONS.items()},
            "disclaimer": DISCLAIMER,
        }

    # ---- inputs
    def to_input(self, x: Any) -> EcgInput:
        """Anything :meth:`predict` accepts -> :class:`EcgInput`."""
        if isinstance(x, EcgInput):
            return x
        if isinstance(x, Ecg):
            return EcgInput(x.record_id or "<ecg>", "ecg", ecg=x)
        if isinstance(x, str | os.PathLike):
            return read_input(x)
        if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image
            return EcgInput("<image>", "image", image=x.convert("RGB"))
        raise TypeError(f"cannot interpret a {type(x).__name__}; give a path, an Ecg, a PIL image or an EcgInput")

    def image_of(self, item: EcgInput) -> tuple[Any, list[str]]:
        """The image the model sees for ``item`` and the warnings about it: a signal rendered with the model's render
        settings (augmentation off), an image as given."""
        from evl_ecg.ecg.render import render

        if item.is_image:
            return item.image, image_warnings(item.image.size, expected_size(self.render_spec))
        assert item.ecg is not None
        notes = list(self.notes)
        if item.ecg.duration < self.render_spec.duration_s - 1e-6:
            notes.append(
                f"the record lasts {item.ecg.duration:.1f} s; the page shows {self.render_spec.duration_s:g} s, "
                "so part of it stays empty"
            )
        return render(item.ecg, self.render_spec), notes

    # ---- the model
    def _record(self, question: Question, answer: str | None = None) -> dict[str, Any]:
        convs = [{"from": "human", "value": "<image>\n" + question.prompt}]
        if answer is not None:
            convs.append({"from": "gpt", "value": answer})
        return {"id": "input", "image": "input.png", "conversations": convs}

    def _generate(self, images: Sequence[Any], question: Question, max_new_tokens: int) -> list[str]:
        from evl_ecg.eval.generate import _to_device

        samples = [self.adapter.prompt_inputs(self._record(question), im) for im in images]
        batch = _to_device(self.adapter.collate(samples, padding_side="left"), self.device)
        return [t.strip() for t in self.adapter.generate(batch, max_new_tokens=max_new_tokens)]

    def _probabilities(self, image: Any, question: Question) -> tuple[dict[str, float], float]:
        from evl_ecg.eval.likelihood import answer_logliks, format_answer

        labels = question.labels
        candidates = [format_answer([c], question.vocabulary, question.answer_style) for c in labels]
        candidates += list(question.no_label_answers)
        processed = self.adapter.process_image(image)  # once for all the candidate answers
        samples = [
            self.adapter.encode(self._record(question, a), image, train=True, processed=processed) for a in candidates
        ]
        total, _count = answer_logliks(self.adapter, samples)
        total = total.double()
        cal = self.card.calibration
        if cal is not None:
            total = total / float(cal["temperature"])
        probs = torch.softmax(total, dim=0).numpy()
        return {c: float(p) for c, p in zip(labels, probs[: len(labels)], strict=True)}, float(
            probs[len(labels) :].sum()
        )

    @staticmethod
    def parse_answer(answer: str, question: Question) -> tuple[dict[str, list[str]], list[str]]:
        """``(strict labels per vocabulary, PULSE labels)`` of an answer to ``question``."""
        from evl_ecg.eval.parsing import pulse_code15_pred, pulse_labels, strict_labels

        if question.vocabulary is None:
            subsets = {"ptbxl": "ptb-test", "cpsc": "cpsc-test", "code15": "code15-test"}
            return {v: strict_labels(answer, s).labels for v, s in subsets.items()}, []
        strict = strict_labels(answer, question.subset).labels
        if question.vocabulary == "code15":
            pulse = pulse_code15_pred(answer)[0]
        else:
            pulse = pulse_labels(answer, question.labels)
        return {question.vocabulary: strict}, pulse

    def predict(
        self,
        x: Any,
        question: str = "ptbxl",
        *,
        max_new_tokens: int | None = None,
        probabilities: bool = True,
    ) -> Prediction:
        """Interpret one ECG (see the module docstring); raises the input's one-line error for bad input."""
        return self.predict_batch([x], question, max_new_tokens=max_new_tokens, probabilities=probabilities)[0]

    def predict_batch(
        self,
        xs: Sequence[Any],
        question: str = "ptbxl",
        *,
        max_new_tokens: int | None = None,
        probabilities: bool = True,
    ) -> list[Prediction]:
        """Interpret several ECGs with one generation batch (left padding) and their label likelihoods."""
        q = get_question(question)
        items = [self.to_input(x) for x in xs]
        prepared = [self.image_of(item) for item in items]
        images = [im for im, _ in prepared]
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            answers = self._generate(images, q, max_new_tokens or q.max_new_tokens) if images else []
            probs = [self._probabilities(im, q) if probabilities and q.vocabulary else ({}, None) for im in images]
        share = (time.perf_counter() - t0) / max(1, len(items))
        out = []
        for item, (image, notes), answer, (p, none_p) in zip(items, prepared, answers, probs, strict=True):
            labels, pulse = self.parse_answer(answer, q)
            out.append(
                Prediction(
                    source=item.source,
                    kind=item.kind,
                    question=q.key,
                    prompt=q.prompt,
                    answer=answer,
                    labels=labels,
                    labels_pulse=pulse,
                    probabilities=p,
                    none_probability=none_p,
                    calibrated=self.card.calibration is not None and bool(p),
                    probability_method=PROBABILITY_METHOD if p else None,
                    image_size=tuple(image.size),
                    render=None if item.is_image else spec_dict(self.render_spec),
                    render_source=None if item.is_image else self.render_source,
                    warnings=tuple(notes),
                    model=str(self.model_dir),
                    model_card=self.card.path,
                    dtype=self.dtype,
                    seconds=share,
                    image=image,
                )
            )
        return out

    def embed(self, x: Any) -> np.ndarray:
        """``D``: the mean of the visual tokens the language model receives for this ECG (its image only)."""
        item = self.to_input(x)
        image, _ = self.image_of(item)
        from evl_ecg.eval.generate import _to_device

        q = QUESTIONS["ptbxl"]
        with self._lock, torch.inference_mode():
            batch = _to_device(self.adapter.collate([self.adapter.prompt_inputs(self._record(q), image)]), self.device)
            out = self.adapter.forward(batch)
        mask = out.visual_mask[0]
        return out.visual[0][mask].float().mean(0).cpu().numpy()
