"""Readers for real 12-lead ECGs in their published layouts: WFDB (PhysioNet, Challenge 2020, CPSC-2018),
PTB-XL, CODE-15% (HDF5) and DICOM waveforms; and the one registry of ECG file formats (:func:`register_format`), which
also holds the exports of carts and archives read in :mod:`evl_ecg.ecg.exports` (CSV, EDF/EDF+) and
:mod:`evl_ecg.ecg.xml_exports` (GE MUSE XML, Philips Sierra XML, HL7 aECG).

Every reader returns an :class:`~evl_ecg.ecg.signal.Ecg`: ``12 x n`` float32 in mV, rows in standard lead
order, with the dataset's own labels. A record that cannot be used raises :class:`~evl_ecg.ecg.signal.EcgError`
with one line naming the file (and record) and the reason; a PTB-XL statement code that ``scp_statements.csv`` does
not list raises :class:`~evl_ecg.ecg.labels.UnknownCodeError` naming the file and the code. A Challenge header's
SNOMED CT code outside our table is kept, unmapped (:func:`read_wfdb`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.ecg.checks import ECG_FS_RANGE
from evl_ecg.ecg.checks import check_finite as _check_finite
from evl_ecg.ecg.checks import mv_per_unit as _mv_per_unit
from evl_ecg.ecg.checks import to_standard_order as _to_standard_order
from evl_ecg.ecg.exports import is_csv, is_edf, read_csv, read_edf
from evl_ecg.ecg.labels import (
    CODE15_COLUMNS,
    CODE15_LABELS,
    PTBXL_SUPERCLASSES,
    SNOMED,
    UnknownCodeError,
    cpsc_labels_from_snomed,
    findings_from_code15,
    findings_from_snomed,
)
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg, EcgError
from evl_ecg.ecg.xml_exports import is_aecg, is_muse, is_philips, read_aecg, read_muse, read_philips

__all__ = [
    "CODE15_FS",
    "CODE15_SCALE_TO_MV",
    "ECG_FS_RANGE",
    "iter_ptbxl",
    "read_aecg",
    "read_code15",
    "read_csv",
    "read_dicom",
    "read_edf",
    "read_muse",
    "read_philips",
    "read_ptbxl",
    "read_record",
    "read_wfdb",
]

#: CODE-15% sampling rate (Hz) and the factor that takes its stored values to mV. The dataset's README says the
#: tracings are "at the scale 1e-4V: so if the signal is in V it should be multiplied by 1000", i.e. values in
#: mV (a QRS of about 1 unit); we follow the multiply-by-1000 reading, so the factor is 1.
CODE15_FS: float = 400.0
CODE15_SCALE_TO_MV: float = 1.0


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _parse_comments(comments: Iterable[str]) -> dict[str, str]:
    """``'# Key: value'`` header comments -> ``{'key': 'value'}`` (keys lower-cased)."""
    out: dict[str, str] = {}
    for line in comments:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------------
# WFDB
# --------------------------------------------------------------------------------------------------


def _wfdb_base(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix in {".hea", ".dat", ".mat"}:
        p = p.with_suffix("")
    return p


#: Bytes per sample of the WFDB storage formats whose data size we can check before reading.
_WFDB_BYTES_PER_SAMPLE: dict[str, float] = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5}


def _field_error(source: str, where: str, field: str, value: str | None, problem: str) -> EcgError:
    """One line: file, where in the header, field, value as written (or 'missing'), what is wrong."""
    shown = "missing" if value is None else repr(value)
    return EcgError(f"{source}: {where}: {field} {shown}: {problem}")


def _check_record_line(lines: list[str], source: str) -> bool:
    """Check the record line and the number of signal lines of a header's non-comment ``lines`` as written.

    wfdb's parser turns what it cannot read into defaults (a sampling frequency of ``abc`` or ``-500`` becomes
    250 Hz, an ADC gain of 0 becomes 200), so the raw text is checked first. Returns whether the record is
    single-segment (its signal lines are then checked by :func:`_check_signal_lines`).
    """
    if not lines:
        raise EcgError(f"{source}: empty header (no record line)")
    fields = lines[0].split()
    where = "record line"
    multi = "/" in fields[0]
    n_sig = fields[1] if len(fields) > 1 else None
    if n_sig is None or not n_sig.isdigit():
        raise _field_error(source, where, "number of signals", n_sig, "not a whole number")
    fs_text = fields[2].split("/")[0] if len(fields) > 2 else None  # fs[/counter_freq[(base_counter)]]
    if fs_text is None:
        raise _field_error(
            source, where, "sampling frequency", None, "an ECG header must state it (wfdb would assume 250 Hz)"
        )
    try:
        fs = float(fs_text)
    except ValueError:
        raise _field_error(source, where, "sampling frequency", fs_text, "not a number (Hz)") from None
    if not np.isfinite(fs) or fs <= 0:
        raise _field_error(source, where, "sampling frequency", fs_text, "not a positive number (Hz)")
    if not re.fullmatch(r"\d+\.?\d*|\.\d+", fs_text):
        raise _field_error(source, where, "sampling frequency", fs_text, "not a plain decimal number (WFDB syntax)")
    lo, hi = ECG_FS_RANGE
    if not lo <= fs <= hi:
        raise _field_error(
            source, where, "sampling frequency", fs_text, f"outside {lo:g}-{hi:g} Hz, not an ECG sampling rate"
        )
    if len(fields) > 3 and not multi:
        length = fields[3]
        if not length.isdigit():
            raise _field_error(source, where, "number of samples", length, "not a whole number")
        if int(length) == 0:
            raise _field_error(source, where, "number of samples", length, "zero: the record holds no samples")
    if not multi and int(n_sig) == 0:
        why = "zero: an ECG header has one signal line per lead"
        raise _field_error(source, where, "number of signals", n_sig, why)
    if not multi and len(lines) - 1 != int(n_sig):
        raise _field_error(source, where, "number of signals", n_sig, f"the header has {len(lines) - 1} signal lines")
    if multi:
        n_seg = fields[0].split("/", 1)[1]
        if not n_seg.isdigit() or int(n_seg) == 0:
            raise _field_error(source, where, "number of segments", n_seg, "not a whole number above 0")
        if len(lines) - 1 != int(n_seg):
            raise _field_error(
                source, where, "number of segments", n_seg, f"the header has {len(lines) - 1} segment lines"
            )
    return not multi


def _check_signal_lines(lines: list[str], names: list[str | None], source: str) -> None:
    """Each signal line's ADC gain (as written) and description (as wfdb parsed it): present and usable."""
    for k, (line, name) in enumerate(zip(lines, names, strict=True), start=1):
        label = f"signal {k}" + (f" ({name.strip()})" if name and name.strip() else "")
        fields = line.split()
        gain_text = re.split(r"[(/]", fields[2], maxsplit=1)[0] if len(fields) > 2 else None
        if gain_text is None:
            raise _field_error(source, label, "ADC gain", None, "an ECG header must state it (wfdb would assume 200)")
        try:
            gain = float(gain_text)
        except ValueError:
            raise _field_error(
                source, label, "ADC gain", gain_text, "not a number (ADC units per physical unit)"
            ) from None
        if gain == 0 or not np.isfinite(gain):
            raise _field_error(source, label, "ADC gain", gain_text, "zero or not finite (wfdb would silently use 200)")
        if not name or not name.strip():
            raise _field_error(source, label, "description", None, "each signal line must name its lead")


