"""The export readers (CSV, EDF/EDF+, GE MUSE XML, HL7 aECG, Philips Sierra XML) against fixtures written by hand in
each published layout (fixtures/make_export_fixtures.py) from one known array of samples."""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import wfdb

from evl_ecg.ecg.leads import LEADS
from evl_ecg.ecg.readers import Format, format_of, formats_help, read_record, register_format, unregister_format
from evl_ecg.ecg.signal import EcgError

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_export_fixtures", FIXTURES / "make_export_fixtures.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

KNOWN = make.known_counts()  # 12 x 500 counts, standard lead order
KIND = {
    "ecg_export.csv": "csv",
    "ecg_export.edf": "edf",
    "muse_rhythm.xml": "muse",
    "aecg_rhythm.xml": "aecg",
    "philips_xli.xml": "philips",
    "philips_uncompressed.xml": "philips",
}
PATIENT = ("DOE^JANE", "PID-90210", "1951-05-02", "05-02-1951", "19510502", "02-MAY-1951")


def _uv_per_count(name: str) -> float:
    return make.MUSE_UV_PER_BIT if name.startswith("muse") else make.UV_PER_COUNT


def _known_mv(name: str) -> np.ndarray:
    return KNOWN * _uv_per_count(name) / 1000.0


def _one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _text(name: str) -> str:
    raw = (FIXTURES / name).read_bytes()
    return raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("latin-1")


def _variant(tmp_path: Path, name: str, edit, *, out: str | None = None) -> Path:
    """The fixture ``name`` with ``edit(text) -> text`` applied (the XML declaration's encoding kept)."""
    text = edit(_text(name))
    path = tmp_path / (out or name)
    if name == "philips_xli.xml":
        path.write_bytes(text.encode("utf-16"))
    else:
        path.write_bytes(text.encode("latin-1"))
    return path


def _refused(path: Path, *needles: str, **kwargs) -> None:
    with pytest.raises(EcgError) as exc:
        read_record(path, **kwargs)
    _one_line_error(exc, path.name, *needles)


# ------------------------------------------------------------------ the fixtures


def test_committed_fixtures_are_what_the_script_writes():
    for name, data in make.fixture_bytes().items():
        assert (FIXTURES / name).read_bytes() == data, f"{name}: rerun fixtures/make_export_fixtures.py"
    assert set(make.FILES) == set(KIND)


def test_known_samples_obey_einthoven_and_goldberger():
    i, ii, iii, avr, avl, avf = KNOWN[:6]
    assert np.array_equal(iii, ii - i) and np.array_equal(2 * avr, -(i + ii))
    assert np.array_equal(2 * avl, 2 * i - ii) and np.array_equal(2 * avf, 2 * ii - i)
    assert len({tuple(row) for row in KNOWN}) == 12 and np.abs(KNOWN).max() > 100  # 12 distinct leads, a real QRS


def test_fixtures_are_in_the_published_layouts():
    """Read back by the layouts alone (no reader of ours): the values written are the known ones."""
    csv_lines = _text("ecg_export.csv").splitlines()
    assert csv_lines[3] == "time_ms,I,II_uV,III,AVR,aVL,aVF,V1 (uV),v2,V3,V4,V5,V6"
    table = np.loadtxt(FIXTURES / "ecg_export.csv", delimiter=",", skiprows=4)
    assert np.array_equal(table[:, 0], np.arange(500) * 2)
    np.testing.assert_allclose(table[:, 2], KNOWN[1] * 5)  # II in uV
    np.testing.assert_allclose(table[:, 1], KNOWN[0] * 0.005, atol=1e-9)  # I in mV

    edf = (FIXTURES / "ecg_export.edf").read_bytes()
    assert edf[:8] == b"0       " and edf[192:197] == b"EDF+C" and int(edf[252:256]) == 13
    labels = [edf[256 + 16 * k : 256 + 16 * (k + 1)].decode().strip() for k in range(13)]
    assert labels[0] == "ECG I" and labels[12] == "EDF Annotations"
    data = np.frombuffer(edf[256 * 14 : 256 * 14 + 12 * 500 * 2], dtype="<i2").reshape(12, 500)
    assert np.array_equal(data, KNOWN)

    muse = _text("muse_rhythm.xml")
    assert muse.startswith('<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">')
    rhythm = muse[muse.index("<WaveformType>Rhythm</WaveformType>") :]
    ids = re.findall(r"<LeadID>(\w+)</LeadID>", rhythm)
    assert ids == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    blocks = re.findall(r"<WaveFormData>(.*?)</WaveFormData>", rhythm, re.DOTALL)
    first = np.frombuffer(base64.b64decode("".join(blocks[0].split())), dtype="<i2")
    assert np.array_equal(first, KNOWN[0])
    crc = int(re.search(r"<LeadDataCRC32>(\d+)</LeadDataCRC32>", rhythm).group(1))
    assert crc == zlib.crc32(first.tobytes())

    aecg = _text("aecg_rhythm.xml")
    assert '<AnnotatedECG xmlns="urn:hl7-org:v3"' in aecg and '<increment value="0.002" unit="s"/>' in aecg
    assert re.findall(r'code="MDC_ECG_LEAD_(\w+)"', aecg)[:12] == list(make.AECG_CODES)

    xli = (FIXTURES / "philips_xli.xml").read_bytes()
    assert xli[:2] == b"\xff\xfe"  # UTF-16 with its byte order mark, as the carts write
    encoded = re.search(r">([^<]*)</parsedwaveforms>", _text("philips_xli.xml")).group(1)
    payload = base64.b64decode("".join(encoded.split()))
    assert len(payload) < 12 * 500 * 2 / 2  # genuinely compressed: under half the raw int16 bytes
    size, one, _ = np.frombuffer(payload[:8], dtype="<i4, <i2, <i2")[0]
    assert one == 1 and 0 < size < len(payload)


