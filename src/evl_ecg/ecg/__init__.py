"""The cardiac domain: lead system, label vocabularies, readers, synthetic generator, renderer.

Knows nothing of language models.
"""

from evl_ecg.ecg.labels import FINDINGS, VOCABULARIES, labels_from_findings
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg, EcgError

__all__ = ["FINDINGS", "LEADS", "VOCABULARIES", "Ecg", "EcgError", "labels_from_findings"]
