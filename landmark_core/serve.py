"""An HTTP API for photo platforms: ``landmark serve RUN``.

``POST /v1/predict`` answers the same decision ``landmark tag`` makes for a photo (top predictions, familiarity,
tagged / unknown / abstained / has_gps, and the place); ``POST /v1/tag`` returns the tagged JPEG (or the XMP
sidecar); ``GET /v1/model`` says which model answers; ``GET /v1/health`` that the service is up.

Requests are classified together: each photo is decoded in a thread of its own, then waits at most
``batch_wait_ms`` for others to share one forward pass (up to ``max_batch``); a full queue answers 503 with
``Retry-After`` at once instead of making a client wait without end. Every input a client can send is answered
with a 4xx and a one-line JSON ``error`` (never a 5xx): an upload is refused by its declared size before it is
read, and by its read size before it is decoded. A re-exported run is picked up on the next request, only if its
signature checks (see :func:`landmark_core.export.exporter.load_exported`); until then the model that was loaded answers.
Workers hold no state beyond the loaded model, so replicas behind a reverse proxy need nothing shared.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from .core.errors import ImageError, LandmarkError
from .core.images import MAX_UPLOAD_BYTES, check_upload
from .runs.run import Run
from .tagging.decision import TagDecision, TagStatus, decide
from .tagging.metadata import read_gps_checked
from .tagging.predict import Predictor
from .tagging.writing import tagged_bytes, xmp_sidecar

API_KEY_ENV = "LANDMARK_API_KEY"
#: Media types a photo may be posted as, besides a multipart form with a ``file`` field.
PHOTO_TYPES = ("application/octet-stream", "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp",
               "image/tiff", "image/avif")


@dataclass(frozen=True)
class ServeSettings:
    """Every setting of a service, in one place (``landmark serve``'s flags)."""
    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_key: str | None = None
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    device: str = "cpu"

    def checked(self) -> "ServeSettings":
        """These settings, or a LandmarkError saying which one is wrong (before anything listens)."""
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable() and self.api_key):
            raise LandmarkError("--api-key must be printable ASCII (it travels in an HTTP header)")
        if not is_loopback(self.host) and not self.api_key:
            raise LandmarkError(f"serving on {self.host} lets other machines in: give --api-key KEY (or set "
                                f"{API_KEY_ENV}), or keep the default --host 127.0.0.1")
        for name, value, low in (("--port", self.port, 0), ("--workers", self.workers, 1),
                                 ("--max-batch", self.max_batch, 1), ("--queue", self.max_queue, 1)):
            if not isinstance(value, int) or value < low:
                raise LandmarkError(f"{name} must be a whole number of at least {low} (got {value})")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise LandmarkError(f"--batch-wait-ms must be from 0 to 1000 (got {self.batch_wait_ms})")
        Run.open(self.run)  # a one-line error now for a run that is not there
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientError(Exception):
    """A request this service will not answer: its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class ModelHolder:
    """The run's model as the service answers with it: re-loaded when the run is exported again, only if the new
    export's signature checks (a failed reload keeps the model that was loaded, and says why)."""

    def __init__(self, run: str, device: str):
        self.run = Run.open(run)
        self.device = device
        self._lock = threading.Lock()
        self.predictor = Predictor(self.run, device=device)
        self._version = self._export_version()
        self.reload_error: str | None = None

    def _export_version(self):
        try:
            info = self.run.file(Run.EXPORT_META).stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def current(self) -> Predictor:
        version = self._export_version()
        if version != self._version:
            with self._lock:
                if version != self._version:
                    try:
                        self.predictor = Predictor(self.run, device=self.device)
                        self.reload_error = None
                    except Exception as error:  # a half-written or unreadable export: keep answering
                        self.reload_error = f"kept the model loaded before: {error}"
                    self._version = version
        return self.predictor


class MicroBatcher:
    """Photos decoded by many requests, classified together: one forward pass per ``max_batch`` photos or per
    ``wait`` seconds, whichever comes first; at most ``max_queue`` photos wait."""

    def __init__(self, holder: ModelHolder, max_batch: int, wait_s: float, max_queue: int):
        self.holder, self.max_batch, self.wait_s, self.max_queue = holder, max_batch, wait_s, max_queue
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="landmark-model")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None

    async def assess(self, predictor: Predictor, square, top_k: int):
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a queue belongs to one event loop (an ASGI test client may start several)
            self.loop, self.queue = loop, asyncio.Queue(maxsize=self.max_queue)
            self.task = loop.create_task(self._run(self.queue))
        future = loop.create_future()
        try:
            self.queue.put_nowait((predictor, square, top_k, future))
        except asyncio.QueueFull:
            raise ClientError(503, "the service is busy: try again in a moment", {"Retry-After": "1"}) from None
        return await future

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # one model per pass: a reload between two requests starts a new pass
            for predictor in dict.fromkeys(item[0] for item in batch):
                items = [item for item in batch if item[0] is predictor]
                top_k = max(item[2] for item in items)
                try:
                    results = await loop.run_in_executor(self.model_thread, predictor.assess_batch,
                                                         [item[1] for item in items], top_k)
                except Exception as error:  # the model failed on this batch: each request hears it, the loop goes on
                    results = [error] * len(items)
                for item, result in zip(items, results):
                    if not item[3].done():
                        item[3].set_result(result)