def test_philips_fixture_is_decoded_by_sierraecg_itself():
    """The XLI payload is what sierraecg (not our code) decodes to the known leads."""
    sierraecg = pytest.importorskip("sierraecg")
    parsed = sierraecg.read_file(str(FIXTURES / "philips_xli.xml"))
    assert [lead.label for lead in parsed.leads] == list(LEADS)
    assert np.array_equal(np.stack([np.asarray(lead.samples, dtype=np.int64) for lead in parsed.leads]), KNOWN)


def test_xli_encoder_round_trips_through_sierraecg_on_hard_signals():
    """Edges of the encoder: a long, noisy lead (the LZW table fills up) and a flat one."""
    from sierraecg.xli import xli_decode

    rng = np.random.default_rng(0)
    noisy = np.cumsum(rng.integers(-40, 41, size=6000)).astype(np.int64)
    flat = np.zeros(300, dtype=np.int64)
    for samples in (noisy, flat):
        decoded = xli_decode(make.xli_lead(samples), ["X"])
        assert np.array_equal(np.asarray(decoded[0], dtype=np.int64), samples)


# ------------------------------------------------------------------ reading the known samples


@pytest.mark.parametrize("name", sorted(KIND))
def test_each_export_gives_the_known_samples_in_mv(name):
    path = FIXTURES / name
    assert format_of(path).kind == KIND[name]
    ecg = read_record(path)
    assert ecg.leads == LEADS and ecg.signal.dtype == np.float32 and ecg.signal.shape == (12, 500)
    assert ecg.fs == 500.0 and ecg.record_id == path.stem and ecg.meta["source"] == str(path)
    np.testing.assert_allclose(ecg.signal, _known_mv(name), rtol=0, atol=1e-6)
    # the same samples on the file's grid: every count exact
    assert np.array_equal(np.rint(ecg.signal.astype(np.float64) * 1000 / _uv_per_count(name)), KNOWN)


@pytest.mark.parametrize("name", sorted(KIND))
def test_patient_identifiers_never_reach_the_ecg(name):
    assert "DOE^JANE" in _text(name) if not name.endswith(".edf") else b"DOE^JANE" in (FIXTURES / name).read_bytes()
    ecg = read_record(FIXTURES / name)
    seen = " ".join([repr(ecg), str(ecg.meta), repr(ecg.meta), ecg.record_id, str(ecg.labels)])
    for needle in PATIENT:
        assert needle not in seen, (needle, name)


def test_units_are_applied_per_lead():
    csv = read_record(FIXTURES / "ecg_export.csv")
    assert csv.meta["units"]["II"] == "uV" and csv.meta["units"]["V1"] == "uV" and csv.meta["units"]["I"] == "mV"
    edf = read_record(FIXTURES / "ecg_export.edf")
    assert edf.meta["units"]["ECG I"] == "uV" and edf.meta["units"]["V1"] == "mV" and edf.meta["format"] == "edf+"
    aecg = read_record(FIXTURES / "aecg_rhythm.xml")
    assert aecg.meta["scales"]["V3"] == "0 uV + 0.005 mV x" and aecg.meta["scales"]["V6"] == "100 uV + 5 uV x"
    muse = read_record(FIXTURES / "muse_rhythm.xml")
    assert muse.meta["leads_derived"] == ["III", "aVR", "aVL", "aVF"] and muse.meta["crc32_checked"] == 8
    xli = read_record(FIXTURES / "philips_xli.xml")
    assert xli.meta["compression"] == "XLI" and xli.meta["resolution_uv"] == 5.0


