"""The web app's library: a FastAPI app that loads the ensemble once and answers uploads of radiographs
(DICOM or image) with the fused boxes, the study probabilities and the image's none, plus the page
(``index.html`` beside this file) that draws them; ``python infer/app.py`` serves it."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from utils.data.boxes import denormalize_xyxy
from utils.data.dicom import MAX_PIXELS, DicomReadError, ImageSizeError, read_radiograph
from utils.data.labels import STUDY_CLASSES
from utils.ensemble.fusion import (
    NEGATIVE,
    display_threshold,
    image_none_probability,
    no_box_probability,
    study_row_probabilities,
)
from utils.prediction.predictor import Ensemble

log = logging.getLogger("app")

PAGE = Path(__file__).resolve().parent / "index.html"
PREVIEW_SIZE = 1024  # longer side of the preview the page draws on
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file, beyond the upload limit
MAX_PARTS = 16  # multipart fields of one upload: the page sends one; a million tiny ones are refused early
# A body must keep arriving: after a grace period, at least this many bytes per second on average (a 64 MB
# radiograph takes about an hour at that rate); a client that trickles or stalls is cut off with 408.
BODY_GRACE_SECONDS = 10.0
MIN_BODY_BYTES_PER_SECOND = 16 * 1024
READERS_PER_SLOT = 4  # bodies read at once per prediction slot (each bounded by the upload limit)
UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "DICOM, PNG or JPEG"}}}}}}}


class _TooManyParts(Exception):
    pass


def upload_from_multipart(content_type: str, body: bytes) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the multipart field ``file`` of an in-memory request body (parsed
    with python-multipart's streaming parser, nothing spooled to disk; at most :data:`MAX_PARTS` fields).
    Raises HTTPException 400. CPU work on up to the whole body: the app runs it off the event loop."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(400, "send the radiograph as multipart/form-data in the field 'file'")
    parts, current, header = [], {}, {"field": b"", "value": b""}

    def on_part_begin():
        if len(parts) >= MAX_PARTS:
            raise _TooManyParts
        current.clear()
        current.update(headers={}, data=bytearray())

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        current["headers"][header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    def on_part_data(data, start, end):
        current["data"] += data[start:end]

    def on_part_end():
        parts.append(dict(current))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except _TooManyParts:
        raise HTTPException(400, f"more than {MAX_PARTS} multipart fields; send the radiograph in the field "
                                 "'file'") from None
    except Exception as err:  # noqa: BLE001 - the parser's own error types; the answer is the same
        raise HTTPException(400, f"malformed multipart body ({type(err).__name__})") from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name") == b"file":
            return disposition.get(b"filename", b"upload").decode("utf-8", "replace") or "upload", bytes(part["data"])
    raise HTTPException(400, "no multipart field 'file' in the request")


def _png_base64(pixels: np.ndarray) -> str | None:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(pixels))
    return base64.b64encode(png.tobytes()).decode("ascii") if ok else None


def prediction_payload(ensemble: Ensemble, data: bytes, name: str, preview: bool,
                       opacity_map: bool = False) -> dict:
    """The API's answer for one radiograph's bytes; raises the reader's
    :class:`~utils.data.dicom.DicomReadError` (:class:`~utils.data.dicom.ImageSizeError` for a refused shape)."""
    started = time.perf_counter()
    prediction = ensemble.predict_source(data, image_id=Path(name).stem or "upload", name=name, max_pixels=MAX_PIXELS,
                                         with_opacity_map=opacity_map, strict=True)
    config = ensemble.config
    study = study_row_probabilities(prediction.study_probs, no_box_probability(prediction), config)
    classifier_negative = None if prediction.study_probs is None else float(prediction.study_probs[NEGATIVE])
    width, height = prediction.original_width, prediction.original_height
    boxes = denormalize_xyxy(prediction.boxes, width, height)
    payload = {
        "name": name,
        "width": width,
        "height": height,
        "boxes": [{"x_min": round(float(b[0]), 1), "y_min": round(float(b[1]), 1), "x_max": round(float(b[2]), 1),
                   "y_max": round(float(b[3]), 1), "score": round(float(s), 4)}
                  for b, s in zip(boxes, prediction.scores)],
        "study": {c: round(float(p), 4) for c, p in zip(STUDY_CLASSES, study)},
        "none": round(image_none_probability(prediction, classifier_negative, config), 4),
        "display_threshold": display_threshold(config),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if opacity_map:
        # The map covers the whole image (the model saw it squashed to a square): stretched back over
        # the width and height it lines up. None when the study model has no auxiliary head.
        found = prediction.opacity_map
        payload["opacity_map_png"] = None if found is None else _png_base64(np.round(found * 255).astype(np.uint8))
    if preview:
        # Shorter side such that the longer one is at most PREVIEW_SIZE, and never an upscale.
        shorter = max(1, min(min(width, height), round(PREVIEW_SIZE * min(width, height) / max(width, height))))
        pixels = read_radiograph(data, shorter, keep_aspect=True, name=name, max_pixels=MAX_PIXELS).pixels
        payload["preview_png"] = _png_base64(pixels)
    return payload


async def read_body(request: Request, limit: int, too_large: HTTPException, grace_seconds: float,
                    min_bytes_per_second: float) -> bytes:
    """The request's body, up to ``limit`` bytes (``too_large`` beyond), arriving at a rate the caller
    allows: at every moment ``grace_seconds + received / min_bytes_per_second`` must not have passed since
    the start (a stalled client is waited for only that long); 408 otherwise."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = request.stream().__aiter__()
    body = bytearray()
    while True:
        allowed = started + grace_seconds + len(body) / min_bytes_per_second - loop.time()
        try:
            if allowed <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(chunks.__anext__(), allowed)
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the upload arrived too slowly ({len(body)} bytes in "
                                     f"{loop.time() - started:.0f} s; at least {min_bytes_per_second / 1024:g} "
                                     "KiB/s are needed)") from None
        body += chunk  # a running count bounds what is held without a length
        if len(body) > limit:
            raise too_large


