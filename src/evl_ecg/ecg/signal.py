"""The one type every ECG stage passes on: a 12-lead signal with its sampling rate and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evl_ecg.ecg.labels import VOCABULARIES, labels_from_findings
from evl_ecg.ecg.leads import LEADS


class EcgError(ValueError):
    """A record that cannot be used; the message names the record (file) and what is wrong."""


@dataclass(frozen=True)
class Ecg:
    """A 12-lead ECG.

    Attributes:
        signal: ``12 x n`` float32 array in millivolts, rows in :data:`~evl_ecg.ecg.leads.LEADS` order.
        fs: sampling rate in Hz.
        record_id: a name for messages and file names (``'ptbxl/00001_hr'``, ``'synth-000042'``).
        findings: canonical findings (:data:`~evl_ecg.ecg.labels.FINDINGS`) where known.
        labels: labels per vocabulary (``'ptbxl'``, ``'code15'``, ``'cpsc'``, ``'snomed'``) as the
            source gives them; vocabularies the source lacks are derived from ``findings``.
        meta: anything else the source knows (age, sex, measured intervals, generator parameters).
    """

    signal: np.ndarray
    fs: float
    record_id: str = "record"
    findings: frozenset[str] = frozenset()
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sig = self.signal
        if not isinstance(sig, np.ndarray) or sig.ndim != 2:
            raise EcgError(f"{self.record_id}: signal must be a 2-D array (leads x samples)")
        if sig.shape[0] != len(LEADS):
            raise EcgError(f"{self.record_id}: expected {len(LEADS)} leads, got {sig.shape[0]}")
        if sig.shape[1] < 2:
            raise EcgError(f"{self.record_id}: signal has no samples")
        if not np.all(np.isfinite(sig)):
            bad = [LEADS[i] for i in np.unique(np.nonzero(~np.isfinite(sig))[0])]
            raise EcgError(f"{self.record_id}: NaN or infinite samples in lead(s) {', '.join(bad)}")
        if not self.fs or self.fs <= 0:
            raise EcgError(f"{self.record_id}: sampling rate must be positive, got {self.fs}")

    @property
    def leads(self) -> tuple[str, ...]:
        return LEADS

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.signal.shape[1] / self.fs

    def lead(self, name: str) -> np.ndarray:
        return self.signal[LEADS.index(name)]

    def labels_in(self, vocabulary: str) -> tuple[str, ...]:
        """Labels in ``vocabulary``: the source's own where it has them, else derived from the findings."""
        if vocabulary in self.labels:
            return tuple(self.labels[vocabulary])
        if vocabulary in VOCABULARIES and self.findings:
            return labels_from_findings(self.findings, vocabulary)
        return ()
