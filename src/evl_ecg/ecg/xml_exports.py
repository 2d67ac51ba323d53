"""Readers for the XML exports of ECG carts and archives: GE MUSE (``<RestingECG>``), Philips Sierra / PageWriter
(``<restingecgdata>``) and the FDA's HL7 annotated ECG (``<AnnotatedECG>``).

All three share the suffix ``.xml``; the registry in :mod:`evl_ecg.ecg.readers` tells them apart by the root element
(:func:`is_muse`, :func:`is_philips`, :func:`is_aecg`: the first element after the prolog, read from the first
64 KiB without parsing). Every file is parsed with ``defusedxml``, entity expansion off: a file that declares an
entity (an entity bomb, an external entity) is refused at the declaration with one line naming the file, and no DTD
or external resource is ever fetched. A file is read whole up to :data:`~evl_ecg.ecg.checks.MAX_TEXT_BYTES`.

Each reader returns an :class:`~evl_ecg.ecg.signal.Ecg` (``12 x n`` float32 in mV, standard lead order,
``record_id`` the file's stem) and raises :class:`~evl_ecg.ecg.signal.EcgError` with one line naming the file and
the element or attribute that is wrong. **No patient data is read**: MUSE's ``<PatientDemographics>``, aECG's
``<subject>`` and Philips' ``<patient>`` are never looked at, so a name, an id or a birth date cannot reach the
``Ecg`` (not its ``meta``, not its ``record_id``).

* **GE MUSE** (:func:`read_muse`, by hand: stdlib ``base64``, ``zlib``): the ``<Waveform>`` whose ``<WaveformType>``
  is ``Rhythm``; its ``<SampleBase>`` (x 10^``<SampleExponent>``) is the rate; each ``<LeadData>``: ``<LeadID>``,
  ``<WaveFormData>`` base64 of little-endian int16 (``<LeadSampleSize>`` 2), ``<LeadSampleCountTotal>`` samples
  (and ``<LeadByteCountTotal>`` bytes, where given) decoded, ``<LeadDataCRC32>`` checked where given, times
  ``<LeadAmplitudeUnitsPerBit>`` in ``<LeadAmplitudeUnits>`` (``MICROVOLTS``, ``MILLIVOLTS``, ``VOLTS``). MUSE stores
  I, II and V1-V6: III, aVR, aVL and aVF are derived from I and II
  (:func:`~evl_ecg.ecg.leads.derived_limb_leads`).
* **HL7 aECG** (:func:`read_aecg`, by hand: no maintained library exists): the first top-level ``<series>``
  (``RHYTHM`` preferred), its ``<sequenceSet>``: the ``TIME_ABSOLUTE`` / ``TIME_RELATIVE`` sequence's
  ``<increment>`` (``s`` or ``ms``) gives the rate; each ``MDC_ECG_LEAD_*`` sequence's ``SLIST_PQ`` value is
  ``origin + scale x digits``, each with its unit (``uV``, ``mV``, ``V``). Files with I, II and V1-V6 only get the
  four limb leads derived, as MUSE's do.
* **Philips Sierra XML** 1.03, 1.04, 1.04.01 (:func:`read_philips`): ``<parsedwaveforms>`` base64; XLI-compressed
  waveforms (what the carts write) are decoded by ``sierraecg``, which also rebuilds III, aVR, aVL, aVF from the
  residues the carts store; uncompressed waveforms (``compression="Uncompressed"`` / ``compressflag="False"``,
  which sierraecg 0.4.0 fails on) are split here into int16 leads of ``durationperchannel`` ms each, as stored (as
  the Sierra ECG Tools reference reader does). Samples x ``resolution`` (microvolts per bit).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import zlib
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
    require,
)
from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.signal import Ecg, EcgError

__all__ = [
    "MUSE_UNITS_MV",
    "XML_ROOTS",
    "is_aecg",
    "is_muse",
    "is_philips",
    "read_aecg",
    "read_muse",
    "read_philips",
    "xml_root_name",
]

#: The root element of each XML export read here, and how messages name the export.
XML_ROOTS: dict[str, str] = {
    "RestingECG": "a GE MUSE export",
    "restingecgdata": "a Philips Sierra XML export",
    "AnnotatedECG": "an HL7 aECG",
}
_ROOTS_HELP = "GE MUSE <RestingECG>, Philips <restingecgdata> or HL7 aECG <AnnotatedECG>"

#: Millivolts per unit of MUSE's ``<LeadAmplitudeUnits>``.
MUSE_UNITS_MV: dict[str, float] = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3}

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_SNIFF_BYTES = 64 * 1024
#: What may come before the root element: whitespace, the XML declaration, processing instructions, comments, a
#: DOCTYPE (with an internal subset up to its first ``]``). Possessive, without nested choices: linear on any input.
_PROLOG = re.compile(r"\s*+(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE(?:[^\[>]++|\[[^\]]*+\])*+>)", re.DOTALL)
_START_TAG = re.compile(r"\s*<(?:[A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")


# --------------------------------------------------------------------------------------------------
# Shared: the root element, a defused parse, element helpers
# --------------------------------------------------------------------------------------------------


def xml_root_name(path: Path) -> str | None:
    """The local name of ``path``'s root element, from its first 64 KiB (UTF-8, Latin-1 or UTF-16 with a BOM);
    ``None`` when there is none there. Nothing is parsed or expanded."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = head[: len(head) - len(head) % 2].decode("utf-16", errors="ignore")
    elif head.startswith(codecs.BOM_UTF8):
        text = head[3:].decode("utf-8", errors="ignore")
    else:
        text = head.decode("latin-1")
    pos = 0
    while match := _PROLOG.match(text, pos):
        if match.end() == pos:
            break
        pos = match.end()
    match = _START_TAG.match(text, pos)
    return match.group(1) if match else None


