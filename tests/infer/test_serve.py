"""`evl-ecg serve`: a real server process on a loopback port, hit by an HTTP client (httpx)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from evl_ecg.infer.interpreter import DISCLAIMER  # noqa: E402
from evl_ecg.infer.serve import is_loopback  # noqa: E402

LIMIT_MB = 0.5
#: Loading torch, transformers and the model takes ~10 s on an idle core; a loaded shared machine needs more.
START_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
        cmd = [sys.executable, "-m", "evl_ecg.cli", "serve", "--model", str(model), "--port", str(self.port)]
        cmd += ["--max-upload-mb", str(LIMIT_MB)]
        self.log = open(tmp.parent / "server.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + START_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()  # never leave a server behind
        raise RuntimeError(f"server did not come up within {START_S} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(student_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve") / "tmp"
    tmp.mkdir()
    srv = Server(student_dir, tmp)
    yield srv
    srv.stop()


def _post(server, files, **data):
    return httpx.post(server.url + "/predict", files=files, data=data, timeout=300)


def _upload(path: Path, name: str | None = None):
    return ("file", (name or path.name, path.read_bytes()))


def test_health_names_the_model_card_and_says_research_only(server, student_dir):
    doc = httpx.get(server.url + "/health").json()
    assert doc["status"] == "ok" and doc["disclaimer"] == DISCLAIMER
    assert doc["model_card"] == str(student_dir / "README.md")
    assert doc["render"]["size"] == [448, 336] and doc["max_upload_bytes"] == int(LIMIT_MB * 1024 * 1024)


def test_the_page_is_served_and_loads_nothing_from_elsewhere(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not a medical device" in page.text and 'fetch("/predict"' in page.text
    assert "http://" not in page.text and "https://" not in page.text


def test_a_wfdb_upload_answers_as_the_python_api(server, records, student_dir):
    from evl_ecg.infer.interpreter import Interpreter

    hea, dat = records["wfdb"], records["wfdb"].with_suffix(".dat")
    r = _post(server, [_upload(hea), _upload(dat)], question="ptbxl")
    assert r.status_code == 200, r.text
    doc = r.json()
    local = Interpreter.from_pretrained(student_dir).predict(hea, "ptbxl")
    assert doc["answer"] == local.answer and doc["labels"] == local.labels
    assert doc["probabilities"] == pytest.approx(local.probabilities, abs=1e-5)
    assert doc["kind"] == "wfdb" and doc["source"] == "rbbb.hea" and doc["image_size"] == [448, 336]
    assert doc["disclaimer"] == DISCLAIMER and doc["image_png_base64"]


def test_concurrent_requests_do_not_mix(server, records):
    hea, dat = records["wfdb"], records["wfdb"].with_suffix(".dat")
    uploads = {
        "wfdb": [_upload(hea), _upload(dat)],
        "dicom": [_upload(records["dicom"])],
        "png": [_upload(records["png"])],
    }
    alone = {k: _post(server, v, question="code15").json() for k, v in uploads.items()}
    jobs = [k for k in uploads for _ in range(3)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda k: (k, _post(server, uploads[k], question="code15")), jobs))
    for kind, response in together:
        assert response.status_code == 200
        doc = response.json()
        assert doc["kind"] == alone[kind]["kind"] and doc["answer"] == alone[kind]["answer"]
        assert doc["probabilities"] == pytest.approx(alone[kind]["probabilities"], abs=1e-6)
        assert doc["image_png_base64"] == alone[kind]["image_png_base64"]


def test_bad_uploads_get_a_clear_4xx(server, records, tmp_path):
    big = b"\0" * int(LIMIT_MB * 1024 * 1024 + 10)
    cases = [
        ([("file", ("page.png", b"not an image"))], {}, 422, "page.png: not a readable PNG/JPEG image"),
        ([("file", ("notes.txt", b"hello"))], {}, 415, "notes.txt: unsupported file type '.txt'"),
        ([_upload(records["wfdb"].with_suffix(".dat"))], {}, 422, "needs its header (.hea)"),
        ([_upload(records["wfdb"])], {}, 422, "rbbb.hea: data file rbbb.dat not found"),
        ([_upload(records["hdf5"])], {}, 422, "exams.hdf5: an HDF5 file holds many exams"),
        ([_upload(records["hdf5"])], {"exam_id": "99"}, 422, "exam_id 99 not found"),
        ([_upload(records["png"])], {"question": "horoscope"}, 400, "question: unknown 'horoscope'"),
        ([("file", ("big.png", big))], {}, 413, "the limit is 524,288 bytes"),
        ([("file", ("empty.png", b""))], {}, 422, "empty.png: the uploaded file is empty"),
        ([("note", (None, "just text"))], {}, 400, "no file in the field 'file'"),
    ]
    for files, data, status, needle in cases:
        r = _post(server, files, **data)
        assert r.status_code == status, (needle, r.status_code, r.text)
        doc = r.json()
        assert needle in doc["error"], doc["error"]
        assert "\n" not in doc["error"] and "Traceback" not in r.text
        assert doc["disclaimer"] == DISCLAIMER
    raw = httpx.post(server.url + "/predict", content=b"{}", headers={"content-type": "application/json"})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["error"]
    ok = _post(server, [_upload(records["hdf5"])], exam_id="1001")
    assert ok.status_code == 200 and ok.json()["source"] == "exams.hdf5:1001"


def test_uploads_are_removed_after_each_request(server, records):
    _post(server, [_upload(records["png"])])
    assert not [p for p in server.tmp.iterdir() if p.name.startswith("evl-ecg-upload-")]


def test_only_loopback_hosts_count_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("muse_rhythm.xml", "muse"),
        ("aecg_rhythm.xml", "aecg"),
        ("philips_xli.xml", "philips"),
        ("ecg_export.edf", "edf"),
        ("ecg_export.csv", "csv"),
    ],
)
def test_every_export_format_is_an_upload_and_answers_as_the_python_api(server, student_dir, fixture, kind):
    """The exports a clinic's carts write (hand-made fixtures in each published layout, tests/ecg/fixtures): the
    upload answers as the Python API on the same file, and no patient identifier of the file reaches the reply."""
    from evl_ecg.infer.interpreter import Interpreter

    path = Path(__file__).parents[1] / "ecg" / "fixtures" / fixture
    r = _post(server, [_upload(path)], question="ptbxl")
    assert r.status_code == 200, r.text
    doc = r.json()
    local = Interpreter.from_pretrained(student_dir).predict(path, "ptbxl")
    assert doc["answer"] == local.answer and doc["labels"] == local.labels
    assert doc["kind"] == local.kind, (doc["kind"], kind)
    text = json.dumps({k: v for k, v in doc.items() if k != "image_png_base64"})  # base64 holds any letters
    for identifier in ("DOE", "JANE", "PID-90210", "1951-05-02", "05-02-1951", "19510502", "02-MAY-1951"):
        assert identifier not in text, identifier
