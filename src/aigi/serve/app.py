"""The HTTP API and the web page (``aigi serve``), on the library API: a verdict here is exactly
:meth:`aigi.api.Detection.to_dict`, as ``aigi detect --json`` prints it.

- ``POST /v1/detect``: images as multipart files (any field name) or a JSON body ``{"images": [{"name": ..., "data":
  <base64>}]}``; options in the query (``model``, ``threshold``, ``provenance``, ``explain``). One bad file gets its
  error and the others their verdicts (200); a request with no readable image is 422.
- ``POST /v1/inspect``: provenance only (no model). ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``.
- ``GET /``: the page (``static/``: plain HTML, CSS and JavaScript, no build step, no CDN).

Limits (:class:`Limits`), each a JSON ``{"error": ...}`` with its status: the body's size (413; a body without a
``Content-Length`` is 411), images per request (413), pixels per image (that image's error), waiting requests (503
with ``Retry-After`` when the queue is full) and time per request (504). Uploads are decoded in memory (the multipart
parser never spools to disk) and nothing about a request is kept after the response; the log has one line per
request without file names unless ``log_names``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from aigi import api
from aigi.checkpoints import Model
from aigi.data.decode import ALLOWED_FORMATS, ImageDecodeError, InMemoryImage
from aigi.errors import describe_validation
from aigi.provenance.findings import Provenance
from aigi.serve import schema
from aigi.serve.batcher import Batcher, Busy, Options

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("aigi.serve")


class Limits(BaseModel):
    """What one request may ask of the server; every field is an ``aigi serve`` option."""

    max_upload_mb: float = Field(32.0, gt=0, description="largest request body, in MiB (413 above)")
    max_images: int = Field(16, ge=1, description="images per request (413 above)")
    max_megapixels: float = Field(50.0, gt=0, description="pixels per image, in millions (that image's error above)")
    max_queue: int = Field(32, ge=1, description="requests waiting for the model (503 with Retry-After above)")
    timeout_s: float = Field(60.0, gt=0, description="seconds a request may take (504 above)")
    batch_images: int = Field(16, ge=1, description="images the model scores in one call")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long the batcher waits for more requests")
    log_names: bool = Field(False, description="log the names of uploaded files")
    trim_memory: bool = Field(True, description="return freed memory to the system after each batch (flat memory)")


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, results: list | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.results = status, message, headers, results


def create_app(models: dict[str, Model], limits: Limits | None = None, reasoner=None) -> FastAPI:
    """The app serving ``models`` (name -> loaded model; the first is the default); ``reasoner``
    (:class:`aigi.reasoner.VLMReasoner`) answers beside the evidence on the slow path of ``think=``."""
    limits = limits or Limits()
    batchers: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for name, model in models.items():
            batchers[name] = Batcher(
                model, limits.batch_images, limits.batch_wait_ms / 1000, limits.max_queue, limits.trim_memory, reasoner
            )
            batchers[name].start()
        yield
        for batcher in batchers.values():
            await batcher.stop()
        batchers.clear()

    app = FastAPI(
        title="aigi",
        summary="Is this image generated? Verdicts with their evidence.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served by _add_docs from local files
        redoc_url=None,
    )
    app.state.limits, app.state.models, app.state.batchers = limits, models, batchers
    # Starlette spools an uploaded file to a temporary file above 1 MiB; a body is at most max_upload_mb, so with this
    # ceiling every upload stays in memory.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, int(limits.max_upload_mb * 2**20) + 1)
    _add_middleware(app, limits)
    _add_routes(app, models, batchers, limits)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """The interactive API docs at /docs with Swagger UI served by this app (swagger-ui-bundle-v2), never a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="aigi API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _version() -> str:
    from aigi import __version__

    return __version__


def _error(status: int, message: str, headers: dict | None = None, results: list | None = None) -> JSONResponse:
    body = {"error": message} if results is None else {"error": message, "results": results}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_middleware(app: FastAPI, limits: Limits) -> None:
    max_bytes = int(limits.max_upload_mb * 2**20)

    @app.middleware("http")
    async def body_limit_and_log(request: Request, call_next):
        start = time.perf_counter()
        response = _body_refusal(request, max_bytes) or await call_next(request)
        images = getattr(request.state, "images", None)
        names = getattr(request.state, "names", None) if limits.log_names else None
        log.info(
            "%s %s %d%s %.0f ms%s",
            request.method,
            request.url.path,
            response.status_code,
            "" if images is None else f" {images} images",
            (time.perf_counter() - start) * 1000,
            f" {names}" if names else "",
        )
        return response

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return _error(err.status, err.message, err.headers, err.results)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_query(request: Request, err: RequestValidationError):
        return _error(422, "; ".join(_query_problem(e) for e in err.errors()))