# ------------------------------------------------------------------ the same record as WFDB


@pytest.mark.parametrize("name", sorted(KIND))
def test_same_record_as_wfdb_sample_by_sample(tmp_path, name):
    """WFDB written by wfdb's writer from the known array, the export by hand: the two reads agree on every sample."""
    uv = _uv_per_count(name)
    wfdb.wrsamp(
        "same",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        p_signal=_known_mv(name).T,
        fmt=["16"] * 12,
        adc_gain=[1000.0 / uv] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path),
    )
    reference = read_record(tmp_path / "same.hea")
    export = read_record(FIXTURES / name)
    assert reference.fs == export.fs and reference.signal.shape == export.signal.shape
    np.testing.assert_allclose(export.signal, reference.signal, rtol=0, atol=1e-5)  # 1e-5 mV: 0.2% of a step
    assert np.array_equal(np.rint(export.signal * 1000 / uv), np.rint(reference.signal * 1000 / uv))


# ------------------------------------------------------------------ the one registry


def test_xml_exports_are_told_apart_by_their_root_element(tmp_path):
    for name in ("muse_rhythm.xml", "aecg_rhythm.xml", "philips_xli.xml", "philips_uncompressed.xml"):
        assert format_of(FIXTURES / name).kind == KIND[name]
        plain = tmp_path / name.replace(".xml", "")  # no suffix: the content checks decide
        plain.write_bytes((FIXTURES / name).read_bytes())
        assert format_of(plain).kind == KIND[name]
        upper = tmp_path / name.replace(".xml", ".XML")
        upper.write_bytes((FIXTURES / name).read_bytes())
        assert read_record(upper).signal.shape == (12, 500)
    edf = tmp_path / "recording"
    edf.write_bytes((FIXTURES / "ecg_export.edf").read_bytes())
    assert format_of(edf).kind == "edf"
    other = tmp_path / "note.xml"
    other.write_text('<?xml version="1.0"?>\n<!-- a comment -->\n<note><to>x</to></note>\n')
    _refused(other, "root element <note>", "GE MUSE <RestingECG>", "Philips <restingecgdata>", "aECG <AnnotatedECG>")
    from evl_ecg.ecg.xml_exports import read_muse

    with pytest.raises(EcgError) as exc:
        read_muse(FIXTURES / "aecg_rhythm.xml")
    _one_line_error(exc, "aecg_rhythm.xml", "<AnnotatedECG> is an HL7 aECG, not a GE MUSE export")


def test_the_root_element_check_is_quick_on_a_hostile_prolog(tmp_path):
    from evl_ecg.ecg.xml_exports import xml_root_name

    hostile = tmp_path / "hostile.xml"
    hostile.write_text("<?xml version='1.0'?><!DOCTYPE x " + "[ ] ] " * 12_000)  # no '>', no root: 72 KB
    start = time.perf_counter()
    assert xml_root_name(hostile) is None and format_of(hostile).kind == "muse"  # the first .xml reader says why
    assert time.perf_counter() - start < 1.0
    _refused(hostile, "not well-formed XML")
    dtd = tmp_path / "with_dtd.xml"
    dtd.write_text('<?xml version="1.0"?>\n<!-- c -->\n<!DOCTYPE AnnotatedECG [<!ELEMENT a ANY>]>\n<hl7:AnnotatedECG/>')
    assert xml_root_name(dtd) == "AnnotatedECG"


def test_a_shared_suffix_needs_a_content_check_in_every_format_that_claims_it():
    with pytest.raises(ValueError, match="suffix .xml already chooses 'muse'"):
        register_format(Format("plain-xml", "a plain XML file (.xml)", (".xml",)))
    register_format(Format("other-xml", "another XML export (.xml)", (".xml",), (".xml",), sniff=lambda p: False))
    try:
        assert format_of(FIXTURES / "philips_xli.xml").kind == "philips"
        assert "another XML export (.xml)" in formats_help()
    finally:
        unregister_format("other-xml")