def _read_header(base: Path, source: str) -> Any:
    """The record's header, checked as written (:func:`_check_record_line`) and as wfdb parses it."""
    import wfdb

    try:
        text = base.with_suffix(".hea").read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EcgError(f"{source}: cannot read header ({type(exc).__name__}: {exc})") from None
    # As wfdb splits a header: stripped non-empty lines; those starting with '#' are comments.
    lines = [ln for ln in (raw.strip() for raw in text.splitlines()) if ln and not ln.startswith("#")]
    single = _check_record_line(lines, source)
    try:
        head = wfdb.rdheader(str(base))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EcgError(f"{source}: cannot parse WFDB header ({type(exc).__name__}: {reason})") from None
    if single:
        _check_signal_lines(lines[1:], list(head.sig_name or [None] * (len(lines) - 1)), source)
    return head


def _check_data_size(base: Path, head: Any, source: str) -> None:
    """Compare each data file's size with what the header implies (truncated file / header-data mismatch)."""
    if getattr(head, "n_seg", None) or not head.file_name or head.sig_len is None:
        return  # multi-segment records and headers without signals are left to wfdb
    per_file: dict[str, list[int]] = {}
    for i, name in enumerate(head.file_name):
        per_file.setdefault(name, []).append(i)
    for name, chans in per_file.items():
        fmts = {str(head.fmt[i]) for i in chans}
        if len(fmts) != 1 or next(iter(fmts)) not in _WFDB_BYTES_PER_SAMPLE:
            continue
        spf = sum(int((head.samps_per_frame or [1] * head.n_sig)[i] or 1) for i in chans)
        offset = int((head.byte_offset or [0] * head.n_sig)[chans[0]] or 0)
        need = int(np.ceil(head.sig_len * spf * _WFDB_BYTES_PER_SAMPLE[next(iter(fmts))])) + offset
        data = base.parent / name
        if not data.is_file():
            raise EcgError(f"{source}: data file {name} not found")
        have = data.stat().st_size
        if have < need:
            raise EcgError(
                f"{source}: data file {name} has {have} bytes, the header needs {need} "
                f"({head.sig_len} samples x {len(chans)} signals): truncated file or header/data mismatch"
            )


