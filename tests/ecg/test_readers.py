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


def test_snomed_codes_outside_our_table_are_read_and_listed_not_refused(tmp_path):
    """The Challenge 2021 folders use many codes we do not map: the signal does not depend on them."""
    hea = _write(tmp_path, "A0002", _signal(500), FILE_NAMES, comments=["Dx: 59118001,999999999,251146004"])
    ecg = read_wfdb(hea)
    assert ecg.labels["snomed"] == ("59118001", "999999999", "251146004")  # every code, as written
    assert ecg.labels["cpsc"] == ("RBBB",) and ecg.findings == {"RBBB"}
    assert ecg.meta["snomed_unknown"] == ["999999999"]  # 251146004 (low QRS voltages) is in our table
    only_unknown = read_wfdb(_write(tmp_path, "A0003", _signal(500), FILE_NAMES, comments=["Dx: 164867002"]))
    assert only_unknown.labels == {"snomed": ("164867002",), "cpsc": ()} and only_unknown.findings == frozenset()
    assert "snomed_unknown" not in read_wfdb(_write(tmp_path, "A0004", _signal(500), FILE_NAMES)).meta


@pytest.mark.parametrize("dx", ["59118001,RBBB", "59118001;426783006", "-59118001", "59118001 426783006"])
def test_a_dx_field_that_is_not_snomed_codes_names_the_file_and_field(tmp_path, dx):
    hea = _write(tmp_path, "A0005", _signal(500), FILE_NAMES, comments=[f"Dx: {dx}"])
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "A0005.hea", "field Dx:", "is not a SNOMED CT code")


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


# ------------------------------------------------------------------ PhysioNet/CinC Challenge layout (hand-written)

FIXTURES = Path(__file__).parent / "fixtures"
CHALLENGE = FIXTURES / "A0001.hea"  # written by fixtures/make_challenge_fixture.py with struct, not by wfdb
CHALLENGE_COMMENTS = [
    "#Age: 74",
    "#Sex: Male",
    "#Dx: 59118001,164884008",
    "#Rx: Unknown",
    "#Hx: Unknown",
    "#Sx: Unknown",
]


def _signed16(total: int) -> int:
    return (int(total) + 32768) % 65536 - 32768


def _read_mat_v4(path: Path) -> tuple[tuple[int, ...], bytes, np.ndarray]:
    """Parse a MATLAB v4 file by the format, independently of wfdb: (header ints, name, matrix rows x cols)."""
    import struct

    raw = path.read_bytes()
    head = struct.unpack("<5i", raw[:20])
    mtype, mrows, ncols, imagf, namlen = head
    name = raw[20 : 20 + namlen]
    data = np.frombuffer(raw, dtype="<i2", offset=20 + namlen, count=mrows * ncols)
    return head, name, data.reshape(ncols, mrows).T  # column-major on disk


def _mat_v4(val: np.ndarray) -> bytes:
    """MATLAB v4 bytes of int16 ``val`` (leads x samples) as the Challenge stores them."""
    import struct

    name = b"val\x00"
    return struct.pack("<5i", 30, val.shape[0], val.shape[1], 0, len(name)) + name + val.astype("<i2").tobytes("F")


def _write_challenge(directory: Path, record: str, val: np.ndarray, *, fs="500", comments=None, checksums=True):
    """Challenge-layout ``.hea`` + ``.mat`` written line by line / byte by byte (not by wfdb)."""
    lines = [f"{record} {val.shape[0]} {fs} {val.shape[1]} 05-Feb-2020 11:39:16"]
    for i, lead in enumerate(LEADS):
        row = val[i].astype(np.int64)
        check = f" {_signed16(row.sum())} 0" if checksums else ""
        lines.append(f"{record}.mat 16+24 1000/mV 16 0 {int(row[0])}{check} {lead}")
    (directory / f"{record}.mat").write_bytes(_mat_v4(val))
    hea = directory / f"{record}.hea"
    hea.write_text("\n".join(lines + list(CHALLENGE_COMMENTS if comments is None else comments)) + "\n")
    return hea


def _challenge_val(seconds: float, fs: int = 500, seed: int = 7) -> np.ndarray:
    """Deterministic int16 samples (1000 units/mV): a 1.2 Hz wave per lead plus noise, with a negative mean."""
    t = np.arange(round(seconds * fs)) / fs
    rng = np.random.default_rng(seed)
    waves = np.stack([800 * np.sin(2 * np.pi * 1.2 * t + k) - 40 * k for k in range(12)])
    return np.round(waves + rng.normal(0, 20, waves.shape)).astype(np.int16)