def create_app(weights_dir: Path | None, *, device: str = "cpu", max_upload_bytes: int = 64 << 20,
               max_pending: int = 4, body_grace_seconds: float = BODY_GRACE_SECONDS,
               min_body_bytes_per_second: float = MIN_BODY_BYTES_PER_SECOND):
    """The FastAPI application; ``weights_dir`` None (or without models) serves the page and says
    plainly that no model is loaded. ``max_pending``: predictions admitted at once, once their upload has
    arrived; ``READERS_PER_SLOT`` times as many uploads are read at once, each at a minimum rate (see the
    module's docstring)."""
    pending = 0  # requests admitted to /api/predict and not yet answered (changed on the event loop only)
    reading = 0  # uploads being received (changed on the event loop only)
    max_reading = READERS_PER_SLOT * max_pending
    ensemble, problem = None, "no trained weights given: start the app with --weights-dir runs/<run>/weights"
    if weights_dir is not None:
        try:
            ensemble, problem = Ensemble(weights_dir, overrides={"device": device, "workers": 0}), None
        except Exception as err:  # the page still opens and says why it cannot predict
            problem = f"could not load the weights in {weights_dir}: {err}"
            log.error(problem)
    lock = threading.Lock()  # one prediction at a time: see the module docstring

    def predict_locked(data: bytes, name: str, preview: bool, opacity_map: bool) -> dict:
        with lock:
            return prediction_payload(ensemble, data, name, preview, opacity_map)

    app = FastAPI(title="SIIM COVID-19 radiograph predictor",
                  description="Opacity boxes and study-level probabilities for one chest radiograph.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/healthz")
    def healthz() -> dict:
        """Whether the models are loaded, and which."""
        if ensemble is None:
            return {"status": "no_models", "detail": problem}
        return {"status": "ok", "device": str(ensemble.device), "models": ensemble.describe()["models"],
                "opacity_map": ensemble.has_opacity_map, "display_threshold": display_threshold(ensemble.config)}

    @app.post("/api/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request, preview: bool = False, opacity_map: bool = False) -> dict:
        """Predict one radiograph (DICOM, PNG or JPEG) sent as the multipart field ``file``. Boxes are in
        the original image's pixels; ``preview=true`` adds the decoded image as a base64 PNG (longer
        side at most 1,024); ``opacity_map=true`` adds the study model's opacity map as a base64 PNG
        (grey 0-255 = probability, covering the whole image; null without the auxiliary head)."""
        nonlocal pending, reading
        too_large = HTTPException(413, f"upload larger than the limit of {max_upload_bytes // (1 << 20)} MB")
        limit = max_upload_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large  # refused from the header: the body is never read
        if reading >= max_reading or pending >= max_pending:  # before the body: a refused request holds nothing
            raise _busy()
        reading += 1
        try:
            body = await read_body(request, limit, too_large, body_grace_seconds, min_body_bytes_per_second)
        except ClientDisconnect:
            log.info("%s: the client went away during its upload", request.client.host if request.client else "?")
            raise HTTPException(400, "the upload was cut short") from None
        finally:
            reading -= 1
        # A prediction slot is taken only now, with the whole upload here: slow senders hold none.
        if pending >= max_pending:
            raise _busy()
        pending += 1
        try:
            return await _predict(request, body, preview, opacity_map)
        finally:
            pending -= 1

    def _busy() -> HTTPException:
        return HTTPException(503, f"busy: {pending} radiographs are being predicted (at most {max_pending}) and "
                                  f"{reading} uploads received (at most {max_reading}); retry in a moment",
                             headers={"Retry-After": "1"})

    async def _predict(request: Request, body: bytes, preview: bool, opacity_map: bool) -> dict:
        too_large = HTTPException(413, f"upload larger than the limit of {max_upload_bytes // (1 << 20)} MB")
        name, data = await run_in_threadpool(upload_from_multipart, request.headers.get("content-type", ""), body)
        del body
        if len(data) > max_upload_bytes:
            raise too_large
        if not data:
            raise HTTPException(400, f"{name}: empty file")
        if ensemble is None:
            raise HTTPException(503, problem)
        try:
            return await run_in_threadpool(predict_locked, data, name, preview, opacity_map)
        except ImageSizeError as err:
            raise HTTPException(413, f"{name}: {err.reason}") from None
        except DicomReadError as err:
            raise HTTPException(422, f"{name}: {err.reason}") from None

    return app


def start_background_server(app, host: str = "127.0.0.1"):
    """Serve ``app`` with uvicorn on a free port of ``host`` in a daemon thread (the browser test and
    the load check); returns ``(base url, server)``; stop it with ``server.should_exit = True``."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start within 30 s")
        time.sleep(0.05)
    return f"http://{host}:{port}", server