def is_muse(path: Path) -> bool:
    """A GE MUSE XML export: root element ``<RestingECG>``."""
    return xml_root_name(path) == "RestingECG"


def is_philips(path: Path) -> bool:
    """A Philips Sierra XML export: root element ``<restingecgdata>``."""
    return xml_root_name(path) == "restingecgdata"


def is_aecg(path: Path) -> bool:
    """An HL7 annotated ECG: root element ``<AnnotatedECG>``."""
    return xml_root_name(path) == "AnnotatedECG"


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _kids(element: Any, name: str) -> list[Any]:
    return [child for child in element if _local(child.tag) == name]


def _kid(element: Any, name: str) -> Any:
    return next((child for child in element if _local(child.tag) == name), None)


def _text(element: Any) -> str | None:
    return None if element is None else (element.text or "").strip()


def _parse(path: str | Path, root_name: str) -> tuple[Any, Path, str]:
    """Parse ``path`` with defusedxml (entities refused) and check its root element; ``(root, path, source)``."""
    p = Path(path)
    source = str(p)
    label = XML_ROOTS[root_name]
    if not p.is_file():
        raise EcgError(f"{source}: no such file")
    check_file_size(p.stat().st_size, MAX_TEXT_BYTES, source, "an XML export")
    defused = require("defusedxml.ElementTree", source, label)
    import defusedxml  # present: the line above imported it

    try:
        data = p.read_bytes()
    except OSError as exc:
        raise EcgError(f"{source}: cannot read ({type(exc).__name__})") from None
    try:
        root = defused.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.EntitiesForbidden as exc:
        raise EcgError(
            f"{source}: the XML declares the entity {exc.name!r}: entity declarations are refused "
            "(no entity expansion: an entity bomb or an external entity)"
        ) from None
    except defusedxml.DefusedXmlException as exc:
        name = type(exc).__name__
        raise EcgError(f"{source}: the XML is refused ({name}: no DTD or external resource is read)") from None
    except defused.ParseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise EcgError(f"{source}: not well-formed XML ({reason})") from None
    except (ValueError, LookupError) as exc:  # an unknown encoding in the declaration
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EcgError(f"{source}: cannot parse XML ({type(exc).__name__}: {reason})") from None
    found = _local(root.tag)
    if found in XML_ROOTS and found != root_name:
        raise EcgError(f"{source}: root element <{found}> is {XML_ROOTS[found]}, not {label} (<{root_name}>)")
    if found != root_name:
        raise EcgError(f"{source}: root element <{found}>: not an ECG export read here; expected {_ROOTS_HELP}")
    return root, p, source