def test_every_command_that_reads_an_ecg_reads_the_exports(tmp_path):
    from evl_ecg.infer.inputs import expand_inputs, read_input
    from evl_ecg.infer.serve import _pick_input

    for label in ("a CSV file of the 12 leads (.csv)", "an EDF/EDF+ file (.edf)", "a GE MUSE XML file (.xml)",
                  "a Philips Sierra XML file (.xml)", "an HL7 aECG file (.xml)"):  # fmt: skip
        assert label in formats_help() and label in formats_help(signals=True)
    for name in KIND:
        (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
        got = read_input(tmp_path / name)
        assert got.kind == KIND[name] and got.ecg.signal.shape == (12, 500)
        assert _pick_input(["notes.txt", name], None) == name
    (tmp_path / "notes.txt").write_text("x")
    specs, notes = expand_inputs([tmp_path])
    assert specs == [str(tmp_path / name) for name in sorted(KIND)] and notes == []


# ------------------------------------------------------------------ XML safety


def _bomb(root: str, levels: int = 9) -> str:
    entities = "".join(f'<!ENTITY e{k} "{f"&e{k - 1};" * 10}">' for k in range(1, levels + 1))
    return f'<?xml version="1.0"?>\n<!DOCTYPE {root} [<!ENTITY e0 "ha">{entities}]>\n<{root}>&e{levels};</{root}>\n'


@pytest.mark.parametrize("root", ["RestingECG", "restingecgdata", "AnnotatedECG"])
def test_entity_bomb_and_external_entity_are_refused_fast_in_one_line(tmp_path, root):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(_bomb(root))  # a billion laughs: 10**9 'ha' if expanded
    start = time.perf_counter()
    _refused(bomb, "entity 'e0'", "refused")
    assert time.perf_counter() - start < 1.0
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE")
    xxe = tmp_path / "xxe.xml"
    xxe.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE {root} [<!ENTITY x SYSTEM "file://{secret}">]>\n<{root}>&x;</{root}>'
    )
    with pytest.raises(EcgError) as exc:
        read_record(xxe)
    _one_line_error(exc, "xxe.xml", "entity 'x'")
    assert "TOP-SECRET" not in str(exc.value)
    broken = tmp_path / "broken.xml"
    broken.write_text(f"<?xml version='1.0'?><{root}><a></{root}>")
    _refused(broken, "not well-formed XML", "mismatched tag")


def test_a_missing_library_says_which_extra_installs_it(tmp_path, monkeypatch):
    needs = (("defusedxml", "muse_rhythm.xml"), ("edfio", "ecg_export.edf"), ("sierraecg", "philips_xli.xml"))
    for module, name in needs:
        with monkeypatch.context() as patch:
            for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
                patch.delitem(sys.modules, key)
            patch.setitem(sys.modules, module, None)  # import fails as if not installed
            with pytest.raises(EcgError) as exc:
                read_record(FIXTURES / name)
            _one_line_error(exc, name, f"needs the {module} package", 'pip install "evl-ecg[formats]"')


# ------------------------------------------------------------------ bounds


def test_sizes_and_lead_counts_are_bounded(tmp_path, monkeypatch):
    import evl_ecg.ecg.exports as exports
    import evl_ecg.ecg.xml_exports as xml_exports

    monkeypatch.setattr(xml_exports, "MAX_TEXT_BYTES", 10_000)
    _refused(FIXTURES / "muse_rhythm.xml", "26,453 bytes", "up to 10,000 bytes")
    monkeypatch.setattr(exports, "MAX_TEXT_BYTES", 10_000)
    _refused(FIXTURES / "ecg_export.csv", "bytes", "up to 10,000 bytes")
    monkeypatch.setattr(exports, "MAX_TEXT_BYTES", 64 * 1024 * 1024)
    monkeypatch.setattr(exports, "MAX_SAMPLES", 400)
    _refused(FIXTURES / "ecg_export.csv", "500 rows", "at most 400")
    monkeypatch.setattr(xml_exports, "MAX_SAMPLES", 400)
    monkeypatch.setattr(xml_exports, "MAX_TEXT_BYTES", 64 * 1024 * 1024)
    _refused(FIXTURES / "aecg_rhythm.xml", "<digits>", "500 samples", "at most 400")
    _refused(FIXTURES / "muse_rhythm.xml", "<LeadSampleCountTotal> '500'", "over the 400")

    def many_leads(text):
        block = text[text.rindex("         <LeadData>") : text.rindex("</LeadData>") + len("</LeadData>\n")]
        return text.replace(block, block * 30)

    _refused(_variant(tmp_path, "muse_rhythm.xml", many_leads), "37 <LeadData>", "at most 32")


# ------------------------------------------------------------------ CSV


def _chain(*edits):
    def edit(text):
        for one in edits:
            text = one(text)
        return text

    return edit


def _csv_edit(old: str, new: str, count: int = 1):
    def edit(text):
        assert old in text, old
        return text.replace(old, new, count)

    return edit


