"""Readers against fixtures written in each dataset's published layout (values compared with what was written)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file

from evl_ecg.ecg.labels import UnknownCodeError
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.readers import iter_ptbxl, read_code15, read_dicom, read_ptbxl, read_record, read_wfdb
from evl_ecg.ecg.signal import EcgError

# How files spell the 12 leads (PTB-XL headers use upper-case AVR/AVL/AVF).
FILE_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
GAIN = 1000.0  # ADC units per mV: quantisation step 0.001 mV, rounding error <= 0.0005 mV


def _signal(n: int, seed: int = 0) -> np.ndarray:
    """n x 12 in mV, rounded to the ADC grid so that what is written is exactly representable."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0, 0.5, size=(n, 12)) * GAIN) / GAIN


def _write(directory: Path, name: str, sig: np.ndarray, names: list[str], *, fs=500, units=None, comments=None):
    units = units or ["mV"] * len(names)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=units,
        sig_name=names,
        p_signal=sig,
        fmt=["16"] * len(names),
        adc_gain=[1.0 if u == "uV" else GAIN for u in units],  # ADC units per unit: 0.001 mV steps either way
        baseline=[0] * len(names),
        comments=comments or [],
        write_dir=str(directory),
    )
    return directory / f"{name}.hea"


def _one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# ------------------------------------------------------------------ WFDB


def test_wfdb_reorders_leads_and_converts_units(tmp_path):
    sig = _signal(1000)
    perm = [11, 3, 0, 6, 1, 10, 4, 2, 9, 5, 8, 7]  # a scrambled channel order
    names = ["v6", "AVR", "I", "V1", "Lead II", "V5", "aVL", "III", "V4", "AVF", "V3", "V2"]
    assert [n.replace("Lead ", "").upper() for n in names] == [FILE_NAMES[i].upper() for i in perm]
    written = sig[:, perm].copy()
    units = ["mV"] * 12
    units[3] = "uV"  # V1 stored in microvolts
    written[:, 3] *= 1000
    _write(tmp_path, "scrambled", written, names, units=units)
    ecg = read_wfdb(tmp_path / "scrambled")  # base name, no suffix
    assert ecg.signal.shape == (12, 1000) and ecg.signal.dtype == np.float32 and ecg.fs == 500
    np.testing.assert_allclose(ecg.signal, sig.T, atol=6e-4)
    assert ecg.lead("V1")[:5] == pytest.approx(sig[:5, 6], abs=6e-4)
    same = read_wfdb(tmp_path / "scrambled.hea")
    assert np.array_equal(same.signal, ecg.signal)


def test_challenge_header_dx_gives_snomed_cpsc_labels_and_findings(tmp_path):
    comments = ["Age: 53", "Sex: Male", "Dx: 59118001,426783006", "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"]
    hea = _write(tmp_path, "A0001", _signal(500), FILE_NAMES, comments=comments)
    assert "# Dx: 59118001,426783006" in hea.read_text()
    ecg = read_wfdb(hea)
    assert ecg.labels["snomed"] == ("59118001", "426783006")
    assert ecg.labels["cpsc"] == ("NORM", "RBBB")  # 426783006 sinus rhythm is CPSC's NORM code
    assert ecg.findings == {"RBBB", "SR"}
    assert ecg.meta["age"] == "53" and ecg.meta["sex"] == "Male"
    assert ecg.labels_in("code15") == ("RBBB",)  # derived from the findings


def test_unknown_snomed_code_names_the_file(tmp_path):
    hea = _write(tmp_path, "A0002", _signal(500), FILE_NAMES, comments=["Dx: 59118001,999999999"])
    with pytest.raises(UnknownCodeError) as exc:
        read_wfdb(hea)
    assert "A0002.hea" in str(exc.value) and "999999999" in str(exc.value)


