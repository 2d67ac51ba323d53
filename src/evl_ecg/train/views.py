"""The view policy of training: a fresh view of each record at every pass, the same for both models.

With ``views`` set (``train sft``, ``distill``; off by default), each sample's image is, with probability ``p``, one
view of the record (:mod:`evl_ecg.ecg.views`), named from ``names`` at a severity drawn uniformly in ``severity``;
otherwise the stored page. The draw comes from ``(training seed, record id, epoch)`` alone, so that a run is
deterministic (the same config and seed give the same images, hence the same weights) and every pass over a record
is a new view of it. The view is drawn once per sample, in the dataset, before either model encodes it: in
distillation the teacher and the student see the same image (:class:`~evl_ecg.train.paired.PairedDataset` encodes
one image for both), which is why a view policy needs the live teacher and is refused together with a
teacher-output cache (whose outputs are of the stored pages).

Image views (rotation, blur, JPEG, ...) apply to the record's stored page (:func:`evl_ecg.ecg.views.image_view`);
signal and rendering views need the record's signal and base spec, which the training corpus gives where its
``manifest.json`` says how (:mod:`evl_ecg.data.sources`: a synthetic corpus regenerates it, a database corpus reads
its file again); a corpus without signals refuses them, naming the views, before any training.

Config (YAML or ``--set views={...}``; ``--views NAMES`` sets ``names``)::

    views:
      names: [rotation, blur, jpeg]   # view names or families (signal, rendering, image)
      severity: [0.2, 1.0]            # uniform in this range (one number: that severity)
      p: 0.5                          # probability that a sample is a view, not the stored page
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import TrainerCallback

from evl_ecg.ecg.views import FAMILIES, VIEWS, apply_view, image_view, view_names

#: The policy's defaults where the config leaves them out.
DEFAULT_SEVERITY = (0.2, 1.0)
DEFAULT_P = 0.5
KEYS = ("names", "severity", "p")


@dataclass(frozen=True)
class ViewPolicy:
    """A training view policy (module docstring).

    Attributes:
        names: the views drawn from (family names expanded, in registry order, duplicates dropped).
        severity: ``(low, high)`` in [0, 1], the uniform range of the severity.
        p: probability in [0, 1] that a sample is a view.
    """

    names: tuple[str, ...]
    severity: tuple[float, float] = DEFAULT_SEVERITY
    p: float = DEFAULT_P

    @classmethod
    def from_config(cls, value: Any) -> ViewPolicy | None:
        """The policy of a ``views`` config value (``None``: off); a ``ValueError`` naming the bad key otherwise."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping {{names: [...], severity: [low, high], p: ...}}, got {value!r}")
        unknown = [k for k in value if k not in KEYS]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; keys: {', '.join(KEYS)}")
        raw = value.get("names")
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, list | tuple) or not raw:
            raise ValueError(f"names: a list of view or family names, got {raw!r}")
        names: list[str] = []
        for name in (str(n).strip() for n in raw):
            if name in FAMILIES:
                picked: tuple[str, ...] = view_names(name)
            elif name in VIEWS:
                picked = (name,)
            else:
                raise ValueError(f"names: {name!r} is not a view or a family; known: {', '.join([*FAMILIES, *VIEWS])}")
            names += [n for n in picked if n not in names]
        sev = value.get("severity", list(DEFAULT_SEVERITY))
        if not isinstance(sev, list | tuple):
            sev = [sev, sev]
        if len(sev) != 2 or not all(_number(v) for v in sev):
            raise ValueError(f"severity: [low, high] with 0 <= low <= high <= 1, got {sev!r}")
        low, high = float(sev[0]), float(sev[1])
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"severity: [low, high] with 0 <= low <= high <= 1, got {list(sev)!r}")
        p = value.get("p", DEFAULT_P)
        if not _number(p) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: a probability in [0, 1], got {p!r}")
        return cls(tuple(names), (low, high), float(p))

    @property
    def needs_signals(self) -> tuple[str, ...]:
        """The views of the policy that need the record's signal (signal and rendering views)."""
        return tuple(n for n in self.names if VIEWS[n].family != "image")

    def draw(self, seed: int, record_id: str, epoch: int) -> tuple[str, float, int] | None:
        """``(view, severity, view seed)`` of a record at an epoch, or ``None`` (the stored page), from
        ``(seed, record id, epoch)`` alone."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(record_id).encode()), int(epoch)])
        apply = rng.random()  # every draw made whatever p is, so that p changes which samples, not which views
        pick, severity, view_seed = rng.integers(len(self.names)), rng.random(), rng.integers(2**31)
        if apply >= self.p:
            return None
        low, high = self.severity
        return self.names[int(pick)], low + (high - low) * float(severity), int(view_seed)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ViewedImages:
    """The image loader of a run with a view policy: ``record -> PIL image``, the record's view at the current epoch.

    Args:
        policy: the policy.
        stored: the run's loader of the stored pages (:func:`evl_ecg.train.pipeline.image_loader`).
        source: where the records' signals come from (:func:`evl_ecg.data.sources.open_record_source`); needed only
            by signal and rendering views.
        seed: the training seed.
    """

    def __init__(self, policy: ViewPolicy, stored: Callable[[Any], Any], source: Any, seed: int) -> None:
        self.policy = policy
        self.stored = stored
        self.source = source
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The pass over the data the next samples belong to (:class:`ViewEpoch` sets it)."""
        self.epoch = int(epoch)

    def __call__(self, record: Any) -> Any:
        rid = str(record.get("id") if isinstance(record, Mapping) else record.id)
        drawn = self.policy.draw(self.seed, rid, self.epoch)
        if drawn is None:
            return self.stored(record)
        name, severity, view_seed = drawn
        if VIEWS[name].family == "image":
            image, _ = image_view(self.stored(record), name, severity, view_seed)
            return image
        ecg, spec = self.source.clean(record)
        image, _ = apply_view(ecg, name, severity, view_seed, spec)
        return image


class ViewEpoch(TrainerCallback):
    """Tells the view loader which pass over the data begins (``floor(state.epoch)``; a resumed run resumes its
    epoch, so its views are those of the run it continues). Runs before the epoch's data loader starts its workers,
    which then copy the loader with its epoch."""

    def __init__(self, images: ViewedImages) -> None:
        self.images = images

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.images.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-9)))


def viewed_images(config: Any, stored: Callable[[Any], Any]) -> tuple[ViewedImages | None, list[TrainerCallback]]:
    """The run's image loader under ``config.views`` (``(None, [])`` when off) and the callback that gives it the
    epoch. Signal and rendering views of a corpus without signals are refused here, before any training, in one line
    naming them."""
    policy = ViewPolicy.from_config(config.views)
    if policy is None:
        return None, []
    source = None
    if policy.needs_signals:
        from evl_ecg.data.sources import open_record_source

        source = open_record_source(config.train_file)
        if not source.signals and config.image_root:  # a training file outside its corpus (a label budget's)
            beside_images = open_record_source(config.image_root)
            source = beside_images if beside_images.signals else source
        if not source.signals:
            shown = ", ".join(policy.needs_signals[:4]) + (" ..." if len(policy.needs_signals) > 4 else "")
            raise ValueError(f"views: {shown} need the records' signals, but {source.describe()}")
    images = ViewedImages(policy, stored, source, config.seed)
    return images, [ViewEpoch(images)]


__all__ = ["ViewEpoch", "ViewPolicy", "ViewedImages", "viewed_images"]
