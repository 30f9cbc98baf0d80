"""The HTTP service (openrecog.serve) through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from openrecog.gallery import Gallery
from openrecog.models import create_model
from openrecog.models import encoder as encoder_module
from openrecog.serve import ServeSettings, create_app, is_loopback_host
from tests.conftest import draw_pattern

KEY = "s3cret-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def model():
    return create_model("lite0_gap_imagenet", image_size=64)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENRECOG_API_KEY", raising=False)


def png(kind: int, variant: int) -> bytes:
    buffer = io.BytesIO()
    draw_pattern(kind, variant, size=64).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def settings(**overrides) -> ServeSettings:
    return ServeSettings(**{"api_key": KEY, **overrides})


def make_client(gallery, path=None, **overrides) -> TestClient:
    return TestClient(create_app(gallery, path, settings(**overrides)))


def register(client, label, images, **kwargs):
    files = [("files", (f"{label}_{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/register", data={"label": label}, files=files, headers=AUTH, **kwargs)


@pytest.fixture
def filled(model, tmp_path):
    """A client over a saved gallery of 4 classes × 3 images registered through the API."""
    path = tmp_path / "g"
    client = make_client(Gallery(model, threshold=0.5), path)
    for kind in range(4):
        r = register(client, f"class_{kind}", [png(kind, v) for v in range(3)])
        assert r.status_code == 200, r.text
    return client, path


def test_page_docs_and_health(model) -> None:
    client = make_client(Gallery(model))
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for element in [
        "query-file",
        "result",
        "result-label",
        "matches",
        "register-label",
        "register-files",
        "register-submit",
        "classes",
        "api-key",
        'data-state="idle"',
    ]:
        assert element in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert 'setState(result, "done")' in script.text
    assert client.get("/static/style.css").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/search", "/classify/batch", "/register", "/metrics"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert client.get("/docs").status_code == 200
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 0 and health["engine"]
    assert health["writes"] == "api-key" and health["model"]["embedding_dim"] == 1280


def test_classify_and_search(filled) -> None:
    client, _ = filled
    # multipart
    r = client.post("/classify", files={"file": ("q.png", png(2, 9), "image/png")}, params={"k": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["label"] == "class_2" and out["known"] is True and out["threshold"] == 0.5
    assert len(out["top"]) == 3 and out["top"][0]["label"] == "class_2"
    assert set(out["top"][0]) == {"item_id", "label", "score"}
    # base64 JSON, with a data: URL prefix as a browser's FileReader makes it
    r = client.post("/classify", json={"image": "data:image/png;base64," + b64(png(1, 8))})
    assert r.status_code == 200 and r.json()["label"] == "class_1"
    assert len(r.json()["top"]) == 5  # default k
    r = client.post("/search", json={"image": b64(png(3, 7))}, params={"k": 2})
    hits = r.json()["hits"]
    assert r.status_code == 200 and len(hits) == 2 and hits[0]["label"] == "class_3"
    assert hits[0]["score"] >= hits[1]["score"]
    r = client.post("/search", files={"file": ("q.png", png(0, 7), "image/png")})
    assert r.json()["hits"][0]["label"] == "class_0"


def test_batches(filled) -> None:
    client, _ = filled
    files = [
        ("files", ("a.png", png(0, 5), "image/png")),
        ("files", ("broken.png", b"\x89PNG broken", "image/png")),
        ("files", ("c.png", png(3, 5), "image/png")),
    ]
    r = client.post("/classify/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["a.png", "broken.png", "c.png"]
    assert results[0]["result"]["label"] == "class_0" and results[2]["result"]["label"] == "class_3"
    assert results[1]["result"] is None and "image" in results[1]["error"]
    r = client.post(
        "/search/batch", json={"images": [b64(png(1, 5)), b64(png(2, 5))], "names": ["x", "y"]}
    )
    assert r.status_code == 200
    assert [x["hits"][0]["label"] for x in r.json()["results"]] == ["class_1", "class_2"]
    r = client.post("/classify/batch", json={"images": [b64(png(1, 5))]}, params={"k": 1})
    assert len(r.json()["results"][0]["result"]["top"]) == 1


def test_register_remove_and_persistence(model, tmp_path) -> None:
    path = tmp_path / "g"
    client = make_client(Gallery(model), path)
    r = client.post(
        "/register",
        json={"label": "cat", "images": [b64(png(0, 0)), b64(b"nope"), b64(png(0, 1))]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == [0, 1] and out["items"] == 2 and out["saved"] is True
    assert out["skipped"] == [{"file": "image 1", "reason": "not a recognised image format"}]
    assert len(Gallery.load(path)) == 2  # saved on write
    assert register(client, "dog", [png(1, 0)]).json()["added"] == [2]
    assert client.get("/classes").json() == {
        "classes": [{"label": "cat", "count": 2}, {"label": "dog", "count": 1}],
        "items": 3,
    }
    page = client.get("/items", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and page["items"] == [
        {"item_id": 1, "label": "cat", "source": "upload:image 2"}
    ]
    assert client.get("/items", params={"label": "dog"}).json()["total"] == 1
    # removals, saved too
    r = client.delete("/items/0", headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == 1 and r.json()["items"] == 2
    assert client.delete("/items/0", headers=AUTH).status_code == 404
    assert client.delete("/items/999", headers=AUTH).json()["detail"] == "no item with id 999"
    r = client.delete("/classes/dog", headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert client.delete("/classes/dog", headers=AUTH).status_code == 404
    reloaded = Gallery.load(path)
    assert reloaded.items() == [{"item_id": 1, "label": "cat", "source": "upload:image 2"}]
    # bad labels and images
    assert register(client, "unknown", [png(2, 0)]).status_code == 422
    r = register(client, "x", [b"GIF89a not really"])
    assert r.status_code == 400 and "nothing registered" in r.json()["detail"]
    assert client.post("/register", files=[("files", ("a.png", png(0, 0)))], headers=AUTH).json()[
        "detail"
    ] == ("the class 'label' is missing")


def test_labels_with_slashes_and_spaces(model) -> None:
    client = make_client(Gallery(model))
    assert register(client, "brand/logo v2", [png(0, 0)]).status_code == 200
    assert client.delete("/classes/brand%2Flogo%20v2", headers=AUTH).json()["removed"] == 1


def test_thumbnails(model, tmp_path) -> None:
    gallery = Gallery(model)
    source = tmp_path / "cat.png"
    draw_pattern(0, 0).save(source)
    from_file = gallery.register(source, "cat")
    gone = gallery.register(draw_pattern(1, 0), "dog", source=str(tmp_path / "missing.png"))
    client = make_client(gallery)
    uploaded = register(client, "owl", [png(2, 0)]).json()["added"][0]
    for item_id in (from_file, uploaded):
        r = client.get(f"/items/{item_id}/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(r.content)).size) <= 128
    r = client.get(f"/items/{gone}/thumbnail")
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.headers["x-thumbnail"] == "placeholder"
    assert client.get("/items/12345/thumbnail").status_code == 404
    assert gallery.item(from_file) == {"item_id": from_file, "label": "cat", "source": str(source)}
    gallery.remove(from_file)
    assert gallery.item(from_file) is None
    assert client.get(f"/items/{from_file}/thumbnail").status_code == 404


def test_authentication(model, monkeypatch) -> None:
    gallery = Gallery(model)
    client = make_client(gallery)
    assert register(client, "a", [png(0, 0)]).status_code == 200
    files = [("files", ("a.png", png(0, 1), "image/png"))]
    r = client.post("/register", data={"label": "a"}, files=files)
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    r = client.post("/register", data={"label": "a"}, files=files, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong API key"
    assert client.delete("/items/0").status_code == 401
    assert client.delete("/classes/a", headers={"X-API-Key": "no"}).status_code == 401
    assert client.get("/classes").status_code == 200  # reads open by default
    assert len(gallery) == 1
    # no key at all: writes disabled with a clear message, unless explicitly allowed
    open_client = TestClient(create_app(gallery, None, ServeSettings()))
    r = open_client.delete("/items/0")
    assert r.status_code == 403 and "no API key" in r.json()["detail"]
    allowed = ServeSettings(allow_unauthenticated_writes=True)
    assert TestClient(create_app(gallery, None, allowed)).get("/health").json()["writes"] == "open"
    # protected reads
    guarded = make_client(gallery, protect_reads=True)
    query = {"file": ("q.png", png(0, 2), "image/png")}
    assert guarded.post("/classify", files=query).status_code == 401
    assert guarded.get("/classes").status_code == 401
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/items/0/thumbnail").status_code == 401
    assert guarded.post("/classify", files=query, headers=AUTH).status_code == 200
    assert guarded.get("/health").status_code == 200 and guarded.get("/").status_code == 200
    with pytest.raises(ValidationError, match="protect_reads needs an API key"):
        ServeSettings(protect_reads=True)
    monkeypatch.setenv("OPENRECOG_API_KEY", "from-env")
    assert ServeSettings().api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(ServeSettings())
    assert ServeSettings(api_key="  ").api_key is None


def test_size_limits_refuse_before_decoding(model, monkeypatch) -> None:
    decoded = []
    real_load = encoder_module.load_image

    def counting_load(data, **kwargs):
        if isinstance(data, bytes):  # an upload's bytes, not an image decoded already
            decoded.append(1)
        return real_load(data, **kwargs)

    monkeypatch.setattr(encoder_module, "load_image", counting_load)
    gallery = Gallery(model)
    gallery.register(draw_pattern(0, 0), "a")
    client = make_client(gallery, max_upload_bytes=20_000, max_batch=2)
    limit = settings(max_upload_bytes=20_000).single_body_limit()
    junk = b"\0" * (limit + 10)
    # declared length over the limit
    r = client.post("/classify", content=junk, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_upload_bytes" in r.json()["detail"]
    # no declared length (chunked): the bytes are counted
    r = client.post(
        "/classify",
        content=iter([junk[:1000], junk[1000:]]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    # a declared length that lies
    r = client.post(
        "/search", content=junk, headers={"content-type": "application/json", "content-length": "5"}
    )
    assert r.status_code == 413
    # one file over max_upload_bytes inside a body under the body limit
    r = client.post("/classify", files={"file": ("big.png", b"\0" * 25_000, "image/png")})
    assert r.status_code == 413 and "big.png" in r.json()["detail"]
    r = client.post("/classify", json={"image": b64(b"\0" * 20_001)})
    assert r.status_code == 413
    # too many images
    three = [("files", (f"{i}.png", png(0, i), "image/png")) for i in range(3)]
    r = client.post("/classify/batch", files=three)
    assert r.status_code == 413 and "max_batch" in r.json()["detail"]
    r = client.post("/search/batch", json={"images": [b64(png(0, 1))] * 3})
    assert r.status_code == 413 and "max_batch" in r.json()["detail"]
    assert register(client, "a", [png(0, i) for i in range(3)]).status_code == 413
    assert decoded == []
    assert client.post("/classify", json={"image": b64(png(0, 1))}).status_code == 200
    assert decoded == [1]


def test_bad_requests_are_clear(model) -> None:
    client = make_client(Gallery(model))
    query = {"file": ("q.png", png(0, 0), "image/png")}
    r = client.post("/classify", files=query)
    assert r.status_code == 409 and "empty" in r.json()["detail"]
    assert client.post("/search/batch", json={"images": [b64(png(0, 0))]}).status_code == 409
    register(client, "a", [png(0, 0)])
    r = client.post(
        "/classify", files={"file": ("cat.jpg", b"definitely not a jpeg", "image/jpeg")}
    )
    assert r.status_code == 400
    assert r.json()["detail"] == "cat.jpg: not a recognised image format"
    r = client.post("/classify", files={"file": ("cut.png", png(0, 0)[:200], "image/png")})
    assert r.status_code == 400 and r.json()["detail"].startswith("cut.png: ")
    r = client.post("/classify", json={"image": "not base64!!"})
    assert r.status_code == 400 and "invalid base64" in r.json()["detail"]
    assert client.post("/classify", json={"image": ""}).status_code == 400
    r = client.post("/classify", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in r.json()["detail"]
    r = client.post("/classify", json={"picture": "x"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/classify", files={"other": ("q.png", png(0, 0), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post("/classify", content=png(0, 0), headers={"content-type": "image/png"})
    assert r.status_code == 415
    assert client.post("/classify", files=query, params={"k": 0}).status_code == 422
    assert client.get("/items", params={"limit": 0}).status_code == 422


def test_threshold_override(model) -> None:
    gallery = Gallery(model, threshold=0.0)
    client = make_client(gallery, threshold=0.9999)
    register(client, "circle", [png(0, 0)])
    out = client.post("/classify", json={"image": b64(png(5, 1))}).json()
    assert out["label"] == "unknown" and out["known"] is False and out["threshold"] == 0.9999
    assert out["top"][0]["label"] == "circle"
    assert gallery.threshold == 0.0  # the override is not written into the gallery


def test_metrics(filled) -> None:
    client, _ = filled
    client.post("/classify", json={"image": b64(png(0, 4))})
    client.post("/classify", json={"image": "@@"})
    client.get("/items/1234/thumbnail")
    text = client.get("/metrics").text
    assert (
        'openrecog_http_requests_total{endpoint="/classify",method="POST",status="200"} 1.0' in text
    )
    assert 'openrecog_http_requests_total{endpoint="/classify",method="POST",status="400"}' in text
    assert 'endpoint="/items/{item_id}/thumbnail"' in text  # route templates, not raw paths
    assert 'openrecog_http_request_duration_seconds_bucket{endpoint="/classify"' in text
    assert 'openrecog_http_errors_total{endpoint="/classify",kind="client_error"} 1.0' in text
    assert "openrecog_gallery_items 12.0" in text and "openrecog_gallery_classes 4.0" in text
    assert 'openrecog_images_total{operation="register",outcome="ok"} 12.0' in text
    assert "openrecog_inference_seconds_count" in text
    # each app has its own registry
    other = make_client(Gallery(client.app.state.service.gallery.model))
    assert "openrecog_gallery_items 0.0" in other.get("/metrics").text


def test_concurrent_register_and_classify(model, tmp_path) -> None:
    path = tmp_path / "g"
    client = make_client(Gallery(model), path)
    assert register(client, "seed", [png(7, 0)]).status_code == 200
    errors: list[str] = []
    added: list[int] = []

    def writer(kind: int) -> None:
        for round_ in range(3):
            r = register(client, f"class_{kind}", [png(kind, round_), png(kind, round_ + 10)])
            if r.status_code != 200:
                errors.append(r.text)
            else:
                added.extend(r.json()["added"])

    def reader(kind: int) -> None:
        for round_ in range(4):
            r = client.post("/classify", json={"image": b64(png(kind, 20 + round_))})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(added) == len(set(added)) == 18
    health = client.get("/health").json()
    assert health["items"] == 19 and health["classes"] == 4
    classes = client.get("/classes").json()["classes"]
    assert {c["label"]: c["count"] for c in classes} == {
        "seed": 1,
        "class_0": 6,
        "class_1": 6,
        "class_2": 6,
    }
    assert len(Gallery.load(path)) == 19


def test_timeout_answers_503_and_changes_nothing(model, tmp_path) -> None:
    gallery = Gallery(model)
    gallery.register(draw_pattern(0, 0), "a")
    client = make_client(gallery, tmp_path / "g", request_timeout_s=0.3)
    real_encode = gallery.encoder.encode
    finished = threading.Event()

    def slow_encode(images, progress=False):
        time.sleep(0.6)
        try:
            return real_encode(images)
        finally:
            finished.set()

    gallery.encoder.encode = slow_encode
    r = client.post("/classify", json={"image": b64(png(0, 1))})
    assert r.status_code == 503 and "timed out" in r.json()["detail"]
    finished.wait(5)
    finished.clear()
    r = register(client, "b", [png(1, 0)])
    assert r.status_code == 503 and "nothing was changed" in r.json()["detail"]
    finished.wait(5)
    time.sleep(0.1)  # let the abandoned request reach its commit check
    assert len(gallery) == 1 and not (tmp_path / "g").exists()
    gallery.encoder.encode = real_encode
    assert register(client, "b", [png(1, 0)]).status_code == 200
    assert 'status="503"' in client.get("/metrics").text


def test_cors_is_off_unless_configured(model) -> None:
    gallery = Gallery(model)
    origin = {"Origin": "https://example.org"}
    assert (
        "access-control-allow-origin"
        not in make_client(gallery).get("/health", headers=origin).headers
    )
    client = make_client(gallery, cors_origins=["https://example.org"])
    r = client.get("/health", headers=origin)
    assert r.headers["access-control-allow-origin"] == "https://example.org"


def test_cli_serve_refuses_public_host_without_key(model, tmp_path, monkeypatch) -> None:
    import uvicorn

    from openrecog.cli.main import app

    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost")
    assert is_loopback_host("::1") and not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("example.org")
    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(tmp_path / "g"), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "without an API key" in r.output
    path = tmp_path / "g"
    Gallery(model).save(path)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda web, **kw: calls.append((web, kw)))
    monkeypatch.setenv("OPENRECOG_API_KEY", KEY)
    r = runner.invoke(app, ["serve", str(path), "--host", "0.0.0.0", "--port", "9001"])
    assert r.exit_code == 0, r.output
    web, kwargs = calls[0]
    assert kwargs["host"] == "0.0.0.0" and kwargs["port"] == 9001
    assert web.state.settings.api_key.get_secret_value() == KEY
    assert kwargs["access_log"] is True
    r = runner.invoke(app, ["serve", str(path), "--no-access-log", "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.output
    r = runner.invoke(app, ["serve", str(path), "--no-access-log", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert calls[1][1]["access_log"] is False
