"""Readers for two plain export layouts of a 12-lead ECG: CSV (one column per lead) and EDF/EDF+ (``edfio``).

Both return an :class:`~evl_ecg.ecg.signal.Ecg` (``12 x n`` float32 in mV, standard lead order); a file that cannot
be used raises :class:`~evl_ecg.ecg.signal.EcgError` with one line naming the file and the field. They are registered
in :mod:`evl_ecg.ecg.readers` (``csv``, ``edf``). Nothing about the patient is read: an EDF header's patient and
recording identification and a CSV's comment lines other than the ones below never reach the returned ``Ecg``.

**CSV** (``read_csv``). A header row names the columns; lines before it that start with ``#`` are comments, of which
``# fs: 500`` (or ``sampling_frequency`` / ``sampling_rate``, an optional ``Hz``) and ``# units: uV`` are read and
the others ignored. The delimiter is the header's most frequent of ``,`` ``;`` and tab; the decimal point is ``.``.

* one column per lead, named by the lead: ``I II III aVR aVL aVF V1 ... V6``, case-insensitive (``AVR``, ``v1``),
  ``Lead II`` and ``ECG II`` too; each of the 12 exactly once;
* the **amplitude unit** of a lead column is its name's unit suffix, ``II_uV`` or ``II (uV)`` / ``II [µV]`` (mV, uV,
  µV, V); a column without one is in the ``# units:`` comment's unit, else in **mV**;
* an optional **time column** ``time``, ``t`` or ``time_s`` (seconds), ``time_ms`` (milliseconds), or ``time (ms)``:
  strictly increasing at an even step, it gives the sampling rate (``(n - 1) / (t_last - t_first)``); without one the
  rate comes from ``read_csv(path, fs=...)`` or the ``# fs:`` comment, and a file with neither is refused (no rate
  is assumed); two sources that disagree are refused;
* an optional ``sample`` or ``index`` column is ignored; any other column is refused by name.

``is_csv`` is the registry's content check (a cheap one: the header row of the first 64 KiB): a CSV file is an ECG
when at least half of its columns, time and index columns aside, name a lead, so that a folder scan leaves a table of
other things (CODE-15%'s ``exams.csv``: ``exam_id,age,is_male,...``) aside instead of reporting it as a broken ECG.

**EDF/EDF+** (``read_edf``, with ``edfio``): signals named as leads (``ECG I``, ``I``, ``Lead II``, ``EKG V1``,
``aVR``...; :func:`~evl_ecg.ecg.checks.lead_of_label`), the EDF+ annotation signal aside; physical dimension ``mV``,
``uV``, ``µV`` or ``V`` applied to the physical values edfio computes from the digital ones; one sampling rate for
the 12 leads; an EDF+D (discontinuous) file is refused.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.ecg.checks import (
    MAX_CHANNELS,
    MAX_SAMPLES,
    MAX_TEXT_BYTES,
    MV_PER_UNIT,
    assemble_leads,
    check_amplitude,
    check_file_size,
    check_finite,
    check_fs,
    lead_of_label,
    mv_per_unit,
    require,
)
from evl_ecg.ecg.signal import Ecg, EcgError

__all__ = ["CSV_TIME_COLUMNS", "MAX_EDF_BYTES", "is_csv", "is_edf", "read_csv", "read_edf"]

#: Time column names (lower case) and seconds per unit of each.
CSV_TIME_COLUMNS: dict[str, float] = {
    "time": 1.0,
    "t": 1.0,
    "time_s": 1.0,
    "time (s)": 1.0,
    "time [s]": 1.0,
    "time_ms": 1e-3,
    "time (ms)": 1e-3,
    "time [ms]": 1e-3,
}
_INDEX_COLUMNS = {"sample", "index"}
_FS_KEYS = {"fs", "sampling_frequency", "sampling frequency", "sampling_rate", "sampling rate"}
_UNIT_KEYS = {"units", "unit"}
#: ``II (uV)``, ``II [µV]``, ``II_uV``: a lead name and its unit.
_COLUMN_UNIT = re.compile(r"^(?P<name>.+?)\s*(?:[(\[]\s*(?P<bracket>[^)\]]*?)\s*[)\]]|_(?P<suffix>[a-zA-Zµμ]+))$")
#: The longest column name read (a lead with its unit is a dozen characters).
_MAX_COLUMN_NAME = 64
#: The rate a time column may differ from a stated rate by, and its steps from their mean (relative).
_RATE_TOLERANCE = 0.005
_STEP_TOLERANCE = 0.01
#: An EDF file is read lazily; this bounds its size (its samples are bounded by MAX_SAMPLES per lead).
MAX_EDF_BYTES: int = 2 * 1024 * 1024 * 1024


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def _csv_column_unit(header: str, default_unit: str, source: str) -> tuple[str, str]:
    """A lead column's header -> (lead name as written, unit); the unit of ``II_uV`` / ``II (uV)`` or the default."""
    match = _COLUMN_UNIT.match(header.strip())
    if match:
        unit = match.group("bracket") if match.group("bracket") is not None else match.group("suffix")
        if unit is not None and unit.strip().lower() in MV_PER_UNIT:
            return match.group("name").strip(), unit.strip()
        if match.group("bracket") is not None:
            raise EcgError(f"{source}: column {header!r}: unit {unit!r}; expected mV, uV, µV or V")
    return header.strip(), default_unit