def test_truncated_dat_is_an_error(tmp_path):
    _write(tmp_path, "trunc", _signal(1000), FILE_NAMES)
    dat = tmp_path / "trunc.dat"
    dat.write_bytes(dat.read_bytes()[:5000])
    with pytest.raises(EcgError) as exc:
        read_wfdb(tmp_path / "trunc.hea")
    _one_line_error(exc, "trunc.hea", "trunc.dat has 5000 bytes", "truncated")


def test_header_data_mismatch_is_an_error(tmp_path):
    hea = _write(tmp_path, "longer", _signal(1000), FILE_NAMES)
    text = hea.read_text().splitlines()
    head = text[0].split()
    head[3] = "2000"  # the header claims twice the samples in the file
    hea.write_text("\n".join([" ".join(head), *text[1:]]) + "\n")
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "longer.hea", "header needs 48000", "header/data mismatch")


def test_checksum_mismatch_is_an_error(tmp_path):
    hea = _write(tmp_path, "corrupt", _signal(1000), FILE_NAMES)
    dat = tmp_path / "corrupt.dat"
    data = bytearray(dat.read_bytes())
    data[24 * 100 + 2] ^= 0x55  # a byte of lead II at sample 100
    dat.write_bytes(bytes(data))
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "corrupt.hea", "checksum", "II")


def test_nan_samples_are_an_error(tmp_path):
    sig = _signal(1000)
    sig[10, 7] = np.nan  # V2
    hea = _write(tmp_path, "withnan", sig, FILE_NAMES)
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "withnan.hea", "NaN", "V2")


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"], "missing III, aVR, aVL, aVF"),  # 8-lead storage
        (FILE_NAMES[:11], "missing V6"),
        (FILE_NAMES[:11] + ["II"], "more than once"),
        (FILE_NAMES[:11] + ["X7"], "unknown lead name 'X7'"),
    ],
)
def test_wrong_lead_sets_are_errors(tmp_path, names, reason):
    placeholder = [f"C{i}" if n in names[:i] else n for i, n in enumerate(names)]  # wfdb writes unique names only
    hea = _write(tmp_path, "leads", _signal(300)[:, : len(names)], placeholder)
    lines = hea.read_text().splitlines()
    for i, name in enumerate(names):  # the header as a faulty device would write it
        parts = lines[1 + i].split()
        lines[1 + i] = " ".join([*parts[:-1], name])
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "leads.hea", reason)


def test_unknown_unit_and_missing_header_are_errors(tmp_path):
    hea = _write(tmp_path, "units", _signal(300), FILE_NAMES, units=["mV"] * 11 + ["mmHg"])
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "units.hea", "V6", "mmHg")
    with pytest.raises(EcgError) as exc:
        read_wfdb(tmp_path / "absent.hea")
    _one_line_error(exc, "absent.hea", "no such")


# ------------------------------------------------------------------ PTB-XL

PTBXL_COLUMNS = (
    "ecg_id,patient_id,age,sex,height,weight,nurse,site,device,recording_date,report,scp_codes,heart_axis,"
    "infarction_stadium1,infarction_stadium2,validated_by,second_opinion,initial_autogenerated_report,"
    "validated_by_human,baseline_drift,static_noise,burst_noise,electrodes_problems,extra_beats,pacemaker,"
    "strat_fold,filename_lr,filename_hr"
).split(",")
SCP_COLUMNS = (
    "description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass,Statement Category,"
    "SCP-ECG Statement Description,AHA code,aECG REFID,CDISC Code,DICOM Code"
).split(",")
SCP_ROWS = {  # code: (description, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass)
    "NDT": ("non-diagnostic T abnormalities", 1.0, 1.0, None, "STTC", "STTC"),
    "NORM": ("normal ECG", 1.0, None, None, "NORM", "NORM"),
    "IMI": ("inferior myocardial infarction", 1.0, None, None, "MI", "IMI"),
    "LVH": ("left ventricular hypertrophy", 1.0, None, None, "HYP", "LVH"),
    "CRBBB": ("complete right bundle branch block", 1.0, None, None, "CD", "CRBBB"),
    "1AVB": ("first degree AV block", 1.0, None, None, "CD", "_AVB"),
    "LVOLT": ("low QRS voltages in the frontal and horizontal leads", None, 1.0, None, None, None),
    "SR": ("sinus rhythm", None, None, 1.0, None, None),
    "AFIB": ("atrial fibrillation", None, None, 1.0, None, None),
}
PTBXL_RECORDS = {  # ecg_id: (scp_codes, strat_fold, expected superclasses, expected findings)
    1: ("{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}", 3, ("NORM",), {"SR"}),
    2: ("{'IMI': 80.0, 'CRBBB': 100.0, 'LVH': 0.0, 'SR': 0.0}", 9, ("MI", "CD", "HYP"), {"MI", "RBBB", "LVH", "SR"}),
    3: ("{'NDT': 100.0, 'AFIB': 0.0, '1AVB': 50.0}", 10, ("STTC", "CD"), {"AF", "IAVB"}),
}


