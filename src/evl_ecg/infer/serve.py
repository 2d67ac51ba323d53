"""A local page: ``POST /predict`` (an uploaded record or image -> JSON), ``GET /health`` and one HTML page.

:func:`create_app` builds a FastAPI app around an :class:`~evl_ecg.infer.interpreter.Interpreter`; :func:`serve` runs
it with uvicorn. FastAPI, uvicorn and python-multipart are the optional extra ``[serve]``.

Safety: :func:`serve` binds to ``127.0.0.1`` unless told otherwise (and warns when told); the page loads nothing from
elsewhere; a request body larger than ``max_upload_bytes`` is refused with 413 before it is parsed (by its
``Content-Length``, and while it streams in); uploads are written only to a fresh temporary folder and removed when
the request ends; bad uploads get a 4xx with one line naming the file and the problem (``{"error": ...}``), and an
unexpected failure a 500 with one line, never a traceback. Model calls are serialised by the interpreter's lock, so
concurrent requests cannot mix their inputs.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``, imported
# inside :func:`create_app` so that the extra stays optional) as objects.
import base64
import io
import ipaddress
import logging
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from evl_ecg.ecg.readers import formats, formats_help
from evl_ecg.infer.export import MissingExtraError
from evl_ecg.infer.inputs import is_input_error, read_input
from evl_ecg.infer.interpreter import DISCLAIMER, Interpreter
from evl_ecg.infer.questions import QUESTIONS

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "UploadTooLarge", "create_app", "is_loopback", "page_html", "serve"]

logger = logging.getLogger(__name__)

#: Upload limit (a 12-lead WFDB record of 10 s at 500 Hz is 120 kB; a 600 DPI letter scan is a few MB).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Files one request may carry (a WFDB header and its data file, or one record / image).
MAX_FILES = 4
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class UploadTooLarge(Exception):
    """The request body is larger than the server's upload limit."""


def _require_serve() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"evl-ecg serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): "
            "pip install 'evl-ecg[serve]'"
        ) from None


def page_html() -> str:
    """The page (a package resource, ``infer/static/index.html``)."""
    return resources.files("evl_ecg.infer").joinpath("static/index.html").read_text(encoding="utf-8")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _safe_name(name: str | None, index: int) -> str:
    base = Path(name or "").name
    cleaned = _SAFE.sub("_", base).lstrip(".")
    return cleaned or f"upload-{index}"


class _BodyLimit:
    """ASGI middleware: refuse a POST body over ``limit`` bytes (by ``Content-Length`` first, then as it streams)."""

    def __init__(self, app: Any, limit: int, extra: dict[str, Any]) -> None:
        self.app = app
        self.limit = limit
        self.extra = extra

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(send, int(length))
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(seen)
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, send: Any, size: int) -> None:
        import json

        body = json.dumps({"error": _too_large_message(size, self.limit), **self.extra}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _too_large_message(size: int | None, limit: int) -> str:
    got = f"{size:,} bytes" if size else "more"
    return f"upload: the request carries {got}; the limit is {limit:,} bytes (evl-ecg serve --max-upload-mb)"


def _png_base64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pick_input(names: list[str], exam_id: str | None) -> str:
    """Which uploaded file is the ECG: a WFDB header, a DICOM file, an image, or an HDF5 file with ``exam_id``."""
    suffixes = {n: Path(n).suffix.lower() for n in names}
    for fmt in formats():  # in the registry's order: the first format an uploaded file is an entry of
        hits = [n for n in names if suffixes[n] in fmt.entries]
        if not hits:
            continue
        if not fmt.needs_index:
            return hits[0]
        if not exam_id:
            raise _Reject(422, f"{hits[0]}: an HDF5 file holds many exams; give the form field exam_id")
        return f"{hits[0]}:{exam_id}"
    for fmt in formats():
        part = next((n for n in names if suffixes[n] in fmt.companions), None)
        if part is not None:
            raise _Reject(
                422, f"{part}: a part of {fmt.label}: it needs its header ({fmt.entries[0]}) in the same upload"
            )
    raise _Reject(
        415, f"{names[0]}: unsupported file type {suffixes[names[0]] or '(no suffix)'!r}; upload {formats_help()}"
    )


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(interpreter: Interpreter, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> Any:
    """The FastAPI app (module docstring). ``max_upload_bytes`` bounds a whole request body."""
    _require_serve()
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="evl-ecg", docs_url=None, redoc_url=None, openapi_url=None)
    about = interpreter.describe()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": message, "disclaimer": DISCLAIMER, "model_card": about["model_card"]}, status_code=status
        )

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
        return error(413, _too_large_message(int(exc.args[0]) if exc.args else None, max_upload_bytes))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"request: {where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return error(500, f"internal error: {type(exc).__name__}{': ' + reason if reason else ''}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **about, "max_upload_bytes": max_upload_bytes}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return error(415, "request: send multipart/form-data with the ECG in the field 'file'")
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=8)
        except UploadTooLarge:
            raise
        except Exception as exc:  # malformed multipart, too many files
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            return error(400, f"request: cannot read the upload ({str(detail).splitlines()[0]})")
        try:
            uploads = [v for k, v in form.multi_items() if k in ("file", "files") and hasattr(v, "filename")]
            if not uploads:
                return error(400, "request: no file in the field 'file'")
            question = str(form.get("question") or "ptbxl")
            if question not in QUESTIONS:
                return error(400, f"question: unknown {question!r}; expected one of {', '.join(QUESTIONS)}")
            exam_id = str(form.get("exam_id") or "").strip() or None
            with tempfile.TemporaryDirectory(prefix="evl-ecg-upload-") as tmp:
                names: list[str] = []
                for i, upload in enumerate(uploads):
                    name = _safe_name(upload.filename, i)
                    if name in names:
                        return error(400, f"{name}: uploaded twice")
                    data = await upload.read()
                    if not data:
                        return error(422, f"{name}: the uploaded file is empty")
                    (Path(tmp) / name).write_bytes(data)
                    names.append(name)
                try:
                    spec = _pick_input(names, exam_id)
                except _Reject as rej:
                    return error(rej.status, rej.message)

                def run() -> Any:
                    item = read_input(Path(tmp) / spec, source=spec)
                    return interpreter.predict(item, question)

                try:
                    pred = await run_in_threadpool(run)
                except Exception as exc:
                    if is_input_error(exc):
                        return error(422, str(exc).replace(tmp + "/", "").splitlines()[0])
                    raise
        finally:
            await form.close()
        doc = pred.to_dict()
        doc["image_png_base64"] = _png_base64(pred.image)
        return JSONResponse(doc)

    return _BodyLimit(app, max_upload_bytes, {"disclaimer": DISCLAIMER, "model_card": about["model_card"]})


def serve(
    model_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    render_spec: str | None = None,
    echo: Any = print,
) -> None:
    """Load the model and serve the app until interrupted (module docstring)."""
    _require_serve()
    import uvicorn

    interpreter = Interpreter.from_pretrained(model_dir, render_spec=render_spec)
    app = create_app(interpreter, max_upload_bytes=max_upload_bytes)
    if not is_loopback(host):
        echo(f"warning: binding to {host}: other machines on the network can reach this page")
    echo(f"serving {interpreter.card.name} on http://{host}:{port}/ (model card: {interpreter.card.path})")
    echo(DISCLAIMER)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