def _csv_rate(value: str, source: str, field: str) -> float:
    text = value.strip()
    number = text[:-2].strip() if text.lower().endswith("hz") else text
    try:
        fs = float(number)
    except ValueError:
        raise EcgError(f"{source}: {field} {text!r}: not a number (Hz)") from None
    return check_fs(fs, source, field, text)


def _csv_numbers(cells: list[str], column: str, source: str) -> np.ndarray:
    try:
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        for i, cell in enumerate(cells):
            try:
                float(cell)
            except ValueError:
                raise EcgError(f"{source}: data row {i + 1}, column {column!r}: {cell!r} is not a number") from None
        raise


def _csv_time_rate(t: np.ndarray, column: str, source: str) -> float:
    steps = np.diff(t)
    if np.any(steps <= 0):
        row = int(np.nonzero(steps <= 0)[0][0]) + 1
        raise EcgError(f"{source}: column {column!r}: time does not increase at data row {row + 1}")
    mean = (t[-1] - t[0]) / (len(t) - 1)
    worst = float(np.max(np.abs(steps - mean)) / mean)
    if worst > _STEP_TOLERANCE:
        raise EcgError(
            f"{source}: column {column!r}: uneven time steps (one is {worst:.1%} off the mean step {mean:g} s); "
            "an ECG is sampled at one rate"
        )
    return check_fs(round(1.0 / mean, 3), source, f"column {column!r}: sampling rate")


#: How much of a file :func:`is_csv` reads to find its header row.
_SNIFF_BYTES = 64 * 1024


def _names_a_lead(column: str) -> bool:
    """Whether a CSV column header names one of the 12 leads (with or without a unit: ``II``, ``V1 (uV)``)."""
    try:
        name, _ = _csv_column_unit(column, "mV", "header")
        lead_of_label(name)
    except (EcgError, KeyError):
        return False
    return True