def _number(text: str | None, source: str, field: str, *, positive: bool = False) -> float:
    if text is None or not text.strip():
        raise EcgError(f"{source}: {field} missing")
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        raise EcgError(f"{source}: {field} {text.strip()!r}: not a number") from None
    if not np.isfinite(value):
        raise EcgError(f"{source}: {field} {text.strip()!r}: not finite")
    if positive and value <= 0:
        raise EcgError(f"{source}: {field} {text.strip()!r}: not a positive number")
    return value


def _count(text: str | None, source: str, field: str, *, limit: int | None = None) -> int:
    limit = MAX_SAMPLES if limit is None else limit
    if text is None or not text.strip():
        raise EcgError(f"{source}: {field} missing")
    text = text.strip()
    if not text.isdigit() or int(text) == 0:
        raise EcgError(f"{source}: {field} {text!r}: not a whole number above 0")
    if int(text) > limit:
        raise EcgError(f"{source}: {field} {text!r}: over the {limit:,} read")
    return int(text)


def _base64(text: str | None, source: str, field: str) -> bytes:
    if text is None or not text.strip():
        raise EcgError(f"{source}: {field} missing or empty")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise EcgError(f"{source}: {field}: not valid base64") from None


def _finish(
    rows: list[np.ndarray], names: list[str], source: str, p: Path, fs: float, meta: dict[str, Any], *, derive: bool
) -> Ecg:
    signal, derived = assemble_leads(rows, names, source, derive_limb=derive)
    check_finite(signal, source)
    check_amplitude(signal, source)
    meta = {"source": source, **meta, "leads_stored": names, "leads_derived": list(derived)}
    return Ecg(signal=np.ascontiguousarray(signal, dtype=np.float32), fs=fs, record_id=p.stem, meta=meta)


# --------------------------------------------------------------------------------------------------
# GE MUSE
# --------------------------------------------------------------------------------------------------


