"""The recognition service: a FastAPI app over one gallery, and its web page.

Endpoints (``/docs`` has the full schema):

- ``POST /classify``, ``POST /search`` (``?k=``): one image, as multipart field ``file``
  or JSON ``{"image": "<base64>"}``.
- ``POST /classify/batch``, ``POST /search/batch``: up to ``max_batch`` images, multipart
  field ``files`` or JSON ``{"images": [...]}``; an unreadable image gets an ``error``.
- ``POST /search/text`` (``?k=``): JSON ``{"text": ...}``, with a cross-modal text model.
- ``POST /register``: multipart ``files`` + ``label``, or JSON ``{"label", "images"}``.
- ``DELETE /items/{item_id}``, ``DELETE /classes/{label}``.
- ``GET /classes``, ``GET /items`` (paged), ``GET /items/{item_id}/thumbnail``.
- ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the web page).

Writes need the ``X-API-Key`` header; reads need it too with ``protect_reads``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from openrecog.gallery import Gallery, GalleryError
from openrecog.serve.middleware import (
    MetricsMiddleware,
    RequestTimedOut,
    ServeMetrics,
    TimeoutMiddleware,
    request_deadline,
)
from openrecog.serve.schemas import (
    BatchClassifyOut,
    BatchSearchOut,
    ClassesOut,
    ClassifyOut,
    ErrorOut,
    HealthOut,
    ItemsOut,
    RegisterOut,
    RemoveOut,
    SearchOut,
    TextQuery,
)
from openrecog.serve.service import GalleryService, gallery_error_status
from openrecog.serve.settings import API_KEY_ENV, MAX_K, ServeSettings
from openrecog.serve.thumbnails import PLACEHOLDER_SVG
from openrecog.serve.uploads import (
    ImageJSON,
    ImagesJSON,
    RegisterJSON,
    read_many_images,
    read_one_image,
)

log = logging.getLogger("openrecog.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
# The page uses only its own script and style; blob: for previews and fetched thumbnails.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="the service's API key: needed to write, and to read with protect_reads",
)
ApiKey = Annotated[str | None, Security(_api_key_header)]
K = Annotated[int | None, Query(ge=1, le=MAX_K, description="hits to return (default: k)")]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


def _file_schema(field: str, many: bool, label: bool = False) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {field: {"type": "array", "items": binary} if many else binary}
    required = [field]
    if label:
        properties["label"] = {"type": "string"}
        required.append("label")
    return {"type": "object", "properties": properties, "required": required}


def _body_doc(json_model: Any, field: str, many: bool, label: bool = False) -> dict[str, Any]:
    # The body is parsed by hand (multipart OR JSON, with size limits); describe both here.
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _file_schema(field, many, label)},
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


def _check_key(given: str | None, expected: str) -> None:
    if given is None or given == "":
        raise HTTPException(
            401,
            f"missing API key: send it in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
        )
    # Compare as bytes in constant time: the time taken must not reveal how much matched.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401,
            "wrong API key",
            headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
        )


def _auth_dependencies(settings: ServeSettings) -> tuple[Callable[..., None], Callable[..., None]]:
    expected = settings.api_key.get_secret_value() if settings.api_key is not None else None

    def require_read(api_key: ApiKey = None) -> None:
        if settings.protect_reads and expected is not None:
            _check_key(api_key, expected)

    def require_write(api_key: ApiKey = None) -> None:
        if expected is not None:
            _check_key(api_key, expected)
        elif not settings.allow_unauthenticated_writes:
            raise HTTPException(
                403,
                "write endpoints are disabled: this server has no API key; start it with "
                f"--api-key or {API_KEY_ENV} (or allow unauthenticated writes explicitly)",
            )

    return require_read, require_write


def create_app(
    gallery: Gallery, gallery_path: Path | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """Build the service for ``gallery``.

    Args:
        gallery: the gallery to serve; the app owns it from now on (use the app's
            endpoints, not the gallery, to change it while serving).
        gallery_path: its folder, saved atomically after each write when
            ``settings.save_on_write`` (``None``: changes stay in memory).
        settings: limits, authentication and persistence (default: :class:`ServeSettings`).

    Returns:
        The FastAPI app, with ``app.state.service`` (a :class:`GalleryService`) and
        ``app.state.metrics`` (a :class:`ServeMetrics`).
    """
    from openrecog import __version__

    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    service = GalleryService(gallery, gallery_path, settings, metrics)
    service.refresh_gauges()
    require_read, require_write = _auth_dependencies(settings)
    read = [Depends(require_read)]
    write = [Depends(require_write)]

    app = FastAPI(
        title="openrecog",
        version=__version__,
        description="Open-set visual recognition: classify and search images against a "
        "gallery of registered examples, and manage the gallery.",
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings

    # Added innermost first: a request passes metrics → CORS → timeout → the routes, so
    # timeouts are counted and carry CORS headers.
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(GalleryError)
    async def _gallery_error(request: Request, exc: GalleryError) -> JSONResponse:
        status = gallery_error_status(exc)
        if status == 500:
            log.error("gallery error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One line, like every other error, and without echoing the input: FastAPI's own
        # handler failed with a 500 on a body that is not UTF-8 (e.g. an image).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ())) or 'request'}: "
            f"{error.get('msg', 'invalid')}"
            for error in exc.errors()
        )
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(RequestTimedOut)
    async def _timed_out(request: Request, exc: RequestTimedOut) -> JSONResponse:
        return JSONResponse(
            {"detail": "request timed out (request_timeout_s); nothing was changed"},
            status_code=503,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The client gets one line; Starlette re-raises so the server logs the traceback.
        return JSONResponse(
            {"detail": f"internal server error ({type(exc).__name__}); see the server log"},
            status_code=500,
        )

    def k_or_default(k: int | None) -> int:
        return k if k is not None else settings.default_k

    # ------------------------------------------------------------------ recognition
    @app.post(
        "/classify",
        response_model=ClassifyOut,
        dependencies=read,
        responses=_errors(400, 401, 409, 413, 415, 422, 503),
        openapi_extra=_body_doc(ImageJSON, "file", many=False),
        tags=["recognition"],
    )
    async def classify(request: Request, k: K = None) -> Any:
        """Classify one image: its class, or ``unknown`` under the threshold."""
        upload = await read_one_image(request, settings)
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.classify, upload, k_or_default(k), deadline)

    @app.post(
        "/search",
        response_model=SearchOut,
        dependencies=read,
        responses=_errors(400, 401, 409, 413, 415, 422, 503),
        openapi_extra=_body_doc(ImageJSON, "file", many=False),
        tags=["recognition"],
    )
    async def search(request: Request, k: K = None) -> Any:
        """The ``k`` registered items most similar to one image."""
        upload = await read_one_image(request, settings)
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.search, upload, k_or_default(k), deadline)

    @app.post(
        "/search/text",
        response_model=SearchOut,
        dependencies=read,
        responses=_errors(401, 404, 409, 422, 503),
        tags=["recognition"],
    )
    async def search_text(query: TextQuery, request: Request, k: K = None) -> Any:
        """The ``k`` registered items that best fit a caption (server started with a text model)."""
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.search_text, query.text, k_or_default(k), deadline)

    @app.post(
        "/classify/batch",
        response_model=BatchClassifyOut,
        dependencies=read,
        responses=_errors(400, 401, 409, 413, 415, 422, 503),
        openapi_extra=_body_doc(ImagesJSON, "files", many=True),
        tags=["recognition"],
    )
    async def classify_batch(request: Request, k: K = None) -> Any:
        """Classify up to ``max_batch`` images in one request."""
        uploads, _ = await read_many_images(request, settings)
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.classify_batch, uploads, k_or_default(k), deadline)

    @app.post(
        "/search/batch",
        response_model=BatchSearchOut,
        dependencies=read,
        responses=_errors(400, 401, 409, 413, 415, 422, 503),
        openapi_extra=_body_doc(ImagesJSON, "files", many=True),
        tags=["recognition"],
    )
    async def search_batch(request: Request, k: K = None) -> Any:
        """Search with up to ``max_batch`` images in one request."""
        uploads, _ = await read_many_images(request, settings)
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.search_batch, uploads, k_or_default(k), deadline)

    # ------------------------------------------------------------------ gallery
    @app.post(
        "/register",
        response_model=RegisterOut,
        dependencies=write,
        responses=_errors(400, 401, 403, 413, 415, 422, 500, 503),
        openapi_extra=_body_doc(RegisterJSON, "files", many=True, label=True),
        tags=["gallery"],
    )
    async def register(request: Request) -> Any:
        """Add images of one class; unreadable files are skipped and reported."""
        uploads, label = await read_many_images(request, settings, with_label=True)
        deadline = request_deadline(request.scope)
        assert label is not None  # read_many_images insists on it
        return await run_in_threadpool(service.register, label, uploads, deadline)

    @app.delete(
        "/items/{item_id}",
        response_model=RemoveOut,
        dependencies=write,
        responses=_errors(401, 403, 404, 500, 503),
        tags=["gallery"],
    )
    async def remove_item(request: Request, item_id: int) -> Any:
        """Remove one item."""
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.remove_item, item_id, deadline)

    @app.delete(
        "/classes/{label:path}",
        response_model=RemoveOut,
        dependencies=write,
        responses=_errors(401, 403, 404, 500, 503),
        tags=["gallery"],
    )
    async def remove_class(request: Request, label: str) -> Any:
        """Remove every item of a class."""
        deadline = request_deadline(request.scope)
        return await run_in_threadpool(service.remove_class, label, deadline)

    @app.get("/classes", response_model=ClassesOut, dependencies=read, tags=["gallery"])
    async def classes() -> Any:
        """Every class with its number of items."""
        return await run_in_threadpool(service.classes)

    @app.get("/items", response_model=ItemsOut, dependencies=read, tags=["gallery"])
    async def items(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        label: Annotated[str | None, Query(description="only this class")] = None,
    ) -> Any:
        """Registered items by increasing id, one page at a time."""
        return await run_in_threadpool(service.items, offset, limit, label)

    @app.get(
        "/items/{item_id}/thumbnail",
        dependencies=read,
        responses={
            200: {"content": {"image/jpeg": {}, "image/svg+xml": {}}},
            **_errors(401, 404),
        },
        response_class=Response,
        tags=["gallery"],
    )
    async def thumbnail(item_id: int) -> Response:
        """A small JPEG of the item, or an SVG placeholder when its image is not available.

        Images registered through this service are kept as thumbnails in memory (until
        restart); items registered from files are shown from their source file if readable.
        """
        data = await run_in_threadpool(service.thumbnail, item_id)
        headers = {"Cache-Control": "private, max-age=300"}
        if data is None:
            headers["X-Thumbnail"] = "placeholder"
            return Response(PLACEHOLDER_SVG, media_type="image/svg+xml", headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    # ------------------------------------------------------------------ operations
    @app.get("/health", response_model=HealthOut, tags=["operations"])
    async def health() -> Any:
        """Liveness and what is served (open to monitoring, even with protect_reads)."""
        return await run_in_threadpool(service.health)

    @app.get(
        "/metrics",
        dependencies=read,
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
        tags=["operations"],
    )
    async def metrics_endpoint() -> Response:
        """Prometheus metrics of this service (text exposition format)."""
        await run_in_threadpool(service.refresh_gauges)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ web page
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