def is_csv(path: Path) -> bool:
    """A CSV export of leads: its header row (the first line that is neither blank nor a ``#`` comment, within the
    first 64 KiB) names a lead in at least half of its columns other than time and index columns, and in one at least.
    A table of other things (``exam_id,age,is_male,...``) is not; a lead export with a stray column is, and its reader
    names the column."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    lines = head.decode("utf-8-sig", errors="replace").splitlines()
    header_line = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if header_line is None:
        return False
    delimiter = max((",", ";", "\t"), key=header_line.count)
    header = [h.strip() for h in next(csv.reader([header_line], delimiter=delimiter))]
    columns = [h for h in header if h.lower() not in CSV_TIME_COLUMNS and h.lower() not in _INDEX_COLUMNS]
    leads = sum(1 for h in columns if len(h) <= _MAX_COLUMN_NAME and _names_a_lead(h))
    return leads > 0 and 2 * leads >= len(columns)


def read_csv(path: str | Path, *, fs: float | None = None) -> Ecg:
    """Read a CSV export of the 12 leads (module docstring): units per column, sampling rate from a time column,
    ``fs`` or a ``# fs:`` comment.

    Raises:
        EcgError: a missing file, a file over :data:`~evl_ecg.ecg.checks.MAX_TEXT_BYTES`, no header, an unknown,
            duplicate or missing lead column, an unknown unit, a cell that is not a number, a row of another length,
            no sampling rate or two that disagree, uneven time steps, over :data:`~evl_ecg.ecg.checks.MAX_SAMPLES`
            rows, NaN, a sample beyond :data:`~evl_ecg.ecg.checks.MAX_ABS_MV` (a wrong unit).
    """
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise EcgError(f"{source}: no such CSV file")
    check_file_size(p.stat().st_size, MAX_TEXT_BYTES, source, "a CSV file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EcgError(f"{source}: cannot read as UTF-8 text ({type(exc).__name__})") from None
    lines = text.splitlines()
    comments: dict[str, str] = {}
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith("#")):
        key, sep, value = lines[start].lstrip().lstrip("#").partition(":")
        if sep and key.strip().lower() in _FS_KEYS | _UNIT_KEYS:
            comments["fs" if key.strip().lower() in _FS_KEYS else "units"] = value.strip()
        start += 1
    if start == len(lines):
        raise EcgError(f"{source}: no header row (a CSV export names its columns: I, II, ..., V6)")
    header_line = lines[start]
    delimiter = max((",", ";", "\t"), key=header_line.count)
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:])), delimiter=delimiter))
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if any(c.strip() for c in r)]
    if len(header) > MAX_CHANNELS + 2:
        raise EcgError(f"{source}: header has {len(header)} columns; at most {MAX_CHANNELS + 2} are read")
    long = next((h for h in header if len(h) > _MAX_COLUMN_NAME), None)
    if long is not None:
        raise EcgError(f"{source}: column name {long[:40]!r}... has {len(long)} characters; a lead's name is short")
    if len(body) > MAX_SAMPLES:
        raise EcgError(f"{source}: {len(body):,} rows; at most {MAX_SAMPLES:,} samples per lead are read")
    if len(body) < 2:
        raise EcgError(f"{source}: {len(body)} data row(s); an ECG needs samples")
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise EcgError(f"{source}: data row {i + 1} has {len(row)} cells, the header {len(header)}")
    default_unit = comments.get("units", "mV")
    if default_unit.lower() not in MV_PER_UNIT:
        raise EcgError(f"{source}: comment '# units: {default_unit}': expected mV, uV, µV or V")
    time_col: tuple[str, float, np.ndarray] | None = None
    names: list[str] = []
    units: list[str] = []
    values: list[np.ndarray] = []
    for j, column in enumerate(header):
        key = column.lower()
        cells = [row[j].strip() for row in body]
        if key in CSV_TIME_COLUMNS:
            if time_col is not None:
                raise EcgError(f"{source}: two time columns ({time_col[0]!r}, {column!r})")
            time_col = (column, CSV_TIME_COLUMNS[key], _csv_numbers(cells, column, source))
            continue
        if key in _INDEX_COLUMNS:
            continue
        name, unit = _csv_column_unit(column, default_unit, source)
        try:
            lead_of_label(name)
        except KeyError:
            raise EcgError(
                f"{source}: unknown column {column!r}; expected the 12 leads (I, II, III, aVR, aVL, aVF, V1-V6), "
                "optionally a time column (time, t, time_s, time_ms)"
            ) from None
        names.append(name)
        units.append(unit)
        values.append(_csv_numbers(cells, column, source) * mv_per_unit(unit, source, name))
    signal, _ = assemble_leads(values, names, source)
    rates: list[tuple[str, float]] = []
    if time_col is not None:
        column, seconds, t = time_col
        rates.append((f"time column {column!r}", _csv_time_rate(t * seconds, column, source)))
    if fs is not None:
        rates.append(("fs", check_fs(float(fs), source, "fs")))
    if "fs" in comments:
        rates.append(("comment '# fs:'", _csv_rate(comments["fs"], source, "comment '# fs:'")))
    if not rates:
        raise EcgError(
            f"{source}: no sampling rate: give a time column (time_s or time_ms), a '# fs: 500' comment line, "
            "or read_csv(path, fs=...)"
        )
    where, rate = rates[0]
    for other, value in rates[1:]:
        if abs(value - rate) > _RATE_TOLERANCE * rate:
            raise EcgError(f"{source}: {where} gives {rate:g} Hz but {other} {value:g} Hz")
    check_finite(signal, source)
    check_amplitude(signal, source)
    meta: dict[str, Any] = {
        "source": source,
        "format": "csv",
        "columns": header,
        "units": dict(zip(names, units, strict=True)),
        "fs_from": where,
    }
    return Ecg(signal=np.ascontiguousarray(signal, dtype=np.float32), fs=rate, record_id=p.stem, meta=meta)


# --------------------------------------------------------------------------------------------------
# EDF / EDF+
# --------------------------------------------------------------------------------------------------


def is_edf(path: Path) -> bool:
    """An EDF file: its header starts with the version ``0`` and seven spaces."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"0       "
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _edf_int(raw: bytes, source: str, field: str) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    if not re.fullmatch(r"-?\d+", text):
        raise EcgError(f"{source}: EDF header field {field} {text!r}: not a whole number")
    return int(text)


