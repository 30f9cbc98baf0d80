"""Settings of the recognition service: network, authentication, limits, persistence."""

from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

API_KEY_ENV = "OPENRECOG_API_KEY"
MAX_K = 100
MB = 1024 * 1024


def _api_key_from_env() -> SecretStr | None:
    value = os.environ.get(API_KEY_ENV, "").strip()
    return SecretStr(value) if value else None


def is_loopback_host(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine.

    Host names other than ``localhost`` count as non-loopback: they may resolve to any
    address, and ``0.0.0.0`` / ``::`` mean every interface.
    """
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    """How ``openrecog serve`` behaves.

    Attributes:
        host: interface to bind (the CLI refuses a non-loopback one without an API key).
        port: TCP port.
        api_key: the key clients send in the ``X-API-Key`` header; defaults to the
            ``OPENRECOG_API_KEY`` environment variable. Without a key the write endpoints
            answer 403, unless ``allow_unauthenticated_writes`` is set.
        allow_unauthenticated_writes: let anyone register and remove when there is no key
            (for a loopback-only, single-user service).
        protect_reads: require the key on the read endpoints too (classify, search, lists,
            thumbnails, metrics); ``/health``, the page and the docs stay open.
        max_upload_bytes: the largest image accepted, in bytes (encoded file size). A
            request body is refused before it is read when its declared length, or the
            bytes actually received, exceed what that many images (as base64) can take.
        max_request_bytes: a cap on any request body, batches included.
        max_batch: the most images in one batch or registration request.
        request_timeout_s: a request still running after this answers 503; a write that
            times out changes nothing (``None``: no limit).
        cors_origins: origins allowed to call the API from a browser (empty: CORS off).
        save_on_write: save the gallery folder atomically after each write (a gallery in
            PostgreSQL is never rewritten: the database is its storage).
        default_k: hits returned when a request gives no ``k``.
        threshold: classify with this threshold instead of the gallery's.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(default_factory=_api_key_from_env)
    allow_unauthenticated_writes: bool = False
    protect_reads: bool = False
    max_upload_bytes: int = Field(10 * MB, ge=1)
    max_request_bytes: int = Field(64 * MB, ge=1)
    max_batch: int = Field(32, ge=1, le=1024)
    request_timeout_s: float | None = Field(30.0, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    save_on_write: bool = True
    default_k: int = Field(5, ge=1, le=MAX_K)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        # An empty key would make every request with an empty header authorised.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _reads_need_a_key(self) -> ServeSettings:
        if self.protect_reads and self.api_key is None:
            raise ValueError(
                f"protect_reads needs an API key (--api-key or {API_KEY_ENV}); none was given"
            )
        return self

    @property
    def writes_enabled(self) -> bool:
        """Whether the write endpoints can be used at all."""
        return self.api_key is not None or self.allow_unauthenticated_writes

    def single_body_limit(self) -> int:
        """Largest body of a one-image request: one image as base64 plus form/JSON overhead."""
        return min(self.max_request_bytes, _base64_envelope(self.max_upload_bytes))

    def batch_body_limit(self) -> int:
        """Largest body of a batch or registration request."""
        return min(self.max_request_bytes, self.max_batch * _base64_envelope(self.max_upload_bytes))


def _base64_envelope(image_bytes: int) -> int:
    # base64 grows data by 4/3; 16 KiB covers multipart headers, JSON keys and file names.
    return (image_bytes + 2) // 3 * 4 + 16 * 1024