def _query_problem(error: dict) -> str:
    """One FastAPI validation error in words: ``threshold=2: Input should be less than or equal to 1``."""
    where = error.get("loc", ())[-1] if error.get("loc") else "request"
    given = error.get("input")
    return f"{where}={given}: {error.get('msg', 'invalid')}" if given is not None else f"{where}: {error.get('msg')}"


def _body_refusal(request: Request, max_bytes: int) -> JSONResponse | None:
    """413 for a declared body above the limit, 411 for a POST body of unknown length (it could not be bounded)."""
    if request.method != "POST":
        return None
    length = request.headers.get("content-length")
    if length is None:
        return _error(411, "the request needs a Content-Length header (a body of unknown length is refused)")
    if not length.isdigit() or int(length) > max_bytes:
        return _error(413, f"request body too large ({length} bytes > {max_bytes} bytes, --max-upload-mb)")
    return None


def _add_routes(app: FastAPI, models: dict[str, Model], batchers: dict[str, Batcher], limits: Limits) -> None:
    default = next(iter(models))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", response_model=schema.Health, summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=schema.Health,
        responses={503: {"model": schema.Error}},
        summary="Every model is loaded and its batcher running",
    )
    async def readyz():
        if set(batchers) != set(models):
            raise RequestError(503, "models are still loading", {"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/v1/models", response_model=list[schema.ModelInfo], summary="The models this server runs")
    async def list_models():
        return [schema.model_info(name, model, name == default) for name, model in models.items()]

    @app.post(
        "/v1/detect",
        summary="Verdicts for one or many images",
        responses=schema.DETECT_RESPONSES,
        openapi_extra=schema.upload_body(),
    )
    async def detect(
        request: Request,
        model: str | None = Query(None, description="a model name from /v1/models (default: the first)"),
        threshold: float | None = Query(None, ge=0, le=1, description="decide at this P(generated); no band"),
        provenance: bool = Query(True, description="read what the files declare (C2PA, metadata, watermarks)"),
        explain: bool = Query(False, description="add each image's heatmap as a base64 PNG"),
        think: Literal["fast", "slow", "auto"] | None = Query(
            None,
            description="fast: the model alone; slow: whole image, heatmap, provenance, explanation; auto: slow "
            "only for images inside the model's uncertainty band. Each result then says which path decided and why.",
        ),  # fmt: skip
    ):
        name = default if model in (None, "default") else model
        if name not in models:
            raise RequestError(404, f"no model {name!r}; this server runs: {', '.join(models)}")
        if explain and models[name].detector.patch_map_label is None:
            raise RequestError(422, f"model {name!r} ({models[name].config.detector}) gives no per-patch map")
        if think is not None and (why := thinking_refusal(models[name], think, threshold, provenance)):
            raise RequestError(422, why)
        uploads = await read_uploads(request, limits)
        results = await _detect(batchers[name], uploads, Options(threshold, provenance, explain, think), limits)
        if all(r["verdict"] == "error" for r in results):
            raise RequestError(422, "no image in the request could be read", results=results)
        used = models[name]
        t, band = (used.threshold, used.config.band) if threshold is None else (threshold, None)
        return {"model": name, "threshold": t, "band": None if band is None else list(band), "results": results}

    @app.post(
        "/v1/inspect",
        summary="What each file declares about its origin (no model)",
        responses=schema.INSPECT_RESPONSES,
        openapi_extra=schema.upload_body(),
    )
    async def inspect(request: Request):
        from aigi.provenance import inspect_file

        uploads = await read_uploads(request, limits)
        found = await asyncio.to_thread(lambda: [inspect_file(u.name, u.data) for u in uploads])
        results = [r.to_dict() for r in found]
        if all(r.unreadable for r in found):
            raise RequestError(422, "no file in the request could be read", results=results)
        return {"results": results}


def thinking_refusal(model: Model, mode: str, threshold: float | None, provenance: bool) -> str | None:
    """Why ``think=mode`` cannot be answered for this request (None: it can)."""
    from aigi.think import has_slow_path

    if threshold is not None:
        return "think decides with the model's calibrated threshold and band: drop threshold"
    if not provenance:
        return "think reads what the files declare as evidence: drop provenance=false"
    if mode != "fast" and not has_slow_path(model):
        return "this model has no slow path (only the shipped default has one): use think=fast"
    return None


async def _detect(batcher: Batcher, uploads: list[InMemoryImage], options: Options, limits: Limits) -> list[dict]:
    """Each upload's ``Detection.to_dict`` (heatmaps in base64); oversized images get their error unscored."""
    refused = {i: why for i, u in enumerate(uploads) if (why := too_many_pixels(u, limits.max_megapixels))}
    scored = [u for i, u in enumerate(uploads) if i not in refused]
    try:
        detections = await asyncio.wait_for(batcher.detect(scored, options), limits.timeout_s) if scored else []
    except Busy:
        raise RequestError(
            503, "the server is busy: too many requests waiting (--max-queue); retry shortly", {"Retry-After": "1"}
        )
    except asyncio.TimeoutError:
        raise RequestError(504, f"the request took longer than {limits.timeout_s:g} s (--timeout-s)") from None
    found = iter(d.to_dict(heatmap_base64=True) for d in detections)
    return [_refused(uploads[i], refused[i], options) if i in refused else next(found) for i in range(len(uploads))]


def _refused(upload: InMemoryImage, reason: str, options: Options) -> dict:
    return api.Detection(
        path=upload.name,
        verdict="error",
        basis=f"could not be scored: {reason}",
        prob_generated=None,
        detector_verdict=None,
        threshold=options.threshold or 0.0,
        error=reason,
        provenance=Provenance(upload.name, problems=[f"not read: {reason}"]) if options.provenance else None,
    ).to_dict()


def too_many_pixels(upload: InMemoryImage, max_megapixels: float) -> str | None:
    """Why an upload is refused for its size, read from its header alone (nothing decoded); None when it fits or is
    not an image the decoder takes (the decoder then says why)."""
    try:
        with Image.open(io.BytesIO(upload.data), formats=ALLOWED_FORMATS) as image:
            width, height = image.size
    except Exception:
        return None
    if width * height > max_megapixels * 1e6:
        return f"too many pixels ({width} x {height} = {width * height / 1e6:.1f} MP > {max_megapixels:g} MP, --max-megapixels)"
    return None


async def read_uploads(request: Request, limits: Limits) -> list[InMemoryImage]:
    """The request's images, in memory: multipart files, or a JSON body of base64 images."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        uploads = await _multipart(request, limits)
    elif kind == "application/json":
        uploads = await _json_images(request)
    else:
        raise RequestError(415, 'send images as multipart/form-data files or as JSON {"images": [...]}')
    if not uploads:
        raise RequestError(422, "the request holds no image")
    if len(uploads) > limits.max_images:
        raise RequestError(413, f"too many images ({len(uploads)} > {limits.max_images} per request, --max-images)")
    request.state.images, request.state.names = len(uploads), [u.name for u in uploads]
    return uploads


async def _multipart(request: Request, limits: Limits) -> list[InMemoryImage]:
    try:
        form = await request.form(max_files=limits.max_images + 1, max_fields=limits.max_images + 16)
    except StarletteHTTPException as err:
        if "Too many files" in str(err.detail):
            raise RequestError(413, f"too many images (> {limits.max_images} per request, --max-images)") from None
        raise RequestError(400, f"unreadable multipart body: {err.detail}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    try:
        return [InMemoryImage(f.filename or f"upload-{i}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


async def _json_images(request: Request) -> list[InMemoryImage]:
    try:
        body = schema.JSONImages.model_validate(await request.json())
    except ValidationError as err:
        raise RequestError(422, f"invalid JSON body: {describe_validation(err)}") from None
    except ValueError:
        raise RequestError(422, "the body is not JSON") from None
    uploads = []
    for i, image in enumerate(body.images):
        try:
            data = image.data.split(",", 1)[1] if image.data.startswith("data:") else image.data  # a data: URL
            uploads.append(InMemoryImage(image.name or f"image-{i}", base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(422, f"images[{i}] ({image.name or 'unnamed'}): data is not base64") from None
    return uploads


__all__ = ["Limits", "create_app", "ImageDecodeError"]


CONFIG_VAR = "AIGI_SERVE_CONFIG"  # how `aigi serve --workers N` hands each worker process its models and limits


def load_models(folders: list[Path] | None) -> dict[str, Model]:
    """Each model folder under its folder's name (a repeated name gets a suffix); none: the shipped default."""
    if not folders:
        return {"default": api.load()}
    models: dict[str, Model] = {}
    for folder in folders:
        name, k = Path(folder).resolve().name, 2
        while name in models:
            name, k = f"{Path(folder).resolve().name}-{k}", k + 1
        models[name] = api.load(folder)
    return models


def from_environment() -> FastAPI:
    """The app a uvicorn worker builds (``--workers`` > 1): models and limits from :data:`CONFIG_VAR`."""
    import json
    import os

    config = json.loads(os.environ[CONFIG_VAR])
    folders = [Path(f) for f in config["models"]] or None
    reasoner = load_reasoner(config.get("reasoner"), config.get("allow_download", False))
    return create_app(load_models(folders), Limits(**config["limits"]), reasoner)


def load_reasoner(source: str | None, allow_download: bool = False):
    """The vision-language reasoner of ``aigi serve --reasoner`` (None when none was given)."""
    if source is None:
        return None
    from aigi.reasoner import VLMReasoner

    return VLMReasoner(source, allow_download)