HEADER = "time_ms,I,II_uV,III,AVR,aVL,aVF,V1 (uV),v2,V3,V4,V5,V6"


def _drop_column(index: int):
    def edit(text):
        lines = text.splitlines()
        keep = [
            ln if ln.startswith("#") else ",".join(c for k, c in enumerate(ln.split(",")) if k != index) for ln in lines
        ]
        return "\n".join(keep) + "\n"

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_csv_edit(HEADER, HEADER.replace(",V6", ",V5")), ("V5 appear more than once",)),
        (_drop_column(12), ("11 leads, missing V6",)),
        (_csv_edit(HEADER, HEADER.replace(",V6", ",V7")), ("unknown column 'V7'",)),
        (_csv_edit(HEADER, HEADER.replace("II_uV", "II (mmHg)")), ("column 'II (mmHg)'", "unit 'mmHg'")),
        (_csv_edit(HEADER, HEADER.replace("II_uV", "II")), ("II (", "beyond 200 mV", "microvolts read as millivolts")),
        (_csv_edit("\n4,", "\n4,abc", 1), ("data row 3, column 'I'", "'abc", "not a number")),
        (_csv_edit("\n6,", "\n5,", 1), ("column 'time_ms'", "uneven time steps")),
        (_csv_edit("\n6,", "\n2,", 1), ("column 'time_ms'", "does not increase at data row 4")),
        (_drop_column(0), ("no sampling rate", "time_s or time_ms", "# fs: 500")),
        (_csv_edit("# device", "# fs: 250 Hz\n# device"), ("time column 'time_ms' gives 500 Hz but comment",)),
        (_csv_edit("\n0,", "\n0,1,", 1), ("data row 1 has 14 cells, the header 13",)),
        (lambda text: "# only a comment\n", ("no header row",)),
        (_csv_edit("time_ms", "time_s"), ("time_s", "outside 50-20000 Hz")),
        (_csv_edit(",V6\n", ",V6" + " " * 70 + "x\n"), ("column name 'V6", "73 characters")),
    ],
    ids=[
        "duplicate",
        "missing",
        "unknown",
        "bad-unit",
        "uv-as-mv",
        "not-a-number",
        "uneven",
        "not-increasing",
        "no-rate",
        "rates-disagree",
        "ragged",
        "no-header",
        "time-unit",
        "long-name",
    ],  # fmt: skip
)
def test_csv_refusals_name_the_file_and_the_field(tmp_path, edit, needles):
    _refused(_variant(tmp_path, "ecg_export.csv", edit), *needles)


def test_csv_rate_from_a_comment_or_the_caller_and_other_spellings(tmp_path):
    from evl_ecg.ecg.exports import read_csv

    no_time = _variant(tmp_path, "ecg_export.csv", _drop_column(0))
    assert read_csv(no_time, fs=500).fs == 500.0
    with pytest.raises(EcgError, match="outside 50-20000 Hz"):
        read_csv(no_time, fs=5)
    micro_csv = tmp_path / "micro.csv"
    micro_csv.write_text(_text("ecg_export.csv").replace("II_uV", "II [µV]"), encoding="utf-8")
    micro = read_record(micro_csv)
    assert micro.meta["units"]["II"] == "µV"
    np.testing.assert_allclose(micro.signal, _known_mv("ecg_export.csv"), atol=1e-6)
    commented = _variant(tmp_path, "ecg_export.csv", lambda t: "# fs: 500 Hz\n" + _drop_column(0)(t), out="c.csv")
    ecg = read_record(commented)
    assert ecg.fs == 500.0 and ecg.meta["fs_from"] == "comment '# fs:'"
    np.testing.assert_allclose(ecg.signal, _known_mv("ecg_export.csv"), atol=1e-6)

    def european(text):  # semicolons, everything in microvolts by the '# units:' comment, an index column
        lines = text.splitlines()
        head = "sample;I;II;III;aVR;aVL;aVF;V1;V2;V3;V4;V5;V6"
        rows = [";".join([str(t), *(str(int(c) * 5) for c in KNOWN[:, t])]) for t in range(500)]
        return "\n".join([*lines[:3], "# units: uV", "# fs: 500", head, *rows]) + "\n"

    ecg = read_record(_variant(tmp_path, "ecg_export.csv", european, out="eu.csv"))
    np.testing.assert_allclose(ecg.signal, _known_mv("ecg_export.csv"), atol=1e-6)


# ------------------------------------------------------------------ EDF