def _copy_challenge(tmp_path: Path, edit) -> Path:
    """The fixture's header with ``edit(lines) -> lines`` applied, next to a copy of its .mat file."""
    (tmp_path / "A0001.mat").write_bytes((FIXTURES / "A0001.mat").read_bytes())
    lines = edit(CHALLENGE.read_text().splitlines())
    hea = tmp_path / "A0001.hea"
    hea.write_text("\n".join(lines) + "\n")
    return hea


def test_challenge_fixture_is_the_published_layout_with_negative_checksums():
    """The committed fixture really is MATLAB v4 int16 'val' (12 x n) + a Challenge header; some checksums < 0."""
    import scipy.io

    head, name, val = _read_mat_v4(FIXTURES / "A0001.mat")
    assert head == (30, 12, 6000, 0, 4) and name == b"val\x00"  # 20 + 4 bytes: the header's "16+24"
    assert np.array_equal(scipy.io.loadmat(FIXTURES / "A0001.mat")["val"], val)  # a real MATLAB v4 file
    lines = CHALLENGE.read_text().splitlines()
    assert lines[0].split()[:4] == ["A0001", "12", "500", "6000"]
    checks = []
    for i, line in enumerate(lines[1:13]):
        fields = line.split()
        assert fields[:5] == ["A0001.mat", "16+24", "1000/mV", "16", "0"] and fields[8] == LEADS[i]
        assert int(fields[5]) == int(val[i, 0])  # initial value
        checks.append(int(fields[6]))
    # Checksum: the sum of the int16 samples wrapped to signed 16 bit, computed here without wfdb.
    assert checks == [_signed16(val[i].astype(np.int64).sum()) for i in range(12)]
    assert min(checks) < 0 and any(abs(int(val[i].astype(np.int64).sum())) > 32767 for i in range(12))
    assert lines[13:] == CHALLENGE_COMMENTS
    rec = wfdb.rdrecord(str(FIXTURES / "A0001"), physical=False)  # and wfdb sees the same samples
    assert np.array_equal(rec.d_signal.T, val)


def test_challenge_record_with_negative_checksums_is_read():
    ecg = read_wfdb(CHALLENGE)
    _, _, val = _read_mat_v4(FIXTURES / "A0001.mat")
    assert ecg.fs == 500 and ecg.signal.shape == (12, 6000)
    np.testing.assert_allclose(ecg.signal, val / 1000.0, atol=1e-6)
    assert ecg.labels["snomed"] == ("59118001", "164884008") and ecg.findings == {"RBBB", "PVC"}
    assert ecg.meta["age"] == "74" and ecg.meta["sex"] == "Male" and ecg.meta["checksums_verified"] is True


def test_checksums_are_compared_modulo_65536_and_a_wrong_one_is_still_refused(tmp_path):
    def unsigned_v1(lines):  # -26118 written as its unsigned form 39418: the same 16-bit checksum
        fields = lines[7].split()
        assert fields[8] == "V1" and int(fields[6]) < 0
        fields[6] = str(int(fields[6]) % 65536)
        return [*lines[:7], " ".join(fields), *lines[8:]]

    assert read_wfdb(_copy_challenge(tmp_path, unsigned_v1)).signal.shape == (12, 6000)

    def off_by_one_v3(lines):
        fields = lines[9].split()
        fields[6] = str(int(fields[6]) + 1)
        return [*lines[:9], " ".join(fields), *lines[10:]]

    with pytest.raises(EcgError) as exc:
        read_wfdb(_copy_challenge(tmp_path, off_by_one_v3))
    _one_line_error(exc, "A0001.hea", "checksum mismatch", "V3")


def test_header_without_checksums_is_read_without_a_check(tmp_path):
    val = _challenge_val(4.0)
    hea = _write_challenge(tmp_path, "nock", val, checksums=False)
    assert hea.read_text().splitlines()[1].split() == ["nock.mat", "16+24", "1000/mV", "16", "0", str(val[0, 0]), "I"]
    ecg = read_wfdb(hea)
    np.testing.assert_allclose(ecg.signal, val / 1000.0, atol=1e-6)
    assert ecg.meta["checksums_verified"] is False


