"""ASGI middleware of the service: per-request time limits and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEADLINE_SCOPE_KEY = "openrecog.deadline"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RequestTimedOut(Exception):
    """A request's time limit passed before its work could change anything."""


class Deadline:
    """A request's time limit, shared by :class:`TimeoutMiddleware` and the worker thread.

    A write calls :meth:`commit` just before it changes the gallery. After that the
    middleware no longer answers 503 but waits for the write, so that a client told "timed
    out" knows nothing was changed, and a client told "done" knows it was.

    Args:
        seconds: the time limit (``None``: never expires).
    """

    def __init__(self, seconds: float | None) -> None:
        self.expires_at = None if seconds is None else time.monotonic() + seconds
        self._lock = threading.Lock()
        self._state = "open"  # open → committed | expired

    def _passed(self) -> bool:
        return self.expires_at is not None and time.monotonic() > self.expires_at

    def check(self) -> None:
        """Stop early between stages of work nobody waits for any more.

        Raises:
            RequestTimedOut: the time limit has passed.
        """
        with self._lock:
            if self._state == "expired" or (self._state == "open" and self._passed()):
                self._state = "expired"
                raise RequestTimedOut

    def commit(self) -> None:
        """Claim the right to finish: after this the request is no longer timed out.

        Raises:
            RequestTimedOut: the time limit has passed; the caller must change nothing.
        """
        with self._lock:
            if self._state == "expired" or (self._state == "open" and self._passed()):
                self._state = "expired"
                raise RequestTimedOut
            self._state = "committed"

    def expire(self) -> bool:
        """Mark the request timed out; False if a write has already committed."""
        with self._lock:
            if self._state == "committed":
                return False
            self._state = "expired"
            return True


def request_deadline(scope: Scope) -> Deadline:
    """The :class:`Deadline` of a request (one that never expires without the middleware)."""
    deadline = scope.get(DEADLINE_SCOPE_KEY)
    return deadline if isinstance(deadline, Deadline) else Deadline(None)


def _json_message(status: int, detail: str) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class TimeoutMiddleware:
    """Answer 503 to an HTTP request that runs longer than ``timeout_s``.

    The limit covers reading the body too, so a slow upload cannot hold a worker forever.
    Work already running in the threadpool cannot be interrupted: it goes on in the
    background, stops at its next :meth:`Deadline.check`, and a write refuses to commit.
    """

    def __init__(self, app: ASGIApp, timeout_s: float | None) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request under its deadline."""
        if scope["type"] != "http" or self.timeout_s is None:
            await self.app(scope, receive, send)
            return
        deadline = Deadline(self.timeout_s)
        scope[DEADLINE_SCOPE_KEY] = deadline
        started = abandoned = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if abandoned:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()  # the server gave up on the request (client gone, shutdown)
            raise
        if task in done:
            task.result()  # re-raise what the app raised
            return
        if not deadline.expire() or started:
            # A write has committed (its answer must tell the truth), or the response is
            # already streaming: let it finish.
            await task
            return
        abandoned = True
        task.cancel()
        # The threadpool work cannot be cancelled; only collect its outcome when it ends.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        start, body = _json_message(
            503,
            f"request timed out after {self.timeout_s:g} s (request_timeout_s); "
            "nothing was changed; try again later",
        )
        await send(start)
        await send(body)


class ServeMetrics:
    """Prometheus metrics of one app, in their own registry (never the global one).

    A registry per app keeps several apps in one process (tests, embedding) from
    colliding over metric names and from mixing each other's counts.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "openrecog_http_requests",
            "HTTP requests by method, endpoint (route template) and status code.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openrecog_http_request_duration_seconds",
            "HTTP request latency by method and endpoint.",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "openrecog_http_errors",
            "Failed HTTP requests by endpoint and kind (client_error, server_error, timeout).",
            ["endpoint", "kind"],
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "openrecog_http_requests_in_progress",
            "HTTP requests being served.",
            registry=self.registry,
        )
        self.images = Counter(
            "openrecog_images",
            "Images received by operation and outcome (ok, rejected).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "openrecog_inference_seconds",
            "Time to embed the images of one request.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gallery_items = Gauge(
            "openrecog_gallery_items", "Items in the gallery.", registry=self.registry
        )
        self.gallery_classes = Gauge(
            "openrecog_gallery_classes", "Classes in the gallery.", registry=self.registry
        )

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(method, endpoint).observe(seconds)
        if status == 503:
            self.errors.labels(endpoint, "timeout").inc()
        elif status >= 500:
            self.errors.labels(endpoint, "server_error").inc()
        elif status >= 400:
            self.errors.labels(endpoint, "client_error").inc()


def _endpoint_label(scope: Scope) -> str:
    # The route template, not the raw path: ids and labels in paths would make a new time
    # series per request.
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class MetricsMiddleware:
    """Count and time every HTTP request into :class:`ServeMetrics`."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request and record its status and latency."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        began = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.observe(
                scope["method"], _endpoint_label(scope), status, time.perf_counter() - began
            )