def _place_json(decision: TagDecision) -> dict | None:
    place = decision.place
    if decision.status != TagStatus.TAGGED or place is None:
        return None
    return {"name": place.display_name, "region": place.region, "country": place.country,
            "latitude": place.latitude, "longitude": place.longitude}


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (413) once it passes ``limit``: by its declared length before a byte is read, else
    while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ClientError(400, "Content-Length is not a number")
        if int(declared) > limit + 64 * 1024:  # a multipart form's boundaries and headers on top of the photo
            raise ClientError(413, f"the upload is over the {limit / 2**20:.0f} MiB limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + 64 * 1024:
            raise ClientError(413, f"the upload is over the {limit / 2**20:.0f} MiB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _photo_from_form(body: bytes, content_type: str) -> bytes:
    """The ``file`` field of a multipart form, parsed from the bytes already read (never from the socket)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ClientError(400, "a multipart form needs a boundary")
    parts: list[dict] = []
    current: dict = {}

    def on_part_begin():
        current.clear()
        current.update(headers=[], data=[], field=b"", value=b"")

    def on_header_field(data, start, end):
        current["field"] += data[start:end]

    def on_header_value(data, start, end):
        current["value"] += data[start:end]

    def on_header_end():
        current["headers"].append((current["field"].lower(), current["value"]))
        current["field"], current["value"] = b"", b""

    def on_part_data(data, start, end):
        current["data"].append(data[start:end])

    def on_part_end():
        parts.append(dict(current))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception:  # python-multipart's own errors: the form is malformed
        raise ClientError(400, "the multipart form cannot be read") from None
    for part in parts:
        disposition = dict(part["headers"]).get(b"content-disposition", b"")
        _, fields = parse_options_header(disposition)
        if fields.get(b"name") == b"file":
            return b"".join(part["data"])
    raise ClientError(400, "the multipart form has no 'file' field (send the photo as file=@photo.jpg)")


async def _photo(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "application/octet-stream")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data" and media not in PHOTO_TYPES:
        raise ClientError(415, f"send the photo as the body ({', '.join(PHOTO_TYPES[:3])}…) or as a multipart form "
                               f"field 'file', not {media or 'no content type'}")
    body = await _read_limited(request, limit)
    data = _photo_from_form(body, content_type) if media == "multipart/form-data" else body
    if not data:
        raise ClientError(400, "the body is empty: send a photo")
    if len(data) > limit:
        raise ClientError(413, f"the upload is over the {limit / 2**20:.0f} MiB limit")
    return data


#: The request body a photo endpoint takes, for the OpenAPI description (and the clients generated from it).
_PHOTO_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    **{media: {"schema": {"type": "string", "format": "binary"}} for media in PHOTO_TYPES}}}}
_ERROR = {"description": "one line saying why", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
_ERRORS = {status: _ERROR for status in (400, 401, 413, 415, 422, 503)}


def build_app(settings: ServeSettings) -> FastAPI:
    """The service's ASGI application (``landmark serve`` runs it with uvicorn)."""
    holder = ModelHolder(settings.run, settings.device)
    batcher = MicroBatcher(holder, settings.max_batch, settings.batch_wait_ms / 1000, settings.max_queue)
    decode_threads = ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2)), thread_name_prefix="landmark-decode")
    # uploads held at once (read, decoding or waiting for the model): each may be 25 MiB
    in_flight = asyncio.Semaphore(settings.max_queue + settings.max_batch)
    app = FastAPI(title="Landmark Tagger", version="1", description="Recognise the landmark in a photo and tag it "
                  "with its name and position (the decision `landmark tag` makes).")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if settings.api_key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = request.headers.get("x-api-key") or (token.strip() if scheme.lower() == "bearer" else "")
            if not hmac.compare_digest(given.encode("latin-1", "replace"), settings.api_key.encode()):
                return JSONResponse({"error": "a valid API key is needed (header X-API-Key or Authorization: "
                                              "Bearer KEY)"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.method == "POST":  # photos read or being decoded, before the model's queue: bounded too
            if in_flight.locked():
                return JSONResponse({"error": "the service is busy: try again in a moment"}, status_code=503,
                                    headers={"Retry-After": "1"})
            async with in_flight:
                return await call_next(request)
        return await call_next(request)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, error: ClientError):
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a bug, still one line (and no traceback to clients)
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    async def assess(request: Request, top_k: int, threshold: float | None, tag_unfamiliar: bool,
                     jpeg_only: bool = False):
        data = await _photo(request, settings.max_upload_bytes)
        predictor = holder.current()
        loop = asyncio.get_running_loop()
        try:
            image = check_upload(data, "the photo", settings.max_upload_bytes)
            if jpeg_only and image.format != "JPEG":  # before any decoding: the answer is known
                raise ClientError(415, "only a JPEG carries the tags inside it: ask for the sidecar (?sidecar=1)")
            square, (gps, gps_note) = await loop.run_in_executor(
                decode_threads, lambda: (predictor.decode(data), read_gps_checked(data)))
        except ImageError as error:
            raise ClientError(400, str(error)) from None
        assessment = await batcher.assess(predictor, square, top_k)
        if isinstance(assessment, Exception):
            raise assessment
        if assessment is None:
            raise ClientError(422, "the model gives no finite probabilities for this photo")
        decision = decide(assessment.predictions, predictor.probability_threshold if threshold is None else threshold,
                          gps, familiarity=assessment.familiarity,
                          familiarity_threshold=None if tag_unfamiliar else predictor.familiarity_threshold,
                          places=predictor.places)
        return data, predictor, assessment, decision, gps_note

    @app.get("/v1/health", responses=_ERRORS)
    async def health():
        return {"status": "ok"}

    @app.get("/v1/model", responses=_ERRORS)
    async def model():
        predictor = holder.current()
        meta = predictor.meta
        return {"run": predictor.run.id, "classes": predictor.classes, "format": meta.get("format", "torchscript"),
                "probability_threshold": predictor.probability_threshold,
                "familiarity_threshold": predictor.familiarity_threshold, "export_sha256": meta.get("sha256"),
                "reload_error": holder.reload_error}

    @app.post("/v1/predict", openapi_extra=_PHOTO_BODY, responses=_ERRORS)
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=50),
                      threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                      description="tag only at this probability or more "
                                                                  "(default: the run's own threshold)"),
                      tag_unfamiliar: bool = Query(False, description="also tag photos unlike every training photo")):
        data, predictor, assessment, decision, gps_note = await assess(request, top_k, threshold, tag_unfamiliar)
        return {"predictions": [{"label": p.label, "probability": p.probability}
                                for p in assessment.predictions[:top_k]],
                "familiarity": assessment.familiarity, "decision": decision.status, "place": _place_json(decision),
                "note": "; ".join(filter(None, [decision.note, gps_note]))}

    @app.post("/v1/tag", openapi_extra=_PHOTO_BODY, responses={200: {
        "description": "the photo with its tags (a JPEG), or its XMP sidecar; the X-Landmark-Decision header "
                       "says the decision (a photo that is not tagged comes back as it was, a sidecar as 204)",
        "content": {"image/jpeg": {}, "application/rdf+xml": {}}}, 204: {"description": "no tag: no sidecar"},
        **_ERRORS})
    async def tag(request: Request, sidecar: bool = Query(False, description="answer with the XMP sidecar"),
                  threshold: float | None = Query(None, ge=0.0, le=1.0), tag_unfamiliar: bool = Query(False)):
        data, predictor, assessment, decision, _ = await assess(request, 1, threshold, tag_unfamiliar,
                                                                jpeg_only=not sidecar)
        headers = {"X-Landmark-Decision": decision.status}
        if sidecar:
            if decision.status != TagStatus.TAGGED:
                return Response(status_code=204, headers=headers)
            return Response(xmp_sidecar(decision), media_type="application/rdf+xml", headers=headers)
        if decision.status != TagStatus.TAGGED:
            return Response(data, media_type="image/jpeg", headers=headers)
        try:
            tagged, _ = await asyncio.get_running_loop().run_in_executor(decode_threads, tagged_bytes, data, decision)
        except ImageError as error:
            raise ClientError(422, str(error)) from None
        return Response(tagged, media_type="image/jpeg", headers=headers)

    return app


def app_from_environment() -> FastAPI:
    """The application of the settings ``landmark serve`` put in the environment (each uvicorn worker builds its
    own: workers share nothing)."""
    return build_app(ServeSettings(**json.loads(os.environ["LANDMARK_SERVE_SETTINGS"])))


def serve(settings: ServeSettings) -> None:
    """Run the service until it is stopped (Ctrl-C, SIGTERM)."""
    import uvicorn
    settings = settings.checked()
    if settings.workers == 1:
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="info")
        return
    os.environ["LANDMARK_SERVE_SETTINGS"] = json.dumps(settings.__dict__)
    uvicorn.run("landmark_core.serve:app_from_environment", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level="info")
