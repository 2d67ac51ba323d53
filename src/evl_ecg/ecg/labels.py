"""Label vocabularies of the public ECG datasets, our canonical findings, and the maps between them.

Three vocabularies are scored on ECGBench (their order is the scorer's order):

* PTB-XL diagnostic superclasses ``NORM, MI, STTC, CD, HYP`` (``ptb-test``);
* CODE-15% ``1dAVb, RBBB, LBBB, SB, ST, AF`` (``code15-test``; whole-answer ``NORM``/``ABNORMAL`` too);
* CPSC-2018 ``NORM, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE`` (``cpsc-test``).

Everything we *generate* is described by canonical findings (:data:`FINDINGS`); every vocabulary label is
derived from them by :func:`labels_from_findings`. Real data come with dataset labels: SNOMED CT codes
(PhysioNet/CinC Challenge 2020, CPSC-2018 headers ``# Dx:``), CODE-15% booleans, PTB-XL SCP statements;
:func:`findings_from_snomed` and :func:`findings_from_code15` map them back where the map is defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------------
# Canonical findings (what the synthetic generator can encode)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    kind: str  # "rhythm" | "conduction" | "morphology" | "ectopy"
    criterion: str  # the clinical criterion the generator encodes


FINDINGS: dict[str, Finding] = {
    f.code: f
    for f in [
        Finding("SR", "sinus rhythm", "rhythm", "P before every QRS, regular RR, rate 60-100 bpm"),
        Finding("SB", "sinus bradycardia", "rhythm", "sinus rhythm with rate < 60 bpm"),
        Finding("STACH", "sinus tachycardia", "rhythm", "sinus rhythm with rate > 100 bpm"),
        Finding(
            "AF",
            "atrial fibrillation",
            "rhythm",
            "irregularly irregular RR, no P waves, fibrillatory baseline (f waves, 4-9 Hz)",
        ),
        Finding("IAVB", "first degree AV block", "conduction", "PR interval > 200 ms, every P conducted"),
        Finding(
            "RBBB",
            "right bundle branch block",
            "conduction",
            "QRS >= 120 ms, rsR' in V1-V2, wide slurred S in I, aVL, V5-V6",
        ),
        Finding(
            "LBBB",
            "left bundle branch block",
            "conduction",
            "QRS >= 120 ms, broad notched R in I, aVL, V5-V6, absent septal q, deep QS/rS in V1-V2",
        ),
        Finding(
            "MI",
            "myocardial infarction",
            "morphology",
            "pathological Q waves (>= 40 ms, >= 25% of R) with ST elevation in a coronary territory",
        ),
        Finding(
            "STD",
            "ST depression",
            "morphology",
            "horizontal/downsloping ST depression >= 0.05 mV (0.5 mm; Fourth Universal Definition of MI, 2018)",
        ),
        Finding("TINV", "T wave inversion", "morphology", "inverted T waves in leads where T is upright"),
        Finding(
            "LVH", "left ventricular hypertrophy", "morphology", "Sokolow-Lyon voltage: S(V1) + R(V5 or V6) >= 3.5 mV"
        ),
        Finding("PAC", "premature atrial complex", "ectopy", "early beat with an abnormal P wave and a narrow QRS"),
        Finding(
            "PVC",
            "premature ventricular complex",
            "ectopy",
            "early beat without P wave, wide (>= 120 ms) bizarre QRS, discordant T",
        ),
    ]
}

RHYTHMS: tuple[str, ...] = ("SR", "SB", "STACH", "AF")

#: Coronary territories an MI can lie in, with the leads that show Q waves and ST elevation there.
MI_TERRITORIES: dict[str, tuple[str, ...]] = {
    "anterior": ("V1", "V2", "V3", "V4"),
    "inferior": ("II", "III", "aVF"),
    "lateral": ("I", "aVL", "V5", "V6"),
}

# --------------------------------------------------------------------------------------------------
# Dataset vocabularies (exact strings and order of the ECGBench scorer)
# --------------------------------------------------------------------------------------------------

PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
CODE15_LABELS: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
CPSC_LABELS: tuple[str, ...] = ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "ptbxl": PTBXL_SUPERCLASSES,
    "code15": CODE15_LABELS,
    "cpsc": CPSC_LABELS,
}

#: Long names as the datasets' prompts spell them (CODE-15%: ``1dAVb(1st degree av block)``).
LONG_NAMES: dict[str, dict[str, str]] = {
    "ptbxl": {
        "NORM": "normal ECG",
        "MI": "myocardial infarction",
        "STTC": "ST/T change",
        "CD": "conduction disturbance",
        "HYP": "hypertrophy",
    },
    "code15": {
        "1dAVb": "1st degree av block",
        "RBBB": "right bundle branch block",
        "LBBB": "left bundle branch block",
        "SB": "sinus bradycardia",
        "ST": "sinus tachycardia",
        "AF": "atrial fibrillation",
    },
    "cpsc": {
        "NORM": "normal ECG",
        "AF": "atrial fibrillation",
        "I-AVB": "1st degree av block",
        "LBBB": "left bundle branch block",
        "RBBB": "right bundle branch block",
        "PAC": "premature atrial contraction",
        "PVC": "ventricular ectopics",
        "STD": "ST depression",
        "STE": "ST elevation",
    },
}

# Canonical finding -> label in each vocabulary (None: the vocabulary has no such class).
_PTBXL_OF = {"MI": "MI", "STD": "STTC", "TINV": "STTC", "IAVB": "CD", "RBBB": "CD", "LBBB": "CD", "LVH": "HYP"}
_CODE15_OF = {"IAVB": "1dAVb", "RBBB": "RBBB", "LBBB": "LBBB", "SB": "SB", "STACH": "ST", "AF": "AF"}
_CPSC_OF = {
    "AF": "AF",
    "IAVB": "I-AVB",
    "LBBB": "LBBB",
    "RBBB": "RBBB",
    "PAC": "PAC",
    "PVC": "PVC",
    "STD": "STD",
    "MI": "STE",
}

#: Findings that make an ECG abnormal (anything but sinus rhythm at a normal rate).
ABNORMAL_FINDINGS: frozenset[str] = frozenset(FINDINGS) - {"SR"}


def is_normal(findings: Iterable[str]) -> bool:
    """A normal ECG: sinus rhythm at 60-100 bpm and nothing else."""
    return not (set(findings) & ABNORMAL_FINDINGS)


def labels_from_findings(findings: Iterable[str], vocabulary: str) -> tuple[str, ...]:
    """Labels of ``vocabulary`` (``ptbxl``, ``code15``, ``cpsc``) implied by canonical findings, in scorer order.

    * ``ptbxl``: diagnostic superclasses; ``NORM`` iff the ECG is normal (:func:`is_normal`). Rhythm-only
      abnormalities (SB, STACH, AF, PAC, PVC) have no diagnostic superclass, as in PTB-XL.
    * ``code15``: the six CODE-15% abnormalities (an empty tuple is the dataset's "normal exam").
    * ``cpsc``: the nine CPSC-2018 classes; ``NORM`` iff the ECG is normal. ST elevation comes with MI.
    """
    found = set(findings)
    unknown = found - set(FINDINGS)
    if unknown:
        raise KeyError(f"unknown finding code(s) {sorted(unknown)}; known: {sorted(FINDINGS)}")
    if vocabulary == "ptbxl":
        mapped = {_PTBXL_OF[f] for f in found if f in _PTBXL_OF}
        if is_normal(found):
            mapped.add("NORM")
    elif vocabulary == "code15":
        mapped = {_CODE15_OF[f] for f in found if f in _CODE15_OF}
    elif vocabulary == "cpsc":
        mapped = {_CPSC_OF[f] for f in found if f in _CPSC_OF}
        if is_normal(found):
            mapped.add("NORM")
    else:
        raise KeyError(f"unknown vocabulary {vocabulary!r}; known: {sorted(VOCABULARIES)}")
    return tuple(label for label in VOCABULARIES[vocabulary] if label in mapped)


# --------------------------------------------------------------------------------------------------
# SNOMED CT (PhysioNet/CinC Challenge 2020 header codes, CPSC-2018 included)
# --------------------------------------------------------------------------------------------------

#: SNOMED CT codes used by the PhysioNet/CinC Challenge 2020 headers (``# Dx:``): code -> (abbreviation, name).
SNOMED: dict[str, tuple[str, str]] = {
    "426783006": ("SNR", "sinus rhythm"),
    "426177001": ("SB", "sinus bradycardia"),
    "427084000": ("STach", "sinus tachycardia"),
    "427393009": ("SA", "sinus arrhythmia"),
    "164889003": ("AF", "atrial fibrillation"),
    "164890007": ("AFL", "atrial flutter"),
    "270492004": ("IAVB", "1st degree av block"),
    "195042002": ("IIAVB", "2nd degree av block"),
    "27885002": ("IIIAVB", "complete heart block"),
    "59118001": ("RBBB", "right bundle branch block"),
    "713427006": ("CRBBB", "complete right bundle branch block"),
    "713426002": ("IRBBB", "incomplete right bundle branch block"),
    "164909002": ("LBBB", "left bundle branch block"),
    "733534002": ("CLBBB", "complete left bundle branch block"),
    "445118002": ("LAnFB", "left anterior fascicular block"),
    "698252002": ("NSIVCB", "nonspecific intraventricular conduction disorder"),
    "284470004": ("PAC", "premature atrial contraction"),
    "63593006": ("SVPB", "supraventricular premature beats"),
    "427172004": ("PVC", "premature ventricular contractions"),
    "17338001": ("VPB", "ventricular premature beats"),
    "164884008": ("VEB", "ventricular ectopics"),
    "429622005": ("STD", "st depression"),
    "164931005": ("STE", "st elevation"),
    "164930006": ("STIAb", "st interval abnormal"),
    "55930002": ("STC", "st changes"),
    "428750005": ("NSSTTA", "nonspecific st t abnormality"),
    "164934002": ("TAb", "t wave abnormal"),
    "59931005": ("TInv", "t wave inversion"),
    "164865005": ("MI", "myocardial infarction"),
    "413444003": ("AMIs", "acute myocardial ischemia"),
    "164861001": ("MIs", "myocardial ischemia"),
    "164873001": ("LVH", "left ventricular hypertrophy"),
    "89792004": ("RVH", "right ventricular hypertrophy"),
    "164947007": ("LPR", "prolonged pr interval"),
    "111975006": ("LQT", "prolonged qt interval"),
    "39732003": ("LAD", "left axis deviation"),
    "47665007": ("RAD", "right axis deviation"),
    "251146004": ("LQRSV", "low qrs voltages"),
    "10370003": ("PR", "pacing rhythm"),
    "164917005": ("QAb", "qwave abnormal"),
    "251120003": ("ILBBB", "incomplete left bundle branch block"),
    "164912004": ("PWAb", "p wave abnormal"),
    "426761007": ("SVT", "supraventricular tachycardia"),
    "164895002": ("VT", "ventricular tachycardia"),
    "54329005": ("AnMI", "anterior myocardial infarction"),
    "57054005": ("AcMI", "acute myocardial infarction"),
}

# SNOMED code -> canonical finding, where one is defined (Challenge 2020 treats the equivalent-class
# pairs 59118001/713427006, 284470004/63593006 and 427172004/17338001 as one class; so do we).
_FINDING_OF_SNOMED: dict[str, str] = {
    "426783006": "SR",
    "426177001": "SB",
    "427084000": "STACH",
    "164889003": "AF",
    "270492004": "IAVB",
    "59118001": "RBBB",
    "713427006": "RBBB",
    "164909002": "LBBB",
    "733534002": "LBBB",
    "284470004": "PAC",
    "63593006": "PAC",
    "427172004": "PVC",
    "17338001": "PVC",
    "164884008": "PVC",
    "429622005": "STD",
    "59931005": "TINV",
    "164865005": "MI",
    "54329005": "MI",
    "57054005": "MI",
    "164873001": "LVH",
}

#: The SNOMED code we write for each canonical finding (the CPSC-2018 code where CPSC has the class).
SNOMED_OF_FINDING: dict[str, str] = {
    "SR": "426783006",
    "SB": "426177001",
    "STACH": "427084000",
    "AF": "164889003",
    "IAVB": "270492004",
    "RBBB": "59118001",
    "LBBB": "164909002",
    "PAC": "284470004",
    "PVC": "164884008",
    "STD": "429622005",
    "TINV": "59931005",
    "MI": "164865005",
    "LVH": "164873001",
}

#: CPSC-2018 class -> the SNOMED codes that mean it (CPSC's own data uses the first).
CPSC_SNOMED: dict[str, tuple[str, ...]] = {
    "NORM": ("426783006",),
    "AF": ("164889003",),
    "I-AVB": ("270492004",),
    "LBBB": ("164909002", "733534002"),
    "RBBB": ("59118001", "713427006"),
    "PAC": ("284470004", "63593006"),
    "PVC": ("164884008", "427172004", "17338001"),
    "STD": ("429622005",),
    "STE": ("164931005",),
}


class UnknownCodeError(KeyError):
    """A label code that no vocabulary of ours knows."""


def findings_from_snomed(codes: Iterable[str], *, source: str = "record") -> frozenset[str]:
    """Canonical findings of a record's SNOMED codes.

    Known codes without a canonical finding (say, atrial flutter) are ignored; a code that is not a SNOMED
    code we know raises :class:`UnknownCodeError` naming ``source`` and the code.
    """
    found: set[str] = set()
    for raw in codes:
        code = str(raw).strip()
        if not code:
            continue
        if code not in SNOMED:
            raise UnknownCodeError(f"{source}: unknown SNOMED code {code!r}")
        if code in _FINDING_OF_SNOMED:
            found.add(_FINDING_OF_SNOMED[code])
    return frozenset(found)


def cpsc_labels_from_snomed(codes: Iterable[str], *, source: str = "record") -> tuple[str, ...]:
    """CPSC-2018 classes present in a record's SNOMED codes (ST elevation kept as ``STE``)."""
    codes = [str(c).strip() for c in codes if str(c).strip()]
    for code in codes:
        if code not in SNOMED:
            raise UnknownCodeError(f"{source}: unknown SNOMED code {code!r}")
    return tuple(label for label in CPSC_LABELS if set(CPSC_SNOMED[label]) & set(codes))


#: CODE-15% ``exams.csv`` boolean columns -> CODE-15% labels (the columns are named as the labels).
CODE15_COLUMNS: tuple[str, ...] = CODE15_LABELS


def findings_from_code15(flags: dict[str, bool]) -> frozenset[str]:
    """Canonical findings from the six CODE-15% flags (``{'1dAVb': True, ...}``)."""
    inverse = {v: k for k, v in _CODE15_OF.items()}
    found = {inverse[label] for label in CODE15_LABELS if flags.get(label)}
    if not found & {"SB", "STACH", "AF"}:
        found.add("SR")
    return frozenset(found)


def findings_multi_hot(label_sets: Sequence[Iterable[str]], vocabulary: Sequence[str] | None = None) -> torch.Tensor:
    """``B x C`` float multi-hot: ``out[b, c] = 1`` where record ``b`` carries ``vocabulary[c]``.

    ``label_sets``: one iterable of codes per record (a record's ``labels["findings"]``). A code outside
    ``vocabulary`` raises ``ValueError`` (never skipped silently).
    """
    import torch

    vocabulary = tuple(FINDINGS) if vocabulary is None else tuple(vocabulary)  # default: FINDINGS' order
    index = {code: i for i, code in enumerate(vocabulary)}
    out = torch.zeros(len(label_sets), len(index), dtype=torch.float32)
    for b, codes in enumerate(label_sets):
        for code in codes:
            if code not in index:
                raise ValueError(f"record {b}: finding {code!r} is not in the vocabulary {list(vocabulary)}")
            out[b, index[code]] = 1.0
    return out