def _edf_field(signal: int, field: str, value: str):
    """Set ``field`` of ``signal`` (0-based) in the EDF fixture's signal header."""
    ns, widths = 13, {"label": 16, "transducer": 80, "dimension": 8, "pmin": 8, "pmax": 8, "dmin": 8, "dmax": 8}
    offset = 256
    for name, width in widths.items():
        if name == field:
            at = offset + signal * width
            return at, value.encode("ascii").ljust(width, b" ")
        offset += ns * width
    raise KeyError(field)


def _edf_variant(tmp_path: Path, *edits: tuple[int, bytes]) -> Path:
    data = bytearray((FIXTURES / "ecg_export.edf").read_bytes())
    for at, value in edits:
        data[at : at + len(value)] = value
    path = tmp_path / "edited.edf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("edits", "needles"),
    [
        ([_edf_field(2, "dimension", "mmHg")], ("signal 3 (III)", "unit 'mmHg'")),
        ([_edf_field(8, "dimension", "")], ("signal 9 (ECG V3)", "physical dimension missing")),
        ([_edf_field(5, "label", "ECG X")], ("signal 6 (ECG X)", "names none of the 12 leads")),
        ([_edf_field(11, "label", "V5")], ("V5 appear more than once",)),
        ([_edf_field(11, "label", "Resp")], ("signal 12 (Resp)", "names none of the 12 leads")),
        ([(192, b"EDF+D")], ("'EDF+D'", "discontinuous")),
        ([(0, b"1       ")], ("not an EDF file", "version field")),
        ([(236, b"2       ")], ("the header needs", "2 data records", "truncated file or header/data mismatch")),
        ([_edf_field(0, "pmax", "-163840")], ("signal 1 (ECG I)", "physical minimum equals maximum")),
        ([_edf_field(0, "dmax", "-40000")], ("signal 1 (ECG I)", "digital minimum -32768 not below maximum -40000")),
        ([_edf_field(1, "dimension", "mV")], ("II (", "beyond 200 mV")),
    ],
    ids=[
        "unit",
        "no-unit",
        "label",
        "duplicate",
        "non-ecg",
        "edf+d",
        "version",
        "records",
        "pmin=pmax",
        "dmin>dmax",
        "uv-as-mv",
    ],  # fmt: skip
)
def test_edf_refusals_name_the_file_and_the_field(tmp_path, edits, needles):
    _refused(_edf_variant(tmp_path, *edits), *needles)


def test_edf_truncated_file_is_refused(tmp_path):
    short = tmp_path / "short.edf"
    short.write_bytes((FIXTURES / "ecg_export.edf").read_bytes()[:-1000])
    _refused(short, "the header needs 15644", "truncated")


# ------------------------------------------------------------------ GE MUSE


def _rhythm_edit(old: str, new: str, lead: str | None = None):
    """Replace ``old`` by ``new`` in the rhythm waveform (in the ``<LeadData>`` of ``lead`` when given)."""

    def edit(text):
        start = text.index("<WaveformType>Rhythm</WaveformType>")
        if lead is not None:
            start = text.index(f"<LeadID>{lead}</LeadID>", start)
            start = text.rindex("<LeadData>", 0, start)
        at = text.index(old, start)
        return text[:at] + new + text[at + len(old) :]

    return edit


def _flip_sample(lead: str):
    def edit(text):
        start = text.index(f"<LeadID>{lead}</LeadID>", text.index("<WaveformType>Rhythm</WaveformType>"))
        at = text.index("<WaveFormData>", start) + len("<WaveFormData>") + 10
        return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]

    return edit