def read_muse(path: str | Path) -> Ecg:
    """Read the rhythm waveform of a GE MUSE XML export (module docstring).

    Raises:
        EcgError: defusedxml missing, malformed XML or a declared entity, another root, no rhythm ``<Waveform>``, a
            missing or implausible ``<SampleBase>``, a ``<LeadData>`` with a missing or bad field (named), a CRC32 or
            byte/sample count that does not match the data, an unknown, duplicate or missing lead, NaN, a sample
            beyond :data:`~evl_ecg.ecg.checks.MAX_ABS_MV`.
    """
    root, p, source = _parse(path, "RestingECG")
    waveforms = _kids(root, "Waveform")
    rhythm = [w for w in waveforms if (_text(_kid(w, "WaveformType")) or "").lower() == "rhythm"]
    if not rhythm:
        kinds = ", ".join(repr(_text(_kid(w, "WaveformType"))) for w in waveforms) or "none"
        raise EcgError(f"{source}: no <Waveform> with <WaveformType>Rhythm</WaveformType> (types found: {kinds})")
    wf = rhythm[0]
    where = "rhythm <Waveform>"
    base_text = _text(_kid(wf, "SampleBase"))
    base = _number(base_text, source, f"{where} <SampleBase>", positive=True)
    exponent_text = _text(_kid(wf, "SampleExponent")) or "0"
    if not re.fullmatch(r"-?\d+", exponent_text) or abs(int(exponent_text)) > 6:
        raise EcgError(f"{source}: {where} <SampleExponent> {exponent_text!r}: not a small whole number")
    fs = check_fs(base * 10.0 ** int(exponent_text), source, f"{where} <SampleBase>", base_text)
    leads = _kids(wf, "LeadData")
    if not leads:
        raise EcgError(f"{source}: {where} has no <LeadData>")
    if len(leads) > MAX_CHANNELS:
        raise EcgError(f"{source}: {where} has {len(leads)} <LeadData>; at most {MAX_CHANNELS} are read")
    names: list[str] = []
    rows: list[np.ndarray] = []
    units: dict[str, str] = {}
    crc_checked = 0
    for k, lead in enumerate(leads, start=1):
        lead_id = _text(_kid(lead, "LeadID"))
        if not lead_id:
            raise EcgError(f"{source}: <LeadData> {k}: <LeadID> missing")
        at = f"<LeadData> {k} ({lead_id})"
        size = _text(_kid(lead, "LeadSampleSize"))
        if size is not None and size != "2":
            raise EcgError(f"{source}: {at} <LeadSampleSize> {size!r}: only 2-byte (int16) samples are read")
        per_bit = _number(_text(_kid(lead, "LeadAmplitudeUnitsPerBit")), source, f"{at} <LeadAmplitudeUnitsPerBit>",
                          positive=True)  # fmt: skip
        unit = _text(_kid(lead, "LeadAmplitudeUnits"))
        if not unit:
            raise EcgError(f"{source}: {at} <LeadAmplitudeUnits> missing; expected MICROVOLTS, MILLIVOLTS or VOLTS")
        if unit.upper() not in MUSE_UNITS_MV:
            raise EcgError(f"{source}: {at} <LeadAmplitudeUnits> {unit!r}: expected MICROVOLTS, MILLIVOLTS or VOLTS")
        count = _count(_text(_kid(lead, "LeadSampleCountTotal")), source, f"{at} <LeadSampleCountTotal>")
        payload = _base64(_text(_kid(lead, "WaveFormData")), source, f"{at} <WaveFormData>")
        if len(payload) != 2 * count:
            raise EcgError(
                f"{source}: {at} <WaveFormData> holds {len(payload)} bytes, <LeadSampleCountTotal> {count} needs "
                f"{2 * count}: truncated or mismatched"
            )
        byte_total = _text(_kid(lead, "LeadByteCountTotal"))
        if byte_total is not None and byte_total != str(len(payload)):
            raise EcgError(f"{source}: {at} <LeadByteCountTotal> {byte_total!r}: {len(payload)} bytes were decoded")
        crc = _text(_kid(lead, "LeadDataCRC32"))
        if crc:
            if not crc.isdigit() or int(crc) != zlib.crc32(payload):
                raise EcgError(f"{source}: {at} <LeadDataCRC32> {crc!r}: the data's CRC32 is {zlib.crc32(payload)}")
            crc_checked += 1
        names.append(lead_id)
        units[lead_id] = f"{per_bit:g} {unit.upper()}"
        rows.append(np.frombuffer(payload, dtype="<i2").astype(np.float64) * per_bit * MUSE_UNITS_MV[unit.upper()])
    meta = {"format": "muse", "waveform": "Rhythm", "units_per_bit": units, "crc32_checked": crc_checked}
    return _finish(rows, names, source, p, fs, meta, derive=True)


# --------------------------------------------------------------------------------------------------
# HL7 aECG
# --------------------------------------------------------------------------------------------------


def _pq(element: Any, source: str, field: str) -> float:
    """A physical quantity ``<x value="5" unit="uV"/>`` in mV."""
    if element is None:
        raise EcgError(f"{source}: {field} missing")
    value = _number(element.get("value"), source, f"{field} value")
    unit = element.get("unit")
    if unit is None or unit.strip().lower() not in MV_PER_UNIT:
        raise EcgError(f"{source}: {field} unit {unit!r}: expected uV, mV or V")
    return value * MV_PER_UNIT[unit.strip().lower()]