_SNOMED_CODE = re.compile(r"[0-9]{1,18}")


def _dx_codes(field: str, source: str) -> tuple[str, ...]:
    """The SNOMED CT codes of a ``# Dx:`` field (``'59118001,426783006'``); anything but digits is refused."""
    codes = tuple(c.strip() for c in field.split(",") if c.strip())
    for code in codes:
        if not _SNOMED_CODE.fullmatch(code):
            raise EcgError(
                f"{source}: field Dx: {code[:40]!r} is not a SNOMED CT code (the field holds comma-separated digits)"
            )
    return codes


def read_wfdb(header_path: str | Path) -> Ecg:
    """Read any 12-lead WFDB record (header path with or without ``.hea``).

    Leads are matched by name (:func:`~evl_ecg.ecg.leads.canonical_lead_name`) and put in standard order; each
    lead's physical unit (``mV``, ``uV``, ``V``) is converted to mV; per-signal checksums in the header are
    verified against the data, modulo 65,536 (headers write them signed, the Challenge's ``-1716`` is the sum
    ``63820``); a header without checksums is read unchecked (``meta['checksums_verified']`` says which). The header
    text is checked before wfdb parses it, because wfdb replaces what it cannot read by defaults: the sampling
    frequency must be a number in :data:`ECG_FS_RANGE`, the length (when given) non-zero, there must be at least one
    signal and one signal line per signal (one segment line per segment in a multi-segment header), each with a
    non-zero ADC gain and a description (the lead name). Header comments
    ``# Key: value`` go to ``meta`` (keys lower-cased); a Challenge 2020/2021 / CPSC-2018 ``# Dx:`` line of SNOMED CT
    codes gives ``labels['snomed']`` (every code, as written), and ``labels['cpsc']`` and ``findings`` from the codes
    :data:`~evl_ecg.ecg.labels.SNOMED` knows. A code it does not know (the 2021 folders use many) does not stop the
    read, since the signal does not depend on it: it gives no label and is listed in ``meta['snomed_unknown']``.

    Raises:
        EcgError: missing/truncated files, header/data mismatch (length, checksum), implausible or missing header
            fields (one line: file, field, value, what is wrong), unknown units or leads, not exactly the 12
            standard leads, NaN samples, a ``# Dx:`` field that is not SNOMED CT codes (digits, comma-separated).
    """
    import wfdb

    base = _wfdb_base(header_path)
    source = str(base.with_suffix(".hea"))
    if not base.with_suffix(".hea").is_file():
        raise EcgError(f"{source}: no such WFDB header")
    _check_data_size(base, _read_header(base, source), source)
    try:
        rec = wfdb.rdrecord(str(base), physical=False, return_res=64)
    except Exception as exc:  # wfdb raises ValueError/IndexError/OSError for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EcgError(f"{source}: cannot read WFDB record ({type(exc).__name__}: {reason})") from None
    names = list(rec.sig_name or [])
    if rec.d_signal is None or rec.d_signal.ndim != 2 or rec.d_signal.shape[1] != len(names):
        raise EcgError(f"{source}: header lists {len(names)} signals but the data do not match")
    # Checksums are 16-bit: headers write them signed (the Challenge: -1716), wfdb sums modulo 65536 (63820).
    wanted = list(rec.checksum or [None] * len(names))
    actual = rec.calc_checksum()
    bad = [n for n, want, got in zip(names, wanted, actual, strict=True) if want is not None and (want - got) % 65536]
    if bad:
        raise EcgError(f"{source}: checksum mismatch in lead(s) {', '.join(bad)} (data do not match the header)")
    checked = any(want is not None for want in wanted)
    phys = rec.dac(expanded=False, return_res=64, inplace=False).T  # channels x n, NaN where invalid
    units = list(rec.units or [""] * len(names))
    scale = np.array([_mv_per_unit(u, source, n) for u, n in zip(units, names, strict=True)])[:, None]
    signal = _to_standard_order(phys * scale, names, source)
    _check_finite(signal, source)
    comments = _parse_comments(rec.comments or [])
    labels: dict[str, tuple[str, ...]] = {}
    findings: frozenset[str] = frozenset()
    unknown: list[str] = []
    if "dx" in comments:
        codes = _dx_codes(comments["dx"], source)
        known = [c for c in codes if c in SNOMED]
        unknown = [c for c in codes if c not in SNOMED]
        findings = findings_from_snomed(known, source=source)
        labels = {"snomed": codes, "cpsc": cpsc_labels_from_snomed(known, source=source)}
    meta: dict[str, Any] = {
        "source": source,
        "units": units,
        "comments": list(rec.comments or []),
        "checksums_verified": checked,
    }
    if unknown:
        meta["snomed_unknown"] = unknown
    meta.update({k: v for k, v in comments.items() if k != "dx"})
    return Ecg(
        signal=np.ascontiguousarray(signal, dtype=np.float32),
        fs=float(rec.fs),
        record_id=base.name,
        findings=findings,
        labels=labels,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------------
# PTB-XL
# --------------------------------------------------------------------------------------------------

#: PTB-XL SCP-ECG statements with a canonical finding (every statement of diagnostic class MI also gives MI).
_FINDING_OF_SCP: dict[str, str] = {
    "SR": "SR",
    "SBRAD": "SB",
    "STACH": "STACH",
    "AFIB": "AF",
    "1AVB": "IAVB",
    "CRBBB": "RBBB",
    "CLBBB": "LBBB",
    "LVH": "LVH",
    "PAC": "PAC",
    "PVC": "PVC",
    "STD_": "STD",
    "INVT": "TINV",
}


@lru_cache(maxsize=4)
def _ptbxl_tables(root: str, stamp: tuple[int, int]) -> tuple[Any, Any]:
    import pandas as pd

    del stamp  # part of the cache key only (files changed -> re-read)
    db = pd.read_csv(Path(root) / "ptbxl_database.csv", index_col="ecg_id")
    statements = pd.read_csv(Path(root) / "scp_statements.csv", index_col=0)
    return db, statements


def _load_ptbxl(root: str | Path) -> tuple[Any, Any]:
    root_p = Path(root)
    files = [root_p / "ptbxl_database.csv", root_p / "scp_statements.csv"]
    for f in files:
        if not f.is_file():
            raise EcgError(f"{f}: not found; a PTB-XL root holds ptbxl_database.csv and scp_statements.csv")
    stamp = (files[0].stat().st_mtime_ns, files[1].stat().st_mtime_ns)
    try:
        db, statements = _ptbxl_tables(str(root_p.resolve()), stamp)
    except Exception as exc:
        raise EcgError(f"{root_p}: cannot read the PTB-XL tables ({type(exc).__name__}: {exc})") from None
    need_db = {"scp_codes", "filename_lr", "filename_hr", "strat_fold"}
    need_st = {"diagnostic", "diagnostic_class"}
    lacking = sorted((need_db - set(db.columns)) | (need_st - set(statements.columns)))
    if lacking:
        raise EcgError(f"{root_p}: PTB-XL tables lack column(s) {', '.join(lacking)}")
    return db, statements


def _ptbxl_labels(scp: dict[str, float], statements: Any, source: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """Diagnostic superclasses (PTB-XL's own aggregation: statements with ``diagnostic == 1`` -> their
    ``diagnostic_class``, whatever the likelihood) and canonical findings of one record's SCP codes."""
    classes: set[str] = set()
    findings: set[str] = set()
    for code in scp:
        if code not in statements.index:
            raise UnknownCodeError(f"{source}: unknown SCP-ECG code {code!r} (not in scp_statements.csv)")
        row = statements.loc[code]
        if row["diagnostic"] == 1 and isinstance(row["diagnostic_class"], str):
            classes.add(row["diagnostic_class"])
            if row["diagnostic_class"] == "MI":
                findings.add("MI")
        if code in _FINDING_OF_SCP:
            findings.add(_FINDING_OF_SCP[code])
    return tuple(c for c in PTBXL_SUPERCLASSES if c in classes), frozenset(findings)


def read_ptbxl(root: str | Path, ecg_id: int, *, rate: int = 500) -> Ecg:
    """Read PTB-XL record ``ecg_id`` from ``root`` (``ptbxl_database.csv``, ``scp_statements.csv``,
    ``records500/`` or ``records100/``).

    ``rate`` 500 reads ``filename_hr``, 100 reads ``filename_lr``. ``labels['ptbxl']`` holds the diagnostic
    superclasses in :data:`~evl_ecg.ecg.labels.PTBXL_SUPERCLASSES` order; ``findings`` the canonical findings
    of the SCP codes that have one; ``meta`` the database row (``scp_codes`` as a dict, ``strat_fold``, age, sex,
    report, ...).
    """
    db, statements = _load_ptbxl(root)
    return _ptbxl_record(Path(root), db, statements, int(ecg_id), rate)


def _ptbxl_record(root: Path, db: Any, statements: Any, ecg_id: int, rate: int) -> Ecg:
    csv = root / "ptbxl_database.csv"
    if rate not in (100, 500):
        raise EcgError(f"{csv}: rate must be 100 or 500 Hz, got {rate}")
    if ecg_id not in db.index:
        raise EcgError(f"{csv}: ecg_id {ecg_id} not found")
    row = db.loc[ecg_id]
    source = f"{csv} ecg_id {ecg_id}"
    try:
        scp = ast.literal_eval(row["scp_codes"])
        if not isinstance(scp, dict):
            raise ValueError("not a dict")
    except (ValueError, SyntaxError):
        raise EcgError(f"{source}: scp_codes {row['scp_codes']!r} is not a dict literal") from None
    superclasses, findings = _ptbxl_labels(scp, statements, source)
    ecg = read_wfdb(root / row["filename_hr" if rate == 500 else "filename_lr"])
    if abs(ecg.fs - rate) > 1e-6:
        raise EcgError(f"{ecg.meta['source']}: sampling rate {ecg.fs} Hz, expected {rate} Hz")
    meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    meta.update(ecg_id=ecg_id, scp_codes=scp, source=ecg.meta["source"], units=ecg.meta["units"])
    return Ecg(
        signal=ecg.signal,
        fs=ecg.fs,
        record_id=f"ptbxl/{ecg_id:05d}",
        findings=findings,
        labels={"ptbxl": superclasses},
        meta=meta,
    )


def iter_ptbxl(root: str | Path, *, rate: int = 500, folds: Iterable[int] | None = None) -> Iterator[Ecg]:
    """PTB-XL records in ``ecg_id`` order, optionally only those whose ``strat_fold`` is in ``folds``
    (PTB-XL's recommended split: folds 1-8 train, 9 validation, 10 test)."""
    db, statements = _load_ptbxl(root)
    ids = db.index if folds is None else db.index[db["strat_fold"].isin(set(folds))]
    for ecg_id in sorted(int(i) for i in ids):
        yield _ptbxl_record(Path(root), db, statements, ecg_id, rate)


# --------------------------------------------------------------------------------------------------
# CODE-15%
# --------------------------------------------------------------------------------------------------


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "1.0", "yes"}
    return bool(value)


def read_code15(hdf5_path: str | Path, index: int, *, exams_csv: str | Path | None = None) -> Ecg:
    """Read exam ``index`` of a CODE-15% HDF5 part (``tracings`` ``N x 4096 x 12`` at 400 Hz, ``exam_id`` ``N``).

    The zero padding the dataset adds at both ends to reach 4096 samples (exams of 7 s or 10 s) is stripped:
    leading and trailing samples where all 12 leads are exactly 0. Values are taken as mV
    (:data:`CODE15_SCALE_TO_MV`). Leads are stored in standard order (DI, DII, DIII, AVR, AVL, AVF, V1-V6).
    With ``exams.csv`` (given, or next to the HDF5 file) the exam's six boolean columns give
    ``labels['code15']`` and ``findings`` (:func:`~evl_ecg.ecg.labels.findings_from_code15`), the other columns
    go to ``meta``.
    """
    import h5py

    path = Path(hdf5_path)
    source = f"{path}[{index}]"
    if not path.is_file():
        raise EcgError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as h5:
            for key in ("tracings", "exam_id"):
                if key not in h5:
                    raise EcgError(f"{path}: no '{key}' dataset; a CODE-15% file holds 'tracings' and 'exam_id'")
            tracings, exam_ids = h5["tracings"], h5["exam_id"]
            if tracings.ndim != 3 or tracings.shape[2] != len(LEADS):
                raise EcgError(f"{path}: 'tracings' has shape {tracings.shape}, expected N x samples x 12")
            if exam_ids.shape[0] != tracings.shape[0]:
                raise EcgError(f"{path}: {exam_ids.shape[0]} exam_ids for {tracings.shape[0]} tracings")
            if not 0 <= index < tracings.shape[0]:
                raise EcgError(f"{path}: index {index} out of range (0-{tracings.shape[0] - 1})")
            raw = np.asarray(tracings[index], dtype=np.float64).T  # 12 x 4096
            exam_id = int(exam_ids[index])
    except EcgError:
        raise
    except Exception as exc:  # h5py raises OSError for broken files
        raise EcgError(f"{path}: cannot read HDF5 ({type(exc).__name__}: {exc})") from None
    _check_finite(raw, source)
    nonzero = np.nonzero(np.any(raw != 0, axis=0))[0]
    if nonzero.size < 2:
        raise EcgError(f"{source}: exam {exam_id} is all zeros (padding only)")
    start, stop = int(nonzero[0]), int(nonzero[-1]) + 1
    signal = raw[:, start:stop] * CODE15_SCALE_TO_MV
    meta: dict[str, Any] = {
        "source": str(path),
        "index": index,
        "exam_id": exam_id,
        "pad_start": start,
        "pad_end": raw.shape[1] - stop,
    }
    labels: dict[str, tuple[str, ...]] = {}
    findings: frozenset[str] = frozenset()
    csv_path = Path(exams_csv) if exams_csv is not None else path.parent / "exams.csv"
    if exams_csv is not None or csv_path.is_file():
        row = _code15_row(csv_path, exam_id)
        flags = {label: _flag(row[label]) for label in CODE15_COLUMNS}
        labels = {"code15": tuple(label for label in CODE15_LABELS if flags[label])}
        findings = findings_from_code15(flags)
        meta.update({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k not in CODE15_COLUMNS})
    return Ecg(
        signal=np.ascontiguousarray(signal, dtype=np.float32),
        fs=CODE15_FS,
        record_id=f"code15/{exam_id}",
        findings=findings,
        labels=labels,
        meta=meta,
    )


@lru_cache(maxsize=4)
def _code15_table(path: str, stamp: int) -> Any:
    import pandas as pd

    del stamp
    return pd.read_csv(path)


def _code15_row(csv_path: Path, exam_id: int) -> Any:
    if not csv_path.is_file():
        raise EcgError(f"{csv_path}: no such exams.csv")
    table = _code15_table(str(csv_path.resolve()), csv_path.stat().st_mtime_ns)
    missing = [c for c in ("exam_id", *CODE15_COLUMNS) if c not in table.columns]
    if missing:
        raise EcgError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    rows = table[table["exam_id"] == exam_id]
    if len(rows) != 1:
        raise EcgError(f"{csv_path}: exam_id {exam_id} found {len(rows)} times, expected once")
    return rows.iloc[0]


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


def _dicom_lead_name(channel: Any) -> str:
    """'Lead I (Einthoven)' / 'Lead aVR' / channel label -> the name as written, parenthetical removed."""
    name = ""
    if "ChannelSourceSequence" in channel and len(channel.ChannelSourceSequence):
        name = str(channel.ChannelSourceSequence[0].get("CodeMeaning", ""))
    if not name:
        name = str(channel.get("ChannelLabel", ""))
    return re.sub(r"\s*\(.*\)\s*$", "", name).strip()


def read_dicom(path: str | Path) -> Ecg:
    """Read a 12-lead ECG DICOM waveform (pydicom): the first multiplex group of ``WaveformSequence`` with all
    12 standard leads (a ``RHYTHM`` group before a ``MEDIAN BEAT`` one).

    Samples are scaled by pydicom (channel sensitivity, correction factor, baseline) and converted from each
    channel's sensitivity unit (``uV``, ``mV``, ``V``) to mV; leads are named from the channel source's code
    meaning (``'Lead I (Einthoven)'`` -> ``'I'``).
    """
    import pydicom

    p = Path(path)
    source = str(p)
    try:
        ds = pydicom.dcmread(p)
    except Exception as exc:
        raise EcgError(f"{source}: cannot read DICOM ({type(exc).__name__}: {exc})") from None
    if "WaveformSequence" not in ds or not len(ds.WaveformSequence):
        raise EcgError(f"{source}: no WaveformSequence (not a DICOM waveform)")
    groups = list(ds.WaveformSequence)
    order = sorted(range(len(groups)), key=lambda i: str(groups[i].get("MultiplexGroupLabel", "")).upper() != "RHYTHM")
    problems: list[str] = []
    for gi in order:
        group = groups[gi]
        channels = list(group.get("ChannelDefinitionSequence", []))
        names = [_dicom_lead_name(ch) for ch in channels]
        label = str(group.get("MultiplexGroupLabel", gi))
        try:
            arr = ds.waveform_array(gi).T.astype(np.float64)  # channels x n, sensitivity applied
            if arr.shape[0] != len(names):
                raise EcgError(f"group {label}: {arr.shape[0]} channels but {len(names)} definitions")
            units = [
                str(ch.ChannelSensitivityUnitsSequence[0].CodeValue) if "ChannelSensitivityUnitsSequence" in ch else ""
                for ch in channels
            ]
            scale = np.array([_mv_per_unit(u, f"group {label}", n) for u, n in zip(units, names, strict=True)])
            signal = _to_standard_order(arr * scale[:, None], names, f"group {label}")
        except EcgError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:
            problems.append(f"group {label}: {type(exc).__name__}: {exc}")
            continue
        _check_finite(signal, source)
        fs = float(group.SamplingFrequency)
        meta = {
            "source": source,
            "multiplex_group": label,
            "units": units,
            "patient_age": str(ds.get("PatientAge", "")),
            "patient_sex": str(ds.get("PatientSex", "")),
        }
        return Ecg(
            signal=np.ascontiguousarray(signal, dtype=np.float32),
            fs=fs,
            record_id=p.stem,
            meta=meta,
        )
    raise EcgError(f"{source}: no 12-lead waveform group ({'; '.join(problems)})")


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One kind of ECG file a command can read, in the registry every command takes its formats from.

    Attributes:
        kind: its name (``wfdb``, ``dicom``, ``code15``, ``image``), what a read input reports as its kind.
        label: how help and error messages name it (``"a WFDB record (.hea)"``).
        suffixes: the (lower-case) suffixes that choose it.
        entries: those of ``suffixes`` a folder scan or an upload takes as one ECG (the others, such as a WFDB
            record's ``.dat`` / ``.mat``, belong to an entry: ``companions``).
        companions: suffixes that belong to an entry file and are never read alone.
        needs_index: the file holds many exams and a reader needs one named (``FILE:EXAM_ID``).
        read: ``(path, index) -> Ecg``; ``None`` for a format a later stage reads itself (images, by ``infer``).
        sniff: ``path -> bool``, the content check: it chooses among formats that share a suffix (``.xml``), finds
            the format of a file whose suffix chooses none (a DICOM file without ``.dcm``), and tells a folder scan
            which files of its suffix are ECGs (``.csv``: a table of leads, not CODE-15%'s ``exams.csv``);
            ``None``: suffix only.
    """

    kind: str
    label: str
    suffixes: tuple[str, ...]
    entries: tuple[str, ...] = ()
    companions: tuple[str, ...] = ()
    needs_index: bool = False
    read: Callable[[Path, int | None], Ecg] | None = None
    sniff: Callable[[Path], bool] | None = None


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a format (its reader, suffixes and content check): every command that reads an ECG then takes it.

    A suffix chooses one format, unless every format that claims it has a content check (``sniff``): then the
    content decides among them (``.xml``: GE MUSE, Philips and HL7 aECG by their root elements; :func:`format_of`).
    """
    if fmt.kind in _FORMATS and _FORMATS[fmt.kind] != fmt:
        raise ValueError(f"format {fmt.kind!r} is already registered")
    taken: dict[str, str] = {}
    for f in _FORMATS.values():
        if f.kind != fmt.kind and (f.sniff is None or fmt.sniff is None):
            for sfx in f.suffixes + f.companions:
                taken.setdefault(sfx, f.kind)
    clash = sorted(sfx for sfx in fmt.suffixes + fmt.companions if sfx in taken)
    if clash:
        raise ValueError(f"format {fmt.kind!r}: suffix {clash[0]} already chooses {taken[clash[0]]!r}")
    _FORMATS[fmt.kind] = fmt
    return fmt


def unregister_format(kind: str) -> None:
    """Remove a format a plugin or a test registered (a name not registered is ignored)."""
    _FORMATS.pop(kind, None)


def formats() -> tuple[Format, ...]:
    """The registered formats, in registration order."""
    return tuple(_FORMATS.values())


def formats_help(signals: bool = False) -> str:
    """The formats as one phrase for help and errors: ``"a WFDB record (.hea), ... or an image (.png, .jpg)"``;
    ``signals``: only those this stage reads into a signal (not images)."""
    labels = [f.label for f in formats() if f.read is not None or not signals]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"


def format_of(path: str | Path) -> Format | None:
    """The format that reads ``path``: by its suffix (an entry's or a companion's), then a WFDB base name (its
    ``.hea`` beside it), then each format's content check; ``None`` when none does.

    A suffix that several formats share (``.xml``) goes to the first of them whose content check says yes; when none
    does, to the first of them, whose reader then says in one line what the file is not (its root element)."""
    p = Path(path)
    suffix = p.suffix.lower()
    shared = [fmt for fmt in formats() if suffix and suffix in fmt.suffixes + fmt.companions]
    if len(shared) == 1:
        return shared[0]
    if shared:
        return next((fmt for fmt in shared if fmt.sniff is not None and p.is_file() and fmt.sniff(p)), shared[0])
    if not suffix and Path(f"{p}.hea").is_file():
        return _FORMATS.get("wfdb")
    for fmt in formats():
        if fmt.sniff is not None and p.is_file() and fmt.sniff(p):
            return fmt
    return None


def is_dicom(path: Path) -> bool:
    """A DICOM file: the four bytes ``DICM`` after its 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


register_format(Format("wfdb", "a WFDB record (.hea)", (".hea",), (".hea",), (".dat", ".mat"),
                       read=lambda p, index: read_wfdb(p)))  # fmt: skip
register_format(Format("dicom", "a DICOM waveform (.dcm)", (".dcm",), (".dcm",),
                       read=lambda p, index: read_dicom(p), sniff=is_dicom))  # fmt: skip
register_format(Format("code15", "a CODE-15% HDF5 file (.hdf5, .h5)", (".hdf5", ".h5"), (".hdf5", ".h5"),
                       needs_index=True, read=lambda p, index: read_code15(p, index)))  # fmt: skip
# Exports of ECG carts and archives (evl_ecg.ecg.exports, evl_ecg.ecg.xml_exports; docs/data.md "ECG file formats").
# The three XML formats share .xml: their content checks (the root element) choose among them.
register_format(Format("csv", "a CSV file of the 12 leads (.csv)", (".csv",), (".csv",),
                       read=lambda p, index: read_csv(p), sniff=is_csv))  # fmt: skip
register_format(Format("edf", "an EDF/EDF+ file (.edf)", (".edf",), (".edf",),
                       read=lambda p, index: read_edf(p), sniff=is_edf))  # fmt: skip
register_format(Format("muse", "a GE MUSE XML file (.xml)", (".xml",), (".xml",),
                       read=lambda p, index: read_muse(p), sniff=is_muse))  # fmt: skip
register_format(Format("philips", "a Philips Sierra XML file (.xml)", (".xml",), (".xml",),
                       read=lambda p, index: read_philips(p), sniff=is_philips))  # fmt: skip
register_format(Format("aecg", "an HL7 aECG file (.xml)", (".xml",), (".xml",),
                       read=lambda p, index: read_aecg(p), sniff=is_aecg))  # fmt: skip


def read_record(path: str | Path, index: int | None = None) -> Ecg:
    """Read one ECG with the reader its format chooses (:func:`format_of`); ``index``: the exam of a file that holds
    many (CODE-15% HDF5)."""
    p = Path(path)
    fmt = format_of(p)
    if fmt is None or fmt.read is None:
        raise EcgError(f"{p}: unknown ECG file type; expected {formats_help(signals=True)}")
    if fmt.needs_index and index is None:
        raise EcgError(f"{p}: an HDF5 file holds many exams; give index")
    if not fmt.needs_index and index is not None:
        raise EcgError(f"{p}: index is only meaningful for a file that holds many exams")
    return fmt.read(p, index)