def _drop_lead(lead: str):
    def edit(text):
        start = text.index(f"<LeadID>{lead}</LeadID>", text.index("<WaveformType>Rhythm</WaveformType>"))
        begin = text.rindex("         <LeadData>", 0, start)
        end = text.index("</LeadData>\n", start) + len("</LeadData>\n")
        return text[:begin] + text[end:]

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_flip_sample("V2"), ("<LeadData> 4 (V2) <LeadDataCRC32>",)),
        (_rhythm_edit("MICROVOLTS", "FURLONGS", "V4"), ("(V4) <LeadAmplitudeUnits> 'FURLONGS'", "MICROVOLTS")),
        (_rhythm_edit("4.88", "0", "I"), ("(I) <LeadAmplitudeUnitsPerBit> '0'", "not a positive number")),
        (
            _rhythm_edit("<LeadSampleCountTotal>500", "<LeadSampleCountTotal>600", "II"),
            ("(II) <WaveFormData> holds 1000 bytes", "needs 1200"),
        ),  # fmt: skip
        (_rhythm_edit("<LeadByteCountTotal>1000", "<LeadByteCountTotal>999", "V1"), ("(V1) <LeadByteCountTotal>",)),
        (_rhythm_edit("<LeadSampleSize>2", "<LeadSampleSize>4", "V5"), ("(V5) <LeadSampleSize> '4'",)),
        (_rhythm_edit("<WaveformType>Rhythm", "<WaveformType>Full"), ("no <Waveform> with <WaveformType>Rhythm",)),
        (_rhythm_edit("<SampleBase>500", "<SampleBase>abc"), ("<SampleBase> 'abc'", "not a number")),
        (_rhythm_edit("<SampleBase>500", "<SampleBase>5"), ("<SampleBase> '5'", "outside 50-20000 Hz")),
        (_rhythm_edit("<LeadID>V6", "<LeadID>V5"), ("V5 appear more than once",)),
        (_drop_lead("V6"), ("missing V6",)),
        (_rhythm_edit("<LeadID>V6", "<LeadID>III"), ("missing aVR, aVL, aVF, V6",)),
        (_rhythm_edit("<LeadID>V6", "<LeadID>V9"), ("unknown lead name 'V9'",)),
        (_rhythm_edit("<WaveFormData>", "<WaveFormData>*", "V3"), ("(V3) <WaveFormData>: not valid base64",)),
        (_rhythm_edit("MICROVOLTS", "MILLIVOLTS", "V4"), ("V4 (", "beyond 200 mV")),
    ],
    ids=[
        "crc",
        "unit",
        "per-bit",
        "count",
        "bytes",
        "sample-size",
        "no-rhythm",
        "rate-abc",
        "rate-5",
        "duplicate",
        "missing",
        "partial-limb",
        "unknown",
        "base64",
        "uv-as-mv",
    ],  # fmt: skip
)
def test_muse_refusals_name_the_file_and_the_field(tmp_path, edit, needles):
    _refused(_variant(tmp_path, "muse_rhythm.xml", edit), *needles)


def test_muse_with_12_stored_leads_keeps_them(tmp_path):
    def twelve(text):
        start = text.index("<WaveformType>Rhythm</WaveformType>")
        last = text.index("   </Waveform>", start)
        limb = ("III", "aVR", "aVL", "aVF")
        extra = "".join(make._muse_lead(name, KNOWN[LEADS.index(name)], crc=True) for name in limb)
        return text[:last] + extra + text[last:]

    ecg = read_record(_variant(tmp_path, "muse_rhythm.xml", twelve))
    assert ecg.meta["leads_derived"] == []
    np.testing.assert_allclose(ecg.signal, _known_mv("muse_rhythm.xml"), atol=1e-6)


# ------------------------------------------------------------------ HL7 aECG


def _aecg_lead_edit(code: str, old: str, new: str):
    def edit(text):
        start = text.index(f'code="MDC_ECG_LEAD_{code}"')
        at = text.index(old, start)
        return text[:at] + new + text[at + len(old) :]

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            _csv_edit('<increment value="0.002" unit="s"/>', '<increment value="0.002" unit="furlong"/>'),
            ("TIME_ABSOLUTE", "<increment> unit 'furlong'"),
        ),  # fmt: skip
        (
            _csv_edit('<increment value="0.002" unit="s"/>', '<increment value="0" unit="s"/>'),
            ("<increment> value '0'", "not a positive number"),
        ),  # fmt: skip
        (_csv_edit('code="TIME_ABSOLUTE"', 'code="TIME_UNKNOWN"'), ("no TIME_ABSOLUTE or TIME_RELATIVE",)),
        (
            _aecg_lead_edit("V2", 'origin value="0" unit="uV"', 'origin value="0" unit="mmHg"'),
            ("(MDC_ECG_LEAD_V2) <origin> unit 'mmHg'",),
        ),  # fmt: skip
        (_aecg_lead_edit("V4", 'scale value="5"', 'scale value="0"'), ("(MDC_ECG_LEAD_V4) <scale> value 0",)),
        (_aecg_lead_edit("V5", "<digits>", "<digits>1x "), ("(MDC_ECG_LEAD_V5) <digits>: '1x'", "not a whole number")),
        (_aecg_lead_edit("V1", "<digits>", "<digits>7 "), ("differ in length", "V1 501")),
        (_aecg_lead_edit("V6", 'code="MDC_ECG_LEAD_V6"', 'code="MDC_ECG_LEAD_V5"'), ("V5 appear more than once",)),
        (_aecg_lead_edit("V6", 'code="MDC_ECG_LEAD_V6"', 'code="MDC_ECG_LEAD_V7"'), ("unknown lead name 'V7'",)),
        (_aecg_lead_edit("AVL", 'code="MDC_ECG_LEAD_AVL"', 'code="MDC_ECG_ST_AVL"'), ("missing aVL",)),
        (_aecg_lead_edit("I", 'xsi:type="SLIST_PQ"', 'xsi:type="SLIST_INT"'), ("xsi:type 'SLIST_INT'",)),
        (_aecg_lead_edit("II", '<scale value="5" unit="uV"', '<scale value="5" unit="mV"'), ("II (", "beyond 200 mV")),
    ],
    ids=[
        "time-unit",
        "time-zero",
        "no-time",
        "origin-unit",
        "scale-zero",
        "digits",
        "lengths",
        "duplicate",
        "unknown",
        "missing",
        "value-type",
        "uv-as-mv",
    ],  # fmt: skip
)
def test_aecg_refusals_name_the_file_and_the_field(tmp_path, edit, needles):
    _refused(_variant(tmp_path, "aecg_rhythm.xml", edit), *needles)


