"""Reading images out of requests: multipart uploads or base64 JSON, with size limits.

Sizes are checked before anything is decoded: the declared ``Content-Length`` first, then
the bytes actually received (a client can lie about, or leave out, the length), then each
image's own size. Only then are base64 strings decoded, and image decoding happens later,
in the threadpool.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message

from openrecog.serve.settings import ServeSettings

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Upload:
    """One received image file, still encoded."""

    name: str
    data: bytes


class ImageJSON(BaseModel):
    """One image as base64 (a ``data:`` URL prefix is accepted)."""

    image: str = Field(description="the image file, base64-encoded")
    name: str | None = Field(None, description="a name to report the image by")


class ImagesJSON(BaseModel):
    """Several images as base64."""

    images: list[str] = Field(description="image files, base64-encoded")
    names: list[str] | None = Field(None, description="names to report the images by")


class RegisterJSON(ImagesJSON):
    """Images of one class to register."""

    label: str = Field(description="the class of every image")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _too_large(what: str, limit: int, setting: str) -> HTTPException:
    return HTTPException(413, f"{what} is larger than the limit of {_mb(limit)} ({setting})")


def limited_request(request: Request, limit: int, setting: str) -> Request:
    """A view of ``request`` whose body raises 413 as soon as it passes ``limit`` bytes.

    ``setting`` names the setting(s) the limit comes from, for the error message.

    Raises:
        HTTPException: 413 when the declared ``Content-Length`` is already too large, 400
            when it is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPException(400, f"invalid Content-Length header {declared!r}") from None
        if length > limit:
            raise _too_large("the request body", limit, setting)
    received = 0
    upstream = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large("the request body", limit, setting)
        return message

    return Request(request.scope, counting_receive)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _unsupported(example: str) -> HTTPException:
    return HTTPException(
        415, f"send multipart/form-data or application/json ({example}); other bodies are refused"
    )


async def _read_json(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"invalid JSON body: {exc}") from None
    except RecursionError:  # "[[[[..." a few thousand deep: the parser's stack runs out
        raise HTTPException(400, "invalid JSON body: nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise HTTPException(422, f"invalid request: {problems}") from None


def decode_base64_image(text: str, name: str, max_bytes: int, allow_empty: bool = False) -> bytes:
    """Decode one base64 image, refusing it if it would exceed ``max_bytes`` once decoded.

    ``allow_empty`` passes an empty image on (a batch reports it as that image's error).

    Raises:
        HTTPException: 413 too large (checked before decoding), 400 not base64 or empty.
    """
    # The body limit already bounds the text, so stripping whitespace here is cheap.
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if len(text) // 4 * 3 - text[-2:].count("=") > max_bytes:
        raise _too_large(name, max_bytes, "max_upload_bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"{name}: invalid base64 ({exc})") from None
    if not data and not allow_empty:
        raise HTTPException(400, f"{name}: empty image")
    return data


def _decode_all(names: list[str], texts: list[str], max_bytes: int) -> list[Upload]:
    return [
        Upload(name, decode_base64_image(text, name, max_bytes, allow_empty=True))
        for name, text in zip(names, texts, strict=True)
    ]


async def _read_upload(value: Any, field: str, max_bytes: int, allow_empty: bool = False) -> Upload:
    if not isinstance(value, UploadFile):
        raise HTTPException(422, f"multipart field {field!r} must be a file, not text")
    name = value.filename or field
    if value.size is not None and value.size > max_bytes:
        raise _too_large(name, max_bytes, "max_upload_bytes")
    data = await value.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(name, max_bytes, "max_upload_bytes")
    if not data and not allow_empty:
        raise HTTPException(400, f"{name}: empty file")
    return Upload(name, data)


async def _read_form(request: Request, max_files: int) -> Any:
    try:
        return await request.form(max_files=max_files, max_fields=8)
    except HTTPException as exc:
        # Starlette reports too many parts as 400; it is a size limit like the others.
        if exc.status_code == 400 and "Too many files" in str(exc.detail):
            raise HTTPException(
                413, f"too many files: at most {max_files} per request (max_batch)"
            ) from None
        raise


async def read_one_image(request: Request, settings: ServeSettings) -> Upload:
    """The image of a one-image request: multipart field ``file`` or JSON ``{"image"}``.

    Raises:
        HTTPException: 413 too large, 400 malformed, 415 unsupported body, 422 missing field.
    """
    kind = _media_type(request)
    request = limited_request(request, settings.single_body_limit(), "max_upload_bytes")
    if kind == "multipart/form-data":
        form = await _read_form(request, max_files=1)
        try:
            if "file" not in form:
                raise HTTPException(422, "multipart field 'file' is missing")
            return await _read_upload(form["file"], "file", settings.max_upload_bytes)
        finally:
            await form.close()
    if kind == "application/json" or kind.endswith("+json"):
        body = await _read_json(request, ImageJSON)
        name = body.name or "image"
        # Megabytes of base64 take milliseconds to decode: not on the event loop.
        data = await run_in_threadpool(
            decode_base64_image, body.image, name, settings.max_upload_bytes
        )
        return Upload(name, data)
    raise _unsupported('{"image": "<base64>"}')


async def read_many_images(
    request: Request, settings: ServeSettings, with_label: bool = False
) -> tuple[list[Upload], str | None]:
    """The images of a batch request, and the ``label`` of a registration.

    Multipart: files in field ``files`` (and text field ``label``); JSON: ``{"images":
    [base64...], "names": [...], "label": ...}``.

    Raises:
        HTTPException: 413 too large or too many, 400 malformed, 415 unsupported body,
            422 missing field or no image.
    """
    kind = _media_type(request)
    request = limited_request(
        request, settings.batch_body_limit(), "max_upload_bytes, max_batch, max_request_bytes"
    )
    label: str | None = None
    uploads: list[Upload] = []
    if kind == "multipart/form-data":
        form = await _read_form(request, max_files=settings.max_batch)
        try:
            values = form.getlist("files")
            if not values:
                raise HTTPException(422, "multipart field 'files' is missing (one or more files)")
            for value in values:
                # An empty file in a batch is that file's error, like any unreadable one.
                upload = await _read_upload(value, "files", settings.max_upload_bytes, True)
                uploads.append(upload)
            if with_label:
                raw = form.get("label")
                if raw is not None and not isinstance(raw, str):
                    raise HTTPException(422, "multipart field 'label' must be text")
                label = raw
        finally:
            await form.close()
    elif kind == "application/json" or kind.endswith("+json"):
        body = await _read_json(request, RegisterJSON if with_label else ImagesJSON)
        if len(body.images) > settings.max_batch:
            raise HTTPException(
                413,
                f"too many images: {len(body.images)} > {settings.max_batch} per request "
                "(max_batch)",
            )
        if body.names is not None and len(body.names) != len(body.images):
            raise HTTPException(422, f"{len(body.images)} images but {len(body.names)} names")
        names = body.names or [f"image {i}" for i in range(len(body.images))]
        uploads = await run_in_threadpool(
            _decode_all, names, body.images, settings.max_upload_bytes
        )
        label = getattr(body, "label", None)
    else:
        raise _unsupported('{"images": ["<base64>", ...]}')
    if not uploads:
        raise HTTPException(422, "no image in the request")
    if with_label and label is None:
        raise HTTPException(422, "the class 'label' is missing")
    return uploads, label
