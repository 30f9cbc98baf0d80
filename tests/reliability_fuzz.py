"""Feed inputs to the library or the HTTP API and classify every outcome.

An outcome is accepted (decoded, 200), refused (``ImageLoadError`` with a message, or a 4xx
with a ``detail``), a crash (anything else, a 5xx included) or a hang (over the time limit).
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Hang(Exception):
    """A call ran past its time limit."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs longer than ``seconds``."""

    def _expired(signum: int, frame: object) -> None:
        raise Hang(f"{what}: still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class FuzzReport:
    """Outcome of feeding inputs to the library or the HTTP API."""

    inputs: int = 0
    accepted: int = 0
    refused: int = 0  # a clear error: ImageLoadError with a message, or HTTP 4xx with detail
    crashes: list[str] = field(default_factory=list)  # anything else
    hangs: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    registered: int = 0

    def merge(self, other: FuzzReport) -> FuzzReport:
        """Both reports added up."""
        return FuzzReport(
            self.inputs + other.inputs,
            self.accepted + other.accepted,
            self.refused + other.refused,
            self.crashes + other.crashes,
            self.hangs + other.hangs,
            max(self.slowest_s, other.slowest_s),
            self.registered + other.registered,
        )


def fuzz_library(
    gallery, inputs: list[tuple[str, bytes]], per_call_s: float = 10.0, register_every: int = 4
) -> FuzzReport:
    """Feed each input to ``load_image`` and ``gallery.classify`` (and every
    ``register_every``-th to ``gallery.register``): each must succeed, or raise
    ``ImageLoadError`` with a message, consistently across the three.
    """
    from openrecog.data.images import ImageLoadError, load_image

    report = FuzzReport()
    for n, (name, data) in enumerate(inputs):
        report.inputs += 1
        began = time.monotonic()
        try:
            with time_limit(per_call_s, name):
                try:
                    load_image(data)
                    readable = True
                except ImageLoadError as exc:
                    readable = False
                    if not str(exc).startswith("<image>: ") or len(str(exc)) < 12:
                        report.crashes.append(f"{name}: unclear message {exc!r}")
                try:
                    gallery.classify(data)
                    classified = True
                except ImageLoadError:
                    classified = False
                if classified != readable:
                    report.crashes.append(f"{name}: load_image and classify disagree")
                if n % register_every == 0:
                    before, added = len(gallery), 0
                    try:
                        gallery.register(data, "fuzz")
                        added = 1
                    except ImageLoadError:
                        if readable:
                            report.crashes.append(f"{name}: readable but not registered")
                    report.registered += added
                    if len(gallery) != before + added:
                        report.crashes.append(f"{name}: gallery size changed wrongly")
            report.accepted += readable
            report.refused += not readable
        except Hang as exc:
            report.hangs.append(str(exc))
        except Exception as exc:  # every other exception is what the fuzzer looks for
            report.crashes.append(f"{name}: {type(exc).__name__}: {exc}")
        report.slowest_s = max(report.slowest_s, time.monotonic() - began)
    return report


def _clear_response(response, name: str) -> str | None:
    """None if ``response`` is a success or a clear client error, else what is wrong."""
    try:
        body = response.json()
    except ValueError:
        return f"{name}: HTTP {response.status_code} without a JSON body"
    if response.status_code == 200:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if 400 <= response.status_code < 500 and isinstance(detail, str) and detail:
        return None
    return f"{name}: HTTP {response.status_code} {str(body)[:200]}"


def fuzz_http(
    client, inputs: list[tuple[str, bytes]], headers: dict[str, str], per_call_s: float = 10.0
) -> FuzzReport:
    """Post each input to ``/classify``, ``/register`` or ``/search/batch`` in turn.

    ``client`` is a FastAPI ``TestClient`` or an ``httpx.Client`` on a running server;
    ``headers`` carry the API key. Every answer must be 200, or a 4xx with a ``detail``
    message; registrations must add exactly what they report.
    """
    report = FuzzReport()
    use_alarm = isinstance(client, _test_client_type())
    for n, (name, data) in enumerate(inputs):
        report.inputs += 1
        began = time.monotonic()
        file_name = f"fuzz_{n}.{name.split('/')[0]}"
        try:
            with time_limit(per_call_s, name) if use_alarm else _no_limit():
                route = n % 3
                if route == 0:
                    files = {"file": (file_name, data, "application/octet-stream")}
                    response = client.post("/classify", files=files, headers=headers)
                elif route == 1:
                    files = [("files", (file_name, data, "application/octet-stream"))]
                    response = client.post(
                        "/register", data={"label": "fuzz"}, files=files, headers=headers
                    )
                else:
                    body = {"images": [base64.b64encode(data).decode()], "names": [file_name]}
                    response = client.post("/search/batch", json=body, headers=headers)
            problem = _clear_response(response, name)
            if problem:
                report.crashes.append(problem)
            elif response.status_code == 200:
                out = response.json()
                if route == 1:
                    report.registered += len(out["added"])
                ok = route != 2 or out["results"][0]["error"] is None
                report.accepted += ok
                report.refused += not ok
            else:
                report.refused += 1
        except Hang as exc:
            report.hangs.append(str(exc))
        except Exception as exc:  # a transport error or timeout: the server did not answer
            kind = "hang" if "timeout" in type(exc).__name__.lower() else "crash"
            (report.hangs if kind == "hang" else report.crashes).append(
                f"{name}: {type(exc).__name__}: {exc}"
            )
        report.slowest_s = max(report.slowest_s, time.monotonic() - began)
    return report


# An image route, a batch, a write and one whose body FastAPI parses itself (a pydantic model).
BODY_ROUTES = ("/classify", "/classify/batch", "/register", "/search/text")


def fuzz_bodies(
    client, bodies: list[tuple[str, bytes]], headers: dict[str, str], per_call_s: float = 10.0
) -> FuzzReport:
    """Post each body to ``/classify``, ``/classify/batch``, ``/register`` and
    ``/search/text``: every answer must be a 200 or a 4xx with a ``detail`` message (see
    :func:`fuzz_http`).
    """
    report = FuzzReport()
    use_alarm = isinstance(client, _test_client_type())
    for content_type, body in bodies:
        for route in BODY_ROUTES:
            if route in ("/classify/batch", "/register"):
                body = body.replace(b'name="file"', b'name="files"')
            name = f"{route} {content_type} {body[:30]!r}"
            report.inputs += 1
            began = time.monotonic()
            try:
                with time_limit(per_call_s, name) if use_alarm else _no_limit():
                    response = client.post(
                        route, content=body, headers={"content-type": content_type, **headers}
                    )
                problem = _clear_response(response, name)
                if problem:
                    report.crashes.append(problem)
                report.accepted += response.status_code == 200
                report.refused += response.status_code != 200
            except Hang as exc:
                report.hangs.append(str(exc))
            except Exception as exc:  # a transport error: the server did not answer
                report.crashes.append(f"{name}: {type(exc).__name__}: {exc}")
            report.slowest_s = max(report.slowest_s, time.monotonic() - began)
    return report


@contextmanager
def _no_limit() -> Iterator[None]:
    yield


def _test_client_type() -> type:
    from fastapi.testclient import TestClient

    return TestClient