def test_aecg_with_eight_leads_gets_the_limb_leads_derived(tmp_path):
    def eight(text):
        for code in ("III", "AVR", "AVL", "AVF"):
            start = text.index(f'code="MDC_ECG_LEAD_{code}"')
            begin = text.rindex("                    <component>", 0, start)
            end = text.index("</component>\n", start) + len("</component>\n")
            text = text[:begin] + text[end:]
        return text

    ecg = read_record(_variant(tmp_path, "aecg_rhythm.xml", eight))
    assert ecg.meta["leads_derived"] == ["III", "aVR", "aVL", "aVF"]
    np.testing.assert_allclose(ecg.signal, _known_mv("aecg_rhythm.xml"), atol=1e-6)


# ------------------------------------------------------------------ Philips


@pytest.mark.parametrize("name", ["philips_xli.xml", "philips_uncompressed.xml"])
@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_csv_edit("<documentversion>", "<documentversion>9"), ("<documentversion> '9",)),
        (_csv_edit("<documenttype>PhilipsECG", "<documenttype>MortaraECG"), ("<documenttype> 'MortaraECG'",)),
        (_csv_edit("<samplingrate>500", "<samplingrate>5000"), ("samplespersecond '500' but <samplingrate> '5000'",)),
        (_csv_edit('durationperchannel="1000"', 'durationperchannel="1200"'), ("600",)),
        (_csv_edit('durationperchannel="1000"', 'durationperchannel="1001"'), ("durationperchannel '1001'", "500.5")),
        (_csv_edit('dataencoding="Base64"', 'dataencoding="Hex"'), ("dataencoding 'Hex'",)),
        (_csv_edit(' resolution="5"', ' resolution="10"'), ("resolutions disagree",)),
        (_csv_edit("<bitspersample>16", "<bitspersample>12"), ("<bitspersample> '12'",)),
        (_csv_edit('V5 V6"', 'V5 V5"'), ("V5 appear more than once",)),
        (
            _chain(
                _csv_edit(' resolution="5"', ' resolution="1000"'), _csv_edit("<resolution>5<", "<resolution>1000<")
            ),
            ("V4 (", "beyond 200 mV"),
        ),  # fmt: skip
    ],
    ids=[
        "version",
        "type",
        "rate",
        "duration",
        "half-sample",
        "encoding",
        "resolution",
        "bits",
        "duplicate",
        "uv-as-mv",
    ],  # fmt: skip
)
def test_philips_refusals_name_the_file_and_the_field(tmp_path, name, edit, needles):
    _refused(_variant(tmp_path, name, edit), *needles)


def test_philips_unknown_compression_and_broken_xli_are_refused(tmp_path):
    zipped = _variant(
        tmp_path, "philips_uncompressed.xml", _csv_edit('compression="Uncompressed"', 'compression="ZIP"')
    )
    _refused(zipped, "compression 'ZIP'", "XLI and Uncompressed")

    def cut(text):  # half the XLI payload: sierraecg decodes fewer or shorter leads
        start = text.index('bitspersample="16">') + len('bitspersample="16">')
        end = text.index("</parsedwaveforms>")
        data = "".join(text[start:end].split())
        return text[:start] + data[: len(data) // 2 // 4 * 4] + text[end:]

    broken = _variant(tmp_path, "philips_xli.xml", cut)
    with pytest.raises(EcgError) as exc:
        read_record(broken)
    _one_line_error(exc, "philips_xli.xml")
    assert "samples decoded" in str(exc.value) or "XLI" in str(exc.value)

    def reorder(text):
        return text.replace('leadlabels="I II III aVR', 'leadlabels="II I III aVR')

    _refused(_variant(tmp_path, "philips_xli.xml", reorder), "XLI stores III, aVR, aVL, aVF as residues")