def _check_edf_header(p: Path, source: str) -> None:
    """The fixed header as written: version ``0``, the header size for its signals, the number of data records,
    and a file long enough for them (edfio would read a short file as fewer records, with a warning)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(256)
            if len(head) < 256 or head[:8] != b"0       ":
                raise EcgError(f"{source}: not an EDF file (version field {head[:8]!r}; EDF starts with '0')")
            ns = _edf_int(head[252:256], source, "number of signals")
            if not 1 <= ns <= MAX_CHANNELS + 1:
                raise EcgError(f"{source}: EDF header field number of signals {ns}: expected 1 to {MAX_CHANNELS + 1}")
            signals = fh.read(256 * ns)
    except OSError as exc:
        raise EcgError(f"{source}: cannot read ({type(exc).__name__})") from None
    header_bytes = _edf_int(head[184:192], source, "number of bytes in header record")
    if header_bytes != 256 * (ns + 1):
        raise EcgError(
            f"{source}: EDF header field number of bytes in header record {header_bytes}: {ns} signals need "
            f"{256 * (ns + 1)}"
        )
    if len(signals) < 256 * ns:
        raise EcgError(f"{source}: the file ends inside the header ({ns} signals need {header_bytes} bytes)")
    records = _edf_int(head[236:244], source, "number of data records")
    if records < 1:
        raise EcgError(f"{source}: EDF header field number of data records {records}: expected 1 or more")
    start = ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)  # the signals' 'number of samples in each data record' fields
    per_record = [
        _edf_int(signals[start + 8 * k : start + 8 * (k + 1)], source, f"samples per data record of signal {k + 1}")
        for k in range(ns)
    ]
    need = header_bytes + records * 2 * sum(per_record)
    have = p.stat().st_size
    if have < need:
        raise EcgError(
            f"{source}: {have} bytes, the header needs {need} ({records} data records of {2 * sum(per_record)} "
            "bytes): truncated file or header/data mismatch"
        )


def read_edf(path: str | Path) -> Ecg:
    """Read a 12-lead EDF or EDF+ (continuous) file with ``edfio`` (module docstring).

    Raises:
        EcgError: edfio missing (``pip install "evl-ecg[formats]"``), a file edfio cannot parse, EDF+D, more than
            :data:`~evl_ecg.ecg.checks.MAX_CHANNELS` signals, a signal label that names no lead, a duplicate or
            missing lead, an unknown physical dimension, an empty digital or physical range, leads at different
            rates, over :data:`~evl_ecg.ecg.checks.MAX_SAMPLES` samples, NaN, a sample beyond
            :data:`~evl_ecg.ecg.checks.MAX_ABS_MV` (a wrong unit).
    """
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise EcgError(f"{source}: no such EDF file")
    check_file_size(p.stat().st_size, MAX_EDF_BYTES, source, "an EDF file")
    _check_edf_header(p, source)
    edfio = require("edfio", source, "EDF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # edfio warns where it would repair a file (a short last record)
            edf = edfio.read_edf(p, lazy_load_data=True)
        reserved = str(edf.reserved).strip()
        records = int(edf.num_data_records)
        signals = list(edf.signals)  # the EDF+ annotation signal is kept apart by edfio
    except Exception as exc:  # edfio raises ValueError and others for malformed headers, warns for repairs
        raise EcgError(f"{source}: cannot read EDF ({_first_line(exc)})") from None
    if reserved.startswith("EDF+D"):
        raise EcgError(f"{source}: reserved field {reserved!r}: EDF+D (discontinuous) is not read; export EDF+C")
    if len(signals) > MAX_CHANNELS:
        raise EcgError(f"{source}: {len(signals)} signals; at most {MAX_CHANNELS} are read")
    names: list[str] = []
    units: list[str] = []
    rows: list[np.ndarray] = []
    rates: list[float] = []
    for k, sig in enumerate(signals, start=1):
        label = str(sig.label).strip()
        where = f"signal {k} ({label or 'no label'})"
        try:
            lead_of_label(label)
        except KeyError:
            raise EcgError(f"{source}: {where}: label names none of the 12 leads (e.g. 'ECG I', 'II', 'V1')") from None
        dim = str(sig.physical_dimension).strip()
        if not dim:
            raise EcgError(f"{source}: {where}: physical dimension missing; expected mV, uV or V")
        scale = mv_per_unit(dim, f"{source}: {where}", label)
        if sig.digital_min >= sig.digital_max:
            raise EcgError(f"{source}: {where}: digital minimum {sig.digital_min} not below maximum {sig.digital_max}")
        if sig.physical_min == sig.physical_max:
            raise EcgError(f"{source}: {where}: physical minimum equals maximum ({sig.physical_min}): no scale")
        n = int(sig.samples_per_data_record) * records
        if n > MAX_SAMPLES:
            raise EcgError(f"{source}: {where}: {n:,} samples; at most {MAX_SAMPLES:,} per lead are read")
        try:
            data = np.asarray(sig.data, dtype=np.float64)
        except Exception as exc:
            raise EcgError(f"{source}: {where}: cannot read samples ({_first_line(exc)})") from None
        names.append(label)
        units.append(dim)
        rows.append(data * scale)
        rates.append(float(sig.sampling_frequency))
    if len(set(rates)) > 1:
        listed = ", ".join(f"{n} {r:g} Hz" for n, r in zip(names, rates, strict=True))
        raise EcgError(f"{source}: signals at different sampling rates ({listed}); one rate is read")
    signal, _ = assemble_leads(rows, names, source)
    fs = check_fs(rates[0], source, "sampling rate (samples per data record / record duration)")
    check_finite(signal, source)
    check_amplitude(signal, source)
    meta: dict[str, Any] = {
        "source": source,
        "format": "edf+" if reserved.startswith("EDF+") else "edf",
        "labels": names,
        "units": dict(zip(names, units, strict=True)),
    }
    return Ecg(signal=np.ascontiguousarray(signal, dtype=np.float32), fs=fs, record_id=p.stem, meta=meta)