def _replace_field(line_no: int, field: int, value: str):
    def edit(lines):
        fields = lines[line_no].split()
        fields[field] = value
        return [*lines[:line_no], " ".join(fields), *lines[line_no + 1 :]]

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_replace_field(0, 2, "50000"), ("sampling frequency", "'50000'", "50-20000 Hz")),
        (_replace_field(0, 2, "5"), ("sampling frequency", "'5'", "50-20000 Hz")),
        (_replace_field(0, 2, "abc"), ("sampling frequency", "'abc'", "not a number")),
        (_replace_field(0, 2, "-500"), ("sampling frequency", "'-500'", "not a positive number")),
        (lambda lines: ["A0001 12", *lines[1:]], ("sampling frequency missing", "250 Hz")),
        (_replace_field(0, 3, "0"), ("number of samples", "'0'", "zero")),
        (_replace_field(8, 2, "0/mV"), ("signal 8 (V2)", "ADC gain", "'0'", "zero")),
        (_replace_field(8, 2, "x/mV"), ("signal 8 (V2)", "ADC gain", "'x'", "not a number")),
        (lambda lines: [*lines[:12], *lines[13:]], ("number of signals", "'12'", "11 signal lines")),
        (lambda lines: [*lines[:5], " ".join(lines[5].split()[:8]), *lines[6:]], ("signal 5", "description")),
    ],
    ids=[
        "fs-50000",
        "fs-5",
        "fs-abc",
        "fs-negative",
        "fs-missing",
        "zero-length",
        "gain-0",
        "gain-x",
        "11-lines",
        "no-name",
    ],
)
def test_implausible_header_values_are_refused_naming_file_field_and_value(tmp_path, edit, needles):
    hea = _copy_challenge(tmp_path, edit)
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "A0001.hea", *needles)


def test_header_without_checksums_or_descriptions_is_refused_not_a_type_error(tmp_path):
    """A line cut after the initial value has no checksum and no lead name: a clear refusal (it was a TypeError)."""
    hea = _write_challenge(tmp_path, "bare", _challenge_val(2.0), checksums=False)
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0], *(" ".join(ln.split()[:6]) for ln in lines[1:13]), *lines[13:]]) + "\n")
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    _one_line_error(exc, "bare.hea", "signal 1", "description", "missing")


def test_sampling_rate_forms_wfdb_allows_are_accepted(tmp_path):
    for fs in ("500.0", "500/500000"):  # decimal, and with a counter frequency
        hea = _copy_challenge(tmp_path, _replace_field(0, 2, fs))
        assert read_wfdb(hea).fs == 500


def test_challenge_record_of_25_s_is_read_whole(tmp_path):
    val = _challenge_val(25.0)
    ecg = read_wfdb(_write_challenge(tmp_path, "long", val))
    assert ecg.signal.shape == (12, 12500) and ecg.duration == 25.0
    np.testing.assert_allclose(ecg.signal, val / 1000.0, atol=1e-6)


def test_a_registered_format_is_read_by_every_command_that_reads_an_ecg(tmp_path):
    """The one registry of readers: a format added here (a tab-separated file of 12 columns in mV, 500 Hz, read by
    hand in this test) is chosen by suffix for read_record, predict's read_input, a folder scan and an upload, and the
    help and error messages name it."""
    from evl_ecg.ecg.readers import Format, format_of, formats_help, read_record, register_format, unregister_format
    from evl_ecg.ecg.signal import Ecg
    from evl_ecg.infer.inputs import expand_inputs, read_input
    from evl_ecg.infer.serve import _pick_input

    def read_tsv(path, index):
        values = np.loadtxt(path, delimiter="\t", dtype=np.float32)
        return Ecg(signal=values.T.copy(), fs=500.0, record_id=path.stem)

    wave = np.round(np.sin(np.linspace(0, 20, 5000))[:, None] * np.linspace(0.1, 1.2, 12)[None], 4)
    path = tmp_path / "one.tsv"
    np.savetxt(path, wave, delimiter="\t", fmt="%.4f")
    register_format(Format("tsv", "a tab-separated file (.tsv)", (".tsv",), (".tsv",), read=read_tsv))
    try:
        assert format_of(path).kind == "tsv" and "a tab-separated file (.tsv)" in formats_help()
        np.testing.assert_allclose(read_record(path).signal, wave.T, atol=1e-6)
        got = read_input(path)
        assert got.kind == "tsv" and got.ecg.signal.shape == (12, 5000)
        (tmp_path / "notes.txt").write_text("x")
        assert expand_inputs([tmp_path])[0] == [str(path)]
        assert _pick_input(["notes.txt", "one.tsv"], None) == "one.tsv"
        with pytest.raises(ValueError, match="suffix .hea already chooses 'wfdb'"):
            register_format(Format("clash", "a clash", (".hea",)))
    finally:
        unregister_format("tsv")
    assert format_of(path) is None
    with pytest.raises(EcgError, match="unknown ECG file type; expected a WFDB record"):
        read_record(path)