@pytest.fixture
def ptbxl_root(tmp_path) -> Path:
    root = tmp_path / "ptb-xl"
    rows = []
    for ecg_id, (scp, fold, _, _) in PTBXL_RECORDS.items():
        lr, hr = f"records100/00000/{ecg_id:05d}_lr", f"records500/00000/{ecg_id:05d}_hr"
        for rel, fs, n in ((lr, 100, 200), (hr, 500, 1000)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _write((root / rel).parent, Path(rel).name, _signal(n, seed=ecg_id * 1000 + fs), FILE_NAMES, fs=fs)
        row = dict.fromkeys(PTBXL_COLUMNS, "")
        row.update(
            ecg_id=ecg_id, patient_id=15709.0 + ecg_id, age=56.0, sex=1, report="sinusrhythmus", scp_codes=scp,
            strat_fold=fold, filename_lr=lr, filename_hr=hr, validated_by_human=True, pacemaker="",
        )  # fmt: skip
        rows.append(row)
    pd.DataFrame(rows, columns=PTBXL_COLUMNS).to_csv(root / "ptbxl_database.csv", index=False)
    scp = pd.DataFrame(
        [list(v) + [""] * (len(SCP_COLUMNS) - 6) for v in SCP_ROWS.values()], index=list(SCP_ROWS), columns=SCP_COLUMNS
    )
    scp.to_csv(root / "scp_statements.csv")
    return root


def test_ptbxl_layout_reads_signal_and_superclasses(ptbxl_root):
    head = (ptbxl_root / "scp_statements.csv").read_text().splitlines()[0]
    assert head.startswith(",description,diagnostic,form,rhythm,diagnostic_class")  # the published layout
    for ecg_id, (_, fold, classes, findings) in PTBXL_RECORDS.items():
        ecg = read_ptbxl(ptbxl_root, ecg_id)
        assert ecg.fs == 500 and ecg.signal.shape == (12, 1000)
        np.testing.assert_allclose(ecg.signal, _signal(1000, seed=ecg_id * 1000 + 500).T, atol=6e-4)
        assert ecg.labels["ptbxl"] == classes
        assert ecg.findings == findings
        assert ecg.meta["strat_fold"] == fold and ecg.record_id == f"ptbxl/{ecg_id:05d}"
    low = read_ptbxl(ptbxl_root, 2, rate=100)
    assert low.fs == 100 and low.signal.shape == (12, 200)
    np.testing.assert_allclose(low.signal, _signal(200, seed=2100).T, atol=6e-4)


def test_iter_ptbxl_filters_folds(ptbxl_root):
    assert [e.meta["ecg_id"] for e in iter_ptbxl(ptbxl_root)] == [1, 2, 3]
    assert [e.meta["ecg_id"] for e in iter_ptbxl(ptbxl_root, folds=[9, 10])] == [2, 3]
    assert [e.meta["ecg_id"] for e in iter_ptbxl(ptbxl_root, rate=100, folds=[3])] == [1]


def test_ptbxl_bad_inputs(ptbxl_root):
    with pytest.raises(EcgError) as exc:
        read_ptbxl(ptbxl_root, 99)
    _one_line_error(exc, "ptbxl_database.csv", "99")
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    db.loc[0, "scp_codes"] = "{'NORM': 100.0, 'WHAT': 0.0}"
    db.to_csv(ptbxl_root / "ptbxl_database.csv", index=False)
    with pytest.raises(UnknownCodeError) as exc:
        read_ptbxl(ptbxl_root, 1)
    assert "WHAT" in str(exc.value) and "ecg_id 1" in str(exc.value)
    with pytest.raises(EcgError) as exc:
        read_ptbxl(ptbxl_root.parent, 1)
    _one_line_error(exc, "ptbxl_database.csv", "not found")


# ------------------------------------------------------------------ CODE-15%

CODE15_CSV_COLUMNS = (
    "exam_id,age,is_male,nn_predicted_age,1dAVb,RBBB,LBBB,SB,ST,AF,patient_id,death,timey,normal_ecg,trace_file"
).split(",")


@pytest.fixture
def code15(tmp_path) -> tuple[Path, dict[int, np.ndarray]]:
    rng = np.random.default_rng(5)
    tracings = np.zeros((4, 4096, 12), dtype=np.float32)
    content = {}
    for i, n in enumerate((4000, 2800, 4096)):
        x = rng.normal(0, 0.5, size=(n, 12)).astype(np.float32)
        pad = (4096 - n) // 2  # the dataset pads equally at both ends
        tracings[i, pad : pad + n] = x
        content[i] = x
    path = tmp_path / "exams_part0.hdf5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("tracings", data=tracings)
        h5.create_dataset("exam_id", data=np.array([1169160, 2873686, 168405, 0], dtype=np.int64))
    rows = [
        [
            1169160,
            38,
            True,
            40.2,
            False,
            False,
            False,
            False,
            False,
            False,
            523632,
            False,
            2098,
            True,
            "exams_part0.hdf5",
        ],
        [
            2873686,
            73,
            True,
            67.1,
            True,
            True,
            False,
            False,
            False,
            False,
            1724173,
            False,
            2321,
            False,
            "exams_part0.hdf5",
        ],
        [
            168405,
            67,
            True,
            80.8,
            False,
            False,
            False,
            False,
            False,
            True,
            1052767,
            False,
            2282,
            False,
            "exams_part0.hdf5",
        ],
    ]
    pd.DataFrame(rows, columns=CODE15_CSV_COLUMNS).to_csv(tmp_path / "exams.csv", index=False)
    return path, content


def test_code15_strips_padding_and_reads_labels(code15):
    path, content = code15
    e0 = read_code15(path, 0)
    assert e0.fs == 400 and e0.signal.shape == (12, 4000)
    np.testing.assert_array_equal(e0.signal, content[0].T)
    assert e0.labels["code15"] == () and e0.findings == {"SR"} and e0.meta["exam_id"] == 1169160
    assert e0.meta["pad_start"] == 48 and e0.meta["pad_end"] == 48
    e1 = read_code15(path, 1, exams_csv=path.parent / "exams.csv")
    assert e1.signal.shape == (12, 2800) and e1.duration == pytest.approx(7.0)
    np.testing.assert_array_equal(e1.signal, content[1].T)
    assert e1.labels["code15"] == ("1dAVb", "RBBB") and e1.findings == {"IAVB", "RBBB", "SR"}
    assert read_code15(path, 2).labels["code15"] == ("AF",)


def test_code15_bad_inputs(code15):
    path, _ = code15
    with pytest.raises(EcgError) as exc:
        read_code15(path, 3)  # the all-zero entry (exam_id 0)
    _one_line_error(exc, "exams_part0.hdf5[3]", "all zeros")
    with pytest.raises(EcgError) as exc:
        read_code15(path, 7)
    _one_line_error(exc, "exams_part0.hdf5", "out of range")
    with h5py.File(path, "a") as h5:
        h5["tracings"][1, 100, 4] = np.nan
    with pytest.raises(EcgError) as exc:
        read_code15(path, 1)
    _one_line_error(exc, "exams_part0.hdf5[1]", "NaN", "aVL")
    eight = path.parent / "eight.hdf5"
    with h5py.File(eight, "w") as h5:
        h5.create_dataset("tracings", data=np.ones((1, 4096, 8), dtype=np.float32))
        h5.create_dataset("exam_id", data=np.array([5]))
    with pytest.raises(EcgError) as exc:
        read_code15(eight, 0)
    _one_line_error(exc, "eight.hdf5", "expected N x samples x 12")


# ------------------------------------------------------------------ DICOM

DICOM_ECG = get_testdata_file("waveform_ecg.dcm")


def test_pydicom_ecg_matches_what_pydicom_reports():
    assert DICOM_ECG is not None, "pydicom's waveform_ecg.dcm test file is not installed"
    ds = pydicom.dcmread(DICOM_ECG)
    group = ds.WaveformSequence[0]
    meanings = [ch.ChannelSourceSequence[0].CodeMeaning for ch in group.ChannelDefinitionSequence]
    expected = ["Lead I (Einthoven)", "Lead II", "Lead III", "Lead aVR", "Lead aVL", "Lead aVF"]
    assert meanings == expected + [f"Lead V{k}" for k in range(1, 7)]  # the file stores the standard order
    units = {ch.ChannelSensitivityUnitsSequence[0].CodeValue for ch in group.ChannelDefinitionSequence}
    assert units == {"uV"}
    ecg = read_dicom(DICOM_ECG)
    assert ecg.leads == LEADS and ecg.signal.shape == (12, group.NumberOfWaveformSamples)
    assert ecg.fs == float(group.SamplingFrequency)
    assert ecg.duration == pytest.approx(group.NumberOfWaveformSamples / float(group.SamplingFrequency))
    np.testing.assert_allclose(ecg.signal, ds.waveform_array(0).T / 1000.0, rtol=1e-6, atol=1e-6)
    # Einthoven's law holds on the recording itself (to the 1.25 uV sampling step)
    assert np.abs(ecg.lead("III") - (ecg.lead("II") - ecg.lead("I"))).max() < 0.01


def test_dicom_bad_inputs(tmp_path):
    with pytest.raises(EcgError) as exc:
        read_dicom(get_testdata_file("CT_small.dcm"))
    _one_line_error(exc, "CT_small.dcm", "no WaveformSequence")
    ds = pydicom.dcmread(DICOM_ECG)
    for group in ds.WaveformSequence:
        group.ChannelDefinitionSequence[11].ChannelSourceSequence[0].CodeMeaning = "Lead V7"
    bad = tmp_path / "v7.dcm"
    ds.save_as(bad)
    with pytest.raises(EcgError) as exc:
        read_dicom(bad)
    _one_line_error(exc, "v7.dcm", "Lead V7")


# ------------------------------------------------------------------ dispatch


def test_read_record_dispatches_on_suffix(tmp_path, code15):
    _write(tmp_path, "rec", _signal(400), FILE_NAMES)
    for p in (tmp_path / "rec", tmp_path / "rec.hea", tmp_path / "rec.dat"):
        assert read_record(p).signal.shape == (12, 400)
    assert read_record(DICOM_ECG).fs == 1000
    h5, content = code15
    np.testing.assert_array_equal(read_record(h5, index=0).signal, content[0].T)
    with pytest.raises(EcgError, match="index"):
        read_record(h5)
    with pytest.raises(EcgError, match="unknown ECG file type"):
        read_record(tmp_path / "notes.txt")