def _digits(text: str | None, source: str, field: str) -> np.ndarray:
    tokens = (text or "").split()
    if not tokens:
        raise EcgError(f"{source}: {field} missing or empty")
    if len(tokens) > MAX_SAMPLES:
        raise EcgError(f"{source}: {field}: {len(tokens):,} samples; at most {MAX_SAMPLES:,} per lead are read")
    try:
        return np.array([int(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise EcgError(f"{source}: {field}: {bad[:20]!r} is not a whole number") from None


def read_aecg(path: str | Path) -> Ecg:
    """Read the rhythm series of an HL7 annotated ECG (module docstring).

    Raises:
        EcgError: defusedxml missing, malformed XML or a declared entity, another root, no series or sequence set, no
            time sequence or a bad ``<increment>``, a lead sequence with a missing or bad ``<origin>``, ``<scale>`` or
            ``<digits>`` (named), an unknown, duplicate or missing lead, leads of different lengths, NaN, a sample
            beyond :data:`~evl_ecg.ecg.checks.MAX_ABS_MV`.
    """
    root, p, source = _parse(path, "AnnotatedECG")
    series = [s for c in _kids(root, "component") for s in _kids(c, "series")]
    if not series:
        raise EcgError(f"{source}: no <component><series> (the ECG waveforms of an aECG)")
    codes = [(_kid(s, "code").get("code") if _kid(s, "code") is not None else None) for s in series]
    chosen = series[codes.index("RHYTHM")] if "RHYTHM" in codes else series[0]
    series_code = codes[series.index(chosen)]
    sets = [q for c in _kids(chosen, "component") for q in _kids(c, "sequenceSet")]
    if not sets:
        raise EcgError(f"{source}: <series> {series_code or ''} has no <component><sequenceSet>")
    sequences = [q for c in _kids(sets[0], "component") for q in _kids(c, "sequence")]
    if len(sequences) > MAX_CHANNELS + 1:
        raise EcgError(f"{source}: {len(sequences)} sequences; at most {MAX_CHANNELS} leads are read")
    fs: float | None = None
    names: list[str] = []
    rows: list[np.ndarray] = []
    units: dict[str, str] = {}
    for k, seq in enumerate(sequences, start=1):
        code_el = _kid(seq, "code")
        code = (code_el.get("code") if code_el is not None else None) or ""
        value = _kid(seq, "value")
        at = f"<sequence> {k} ({code or 'no code'})"
        if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            increment = _kid(value, "increment") if value is not None else None
            if increment is None:
                raise EcgError(f"{source}: {at} <increment> missing: the sampling interval")
            step = _number(increment.get("value"), source, f"{at} <increment> value", positive=True)
            unit = (increment.get("unit") or "").strip()
            if unit not in ("s", "ms"):
                raise EcgError(f"{source}: {at} <increment> unit {unit!r}: expected s or ms")
            seconds = step * (1e-3 if unit == "ms" else 1.0)
            fs = check_fs(round(1.0 / seconds, 6), source, f"{at} <increment>", f"{increment.get('value')} {unit}")
            continue
        if not code.startswith("MDC_ECG_LEAD_"):
            continue  # another kind of sequence (none is defined for a rhythm series today)
        if value is None:
            raise EcgError(f"{source}: {at} <value> missing")
        kind = value.get(_XSI_TYPE)
        if kind is not None and kind.rsplit(":", 1)[-1] != "SLIST_PQ":
            raise EcgError(f"{source}: {at} <value> xsi:type {kind!r}: expected SLIST_PQ")
        origin_el, scale_el = _kid(value, "origin"), _kid(value, "scale")
        origin = _pq(origin_el, source, f"{at} <origin>")
        scale = _pq(scale_el, source, f"{at} <scale>")
        if scale == 0:
            raise EcgError(f"{source}: {at} <scale> value 0: no amplitude")
        digits = _digits(_text(_kid(value, "digits")), source, f"{at} <digits>")
        name = code[len("MDC_ECG_LEAD_") :]
        names.append(name)
        origin_text = f"{origin_el.get('value')} {origin_el.get('unit')}"
        units[name] = f"{origin_text} + {scale_el.get('value')} {scale_el.get('unit')} x"
        rows.append(origin + scale * digits)
    if fs is None:
        raise EcgError(f"{source}: no TIME_ABSOLUTE or TIME_RELATIVE <sequence>: the sampling rate is unknown")
    if not rows:
        raise EcgError(f"{source}: no MDC_ECG_LEAD_* <sequence> in the sequence set")
    meta = {"format": "aecg", "series": series_code, "scales": units}
    return _finish(rows, names, source, p, fs, meta, derive=True)


# --------------------------------------------------------------------------------------------------
# Philips Sierra XML
# --------------------------------------------------------------------------------------------------

_PHILIPS_TYPES = ("SierraECG", "PhilipsECG")
_PHILIPS_VERSIONS = ("1.03", "1.04", "1.04.01")
_XLI_LIMB_ORDER = ["I", "II", "III", "aVR", "aVL", "aVF"]


def _find(root: Any, *names: str) -> Any:
    """The first descendant along ``names`` (local names, each a child of the previous)."""
    element = root
    for name in names:
        element = _kid(element, name) if element is not None else None
    return element


def _philips_resolution(signal_chars: Any, parsed: Any, source: str) -> float:
    """Microvolts per bit: ``<parsedwaveforms resolution=...>``, ``<resolution>`` or ``<signalresolution>``."""
    found = {
        field: text
        for field, text in (
            ("<parsedwaveforms> resolution", parsed.get("resolution")),
            ("<signalcharacteristics><resolution>", _text(_kid(signal_chars, "resolution"))),
            ("<signalcharacteristics><signalresolution>", _text(_kid(signal_chars, "signalresolution"))),
        )
        if text
    }
    if not found:
        raise EcgError(f"{source}: no resolution (<signalcharacteristics><resolution>, microvolts per bit)")
    values = {field: _number(text, source, field, positive=True) for field, text in found.items()}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{f} {v:g}" for f, v in values.items())
        raise EcgError(f"{source}: resolutions disagree ({listed})")
    resolution = next(iter(values.values()))
    if resolution > 1000:
        raise EcgError(f"{source}: resolution {resolution:g} uV per bit: over 1 mV a bit, not an ECG's")
    return resolution


def _philips_labels(signal_chars: Any, parsed: Any, source: str) -> list[str]:
    labels = (parsed.get("leadlabels") or "").split()
    if labels:
        count = parsed.get("numberofleads")
        if count is not None:
            labels = labels[: _count(count, source, "<parsedwaveforms> numberofleads", limit=MAX_CHANNELS)]
        return labels
    kind = _text(_kid(signal_chars, "acquisitiontype"))
    allocated = _text(_kid(signal_chars, "numberchannelsallocated"))
    if kind in ("STD-12", "10-WIRE") and allocated and allocated.isdigit() and int(allocated) >= len(LEADS):
        return list(LEADS)
    raise EcgError(
        f"{source}: <parsedwaveforms> leadlabels missing and <acquisitiontype> {kind!r} does not name the 12 leads"
    )


def read_philips(path: str | Path) -> Ecg:
    """Read the waveforms of a Philips Sierra XML export, versions 1.03 to 1.04.01 (module docstring).

    Raises:
        EcgError: defusedxml (or, for XLI, sierraecg) missing, malformed XML or a declared entity, another root, an
            unknown document type or version, a missing or implausible sampling rate, duration or resolution, data
            that are not 16-bit signed base64, a compression other than XLI, waveforms of another length than the
            duration says, an unknown, duplicate or missing lead, NaN, a sample beyond
            :data:`~evl_ecg.ecg.checks.MAX_ABS_MV`.
    """
    root, p, source = _parse(path, "restingecgdata")
    doc_type = _text(_find(root, "documentinfo", "documenttype"))
    doc_version = _text(_find(root, "documentinfo", "documentversion"))
    if doc_type not in _PHILIPS_TYPES:
        raise EcgError(f"{source}: <documenttype> {doc_type!r}: expected SierraECG or PhilipsECG")
    if doc_version not in _PHILIPS_VERSIONS:
        raise EcgError(f"{source}: <documentversion> {doc_version!r}: read are {', '.join(_PHILIPS_VERSIONS)}")
    signal_chars = _find(root, "dataacquisition", "signalcharacteristics")
    if signal_chars is None:
        raise EcgError(f"{source}: <dataacquisition><signalcharacteristics> missing")
    parsed = next((e for e in root.iter() if _local(e.tag) == "parsedwaveforms"), None)
    if parsed is None:
        raise EcgError(f"{source}: <parsedwaveforms> missing (the waveforms)")
    rate_text = _text(_kid(signal_chars, "samplingrate"))
    fs = check_fs(_number(rate_text, source, "<samplingrate>", positive=True), source, "<samplingrate>", rate_text)
    per_second = parsed.get("samplespersecond")
    if per_second is not None and _number(per_second, source, "<parsedwaveforms> samplespersecond") != fs:
        raise EcgError(f"{source}: <parsedwaveforms> samplespersecond {per_second!r} but <samplingrate> {rate_text!r}")
    for field, element, wanted in (
        ("bitspersample", _kid(signal_chars, "bitspersample"), "16"),
        ("signalsigned", _kid(signal_chars, "signalsigned"), "True"),
    ):
        if element is not None and _text(element) != wanted:
            raise EcgError(f"{source}: <{field}> {_text(element)!r}: only {wanted} is read (16-bit signed samples)")
    duration_text = parsed.get("durationperchannel")
    duration = _number(duration_text, source, "<parsedwaveforms> durationperchannel (ms)", positive=True)
    n = duration * fs / 1000.0
    if abs(n - round(n)) > 1e-6 or not 2 <= round(n) <= MAX_SAMPLES:
        raise EcgError(
            f"{source}: <parsedwaveforms> durationperchannel {duration_text!r} ms at {fs:g} Hz is {n:g} samples; "
            f"expected a whole number from 2 to {MAX_SAMPLES:,}"
        )
    n = round(n)
    resolution = _philips_resolution(signal_chars, parsed, source)
    labels = _philips_labels(signal_chars, parsed, source)
    encoding = parsed.get("dataencoding")
    if encoding != "Base64":
        raise EcgError(f"{source}: <parsedwaveforms> dataencoding {encoding!r}: only Base64 is read")
    method = parsed.get("compression") or parsed.get("compressmethod") or "Uncompressed"
    if (parsed.get("compressflag") or "").strip().lower() == "false":
        method = "Uncompressed"
    if method == "XLI":
        if labels[:6] != _XLI_LIMB_ORDER:
            raise EcgError(
                f"{source}: <parsedwaveforms> leadlabels {' '.join(labels)!r}: XLI stores III, aVR, aVL, aVF as "
                "residues of I and II, rebuilt only in the order I II III aVR aVL aVF"
            )
        stored = _philips_xli(p, source, len(labels))
    elif method == "Uncompressed":
        payload = _base64(parsed.text, source, "<parsedwaveforms>")
        channels, rest = divmod(len(payload), 2 * n)
        if rest or not len(labels) <= channels <= MAX_CHANNELS:
            raise EcgError(
                f"{source}: <parsedwaveforms> holds {len(payload)} bytes; {len(labels)} leads of {n} int16 samples "
                f"need {2 * n * len(labels)}"
            )
        all_samples = np.frombuffer(payload, dtype="<i2")
        stored = [all_samples[i * n : (i + 1) * n] for i in range(len(labels))]
    else:
        raise EcgError(f"{source}: <parsedwaveforms> compression {method!r}: read are XLI and Uncompressed")
    for label, samples in zip(labels, stored, strict=True):
        if len(samples) != n:
            raise EcgError(
                f"{source}: lead {label}: {len(samples)} samples decoded, durationperchannel {duration_text!r} ms "
                f"at {fs:g} Hz is {n}"
            )
    rows = [np.asarray(samples, dtype=np.float64) * resolution * 1e-3 for samples in stored]
    meta = {
        "format": "philips",
        "document": f"{doc_type} {doc_version}",
        "compression": method,
        "resolution_uv": resolution,
    }
    return _finish(rows, labels, source, p, fs, meta, derive=False)


def _philips_xli(p: Path, source: str, leads: int) -> list[np.ndarray]:
    """The XLI-compressed leads decoded by sierraecg (limb leads rebuilt from their residues)."""
    sierraecg = require("sierraecg", source, "XLI-compressed Philips XML")
    try:
        parsed = sierraecg.read_file(str(p))
        stored = [np.asarray(lead.samples, dtype=np.int64) for lead in parsed.leads]
    except Exception as exc:  # sierraecg raises its own errors, ValueError, IndexError for broken data
        reason = type(exc).__name__ + (f": {str(exc).strip().splitlines()[0]}" if str(exc).strip() else "")
        raise EcgError(f"{source}: sierraecg cannot decode the XLI waveforms ({reason})") from None
    if len(stored) < leads:
        raise EcgError(f"{source}: sierraecg decoded {len(stored)} XLI leads of the {leads} labelled")
    return stored[:leads]
