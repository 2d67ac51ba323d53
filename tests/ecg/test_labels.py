"""The label maps against the datasets' published definitions (hand-written expectations)."""

import pytest

from evl_ecg.ecg.labels import (
    CODE15_LABELS,
    CPSC_LABELS,
    PTBXL_SUPERCLASSES,
    UnknownCodeError,
    cpsc_labels_from_snomed,
    findings_from_code15,
    findings_from_snomed,
    labels_from_findings,
)
from evl_ecg.ecg.leads import LEADS, canonical_lead_name


def test_vocabularies_are_the_scorer_lists_in_order():
    assert PTBXL_SUPERCLASSES == ("NORM", "MI", "STTC", "CD", "HYP")
    assert CODE15_LABELS == ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
    assert CPSC_LABELS == ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
    assert LEADS == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.mark.parametrize(
    ("findings", "ptbxl", "code15", "cpsc"),
    [
        ({"SR"}, ("NORM",), (), ("NORM",)),
        ({"SR", "RBBB", "IAVB"}, ("CD",), ("1dAVb", "RBBB"), ("I-AVB", "RBBB")),
        ({"AF", "LBBB"}, ("CD",), ("LBBB", "AF"), ("AF", "LBBB")),
        ({"SR", "MI"}, ("MI",), (), ("STE",)),
        ({"SB", "LVH", "TINV"}, ("STTC", "HYP"), ("SB",), ()),
        ({"STACH", "PVC"}, (), ("ST",), ("PVC",)),
        ({"SR", "STD", "PAC"}, ("STTC",), (), ("PAC", "STD")),
    ],
)
def test_labels_from_findings(findings, ptbxl, code15, cpsc):
    assert labels_from_findings(findings, "ptbxl") == ptbxl
    assert labels_from_findings(findings, "code15") == code15
    assert labels_from_findings(findings, "cpsc") == cpsc


def test_unknown_finding_and_vocabulary_are_refused():
    with pytest.raises(KeyError, match="XYZ"):
        labels_from_findings({"XYZ"}, "ptbxl")
    with pytest.raises(KeyError, match="nope"):
        labels_from_findings({"SR"}, "nope")


def test_snomed_maps_challenge_equivalent_classes_together():
    assert findings_from_snomed(["713427006", "426783006"]) == {"RBBB", "SR"}
    assert findings_from_snomed(["17338001"]) == {"PVC"}
    assert findings_from_snomed(["164890007"]) == frozenset()  # atrial flutter: known, no finding of ours
    assert cpsc_labels_from_snomed(["164884008", "164931005"]) == ("PVC", "STE")


def test_unknown_snomed_code_names_record_and_code():
    with pytest.raises(UnknownCodeError, match=r"A0001\.hea.*'99999'"):
        findings_from_snomed(["426783006", "99999"], source="A0001.hea")


def test_code15_flags():
    assert findings_from_code15({"1dAVb": True, "AF": True}) == {"IAVB", "AF"}
    assert findings_from_code15({}) == {"SR"}


@pytest.mark.parametrize(("raw", "name"), [("AVR", "aVR"), ("v1", "V1"), ("Lead II", "II"), ("aVF", "aVF")])
def test_canonical_lead_names(raw, name):
    assert canonical_lead_name(raw) == name


def test_unknown_lead_name_is_refused():
    with pytest.raises(KeyError, match="V7"):
        canonical_lead_name("V7")
