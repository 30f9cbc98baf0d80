"""Untrusted files, path traversal and authentication.

- Model, gallery and checkpoint files are never unpickled, and their checksums are checked:
  a tampered file, or a crafted one with a matching checksum, is refused with a clear error.
- Labels, item ids and file names are data, never paths: nothing is written or read outside
  the gallery folder, whatever the library, the CLI or the HTTP API is given.
- No request without the right API key changes the gallery, on any route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from typer.testing import CliRunner

from openrecog.gallery import Gallery, GalleryError
from openrecog.models import load_model, save_artifact
from openrecog.models.artifact import ArtifactError
from openrecog.serve import ServeSettings, create_app
from openrecog.train.checkpoint import load_checkpoint
from tests.reliability_tools import encode, noise_image, tiny_model, torch_threads

KEY = "the-right-key-0123456789"
AUTH = {"X-API-Key": KEY}
runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.delenv("OPENRECOG_API_KEY", raising=False)
    with torch_threads(1):
        yield


def _png(seed: int) -> bytes:
    return encode(noise_image(seed=seed), "PNG")


@pytest.fixture
def saved(model, tmp_path) -> Path:
    gallery = Gallery(model, threshold=0.3)
    for i in range(4):
        gallery.register(noise_image(seed=i), f"class_{i % 2}")
    return gallery.save(tmp_path / "g")


def _rechecksum(path: Path) -> None:
    """Update gallery.json's checksums after a deliberate edit (a crafted gallery)."""
    manifest = json.loads((path / "gallery.json").read_text())
    for name in manifest["sha256"]:
        manifest["sha256"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "gallery.json").write_text(json.dumps(manifest))


class _Payload:
    """Unpickling this creates a marker file: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


# ----------------------------------------------------------------------------- tampering
@pytest.mark.parametrize(
    "name", ["embeddings.safetensors", "items.json", "model/weights.safetensors"]
)
def test_tampered_gallery_files_are_refused(saved, name) -> None:
    file = saved / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises((GalleryError, ArtifactError), match="checksum"):
        Gallery.load(saved)
    result = runner.invoke(_cli(), ["info", str(saved)])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "checksum" in result.output and "Traceback" not in result.output


def test_tampered_saved_index_is_refused(model, tmp_path) -> None:
    gallery = Gallery(model, index="HNSW32")
    gallery.add_embeddings(np.eye(16, dtype=np.float32)[:5], list("abcde"))
    path = gallery.save(tmp_path / "g")
    data = bytearray((path / "index.faiss").read_bytes())
    data[-20] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="checksum"):
        Gallery.load(path)


def _cli():
    from openrecog.cli.main import app

    return app


CRAFTED = {
    "manifest_list": lambda p: (p / "gallery.json").write_text("[1, 2]"),
    "manifest_not_json": lambda p: (p / "gallery.json").write_bytes(b"\xff\xfe{"),
    "checksum_path_escape": lambda p: _edit_manifest(
        p, lambda m: m["sha256"].update({"../../etc/passwd": "0" * 64})
    ),
    "checksum_absolute": lambda p: _edit_manifest(
        p, lambda m: m["sha256"].update({"/etc/passwd": "0" * 64})
    ),
    "checksums_removed": lambda p: _edit_manifest(p, lambda m: m.update(sha256={})),
    "threshold_text": lambda p: _edit_manifest(p, lambda m: m.update(threshold="high")),
    "next_id_reuses_ids": lambda p: _edit_manifest(p, lambda m: m.update(next_id=1)),
    "items_not_a_list": lambda p: _edit_items(p, lambda items: {"a": 1}),
    "items_duplicate_ids": lambda p: _edit_items(
        p, lambda items: [items[0], {**items[1], "item_id": 0}, *items[2:]]
    ),
    "items_control_label": lambda p: _edit_items(
        p, lambda items: [{**items[0], "label": "a\x00b"}, *items[1:]]
    ),
    "items_label_number": lambda p: _edit_items(
        p, lambda items: [{**items[0], "label": 7}, *items[1:]]
    ),
    "embeddings_nan": lambda p: _edit_embeddings(p, lambda ids, v: (ids, v * np.nan)),
    "embeddings_float64": lambda p: _edit_embeddings(p, lambda ids, v: (ids, v.astype("f8"))),
    "embeddings_garbage": lambda p: (p / "embeddings.safetensors").write_bytes(b"\x10" * 64),
    "embeddings_missing_ids": lambda p: save_file(
        {"embeddings": np.zeros((4, 16), np.float32)}, str(p / "embeddings.safetensors")
    ),
}


def _edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "gallery.json").read_text())
    change(manifest)
    (path / "gallery.json").write_text(json.dumps(manifest))


def _edit_items(path: Path, change) -> None:
    items = json.loads((path / "items.json").read_text())
    (path / "items.json").write_text(json.dumps(change(items)))


def _edit_embeddings(path: Path, change) -> None:
    from safetensors.numpy import load_file

    arrays = load_file(str(path / "embeddings.safetensors"))
    ids, vectors = change(arrays["ids"], arrays["embeddings"])
    save_file({"ids": ids, "embeddings": vectors}, str(path / "embeddings.safetensors"))


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_gallery_with_valid_checksums_is_refused(saved, case) -> None:
    CRAFTED[case](saved)
    if case.startswith(("items", "embeddings", "next_id", "threshold")):
        _rechecksum(saved)  # crafted to pass the checksums: the content must be checked
    with pytest.raises(GalleryError) as info:
        Gallery.load(saved)
    assert str(saved) in str(info.value)
    result = runner.invoke(_cli(), ["info", str(saved)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


def test_pickles_are_never_loaded(model, saved, tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    # a model whose weights file is a pickle (checksum updated to match)
    model_dir = save_artifact(model, tmp_path / "m")
    (model_dir / "weights.safetensors").write_bytes(payload)
    config = json.loads((model_dir / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="weights do not fit"):
        load_model(model_dir)
    # a gallery whose embeddings are a pickle
    (saved / "embeddings.safetensors").write_bytes(payload)
    _rechecksum(saved)
    with pytest.raises(GalleryError, match="unreadable embeddings"):
        Gallery.load(saved)
    # a training checkpoint that is an arbitrary pickle (torch.load(weights_only=True))
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    (tmp_path / "step_00000001.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        load_checkpoint(tmp_path / "step_00000001.pt")
    assert not marker.exists()


# ----------------------------------------------------------------------------- traversal
TRAVERSAL_LABELS = [
    "../../etc",
    "../../../tmp/evil",
    "/etc/passwd",
    "..",
    "a/../../b",
    "C:\\Windows\\system32",
    "%2e%2e%2f%2e%2e%2fetc",
    "~root/.ssh",
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_labels_are_data_not_paths_in_the_library(model, tmp_path) -> None:
    path = tmp_path / "inside" / "g"
    gallery = Gallery(model)
    for i, label in enumerate(TRAVERSAL_LABELS):
        gallery.register(noise_image(seed=i), label, source=f"../../{label}.png")
    gallery.save(path)
    assert set(Gallery.load(path).classes()) == set(TRAVERSAL_LABELS)
    # Only the gallery's own files exist, all inside its folder.
    assert {p.name for p in tmp_path.iterdir()} == {"inside"}
    assert {p.name for p in (tmp_path / "inside").iterdir()} == {"g"}
    assert {p.name for p in path.iterdir()} == {
        "gallery.json",
        "items.json",
        "embeddings.safetensors",
        "model",
    }
    for bad in ["a\x00b", "\x00", "x\n../y", "tab\there"]:
        with pytest.raises(GalleryError, match="control characters"):
            gallery.register(noise_image(), bad)
    assert gallery.remove_class("../../etc") == 1


def test_labels_are_data_not_paths_in_the_cli(model, tmp_path) -> None:
    model_dir = save_artifact(model, tmp_path / "model")
    work = tmp_path / "work"
    for i, odd in enumerate(["etc%2F..%2F..", "~root", "C:"]):  # folder names cannot hold "/"
        (work / "classes" / odd).mkdir(parents=True)
        noise_image(seed=i).save(work / "classes" / odd / "a.png")
    image = work / "q.png"
    noise_image(seed=2).save(image)
    before = _tree(tmp_path)
    gallery = work / "g"
    result = runner.invoke(
        _cli(), ["register", str(gallery), str(work / "classes"), "--model", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    for label in TRAVERSAL_LABELS:
        result = runner.invoke(_cli(), ["register", str(gallery), str(image), "--label", label])
        assert result.exit_code == 0, result.output
    result = runner.invoke(
        _cli(), ["register", str(gallery), str(image), "--label", "bad\x1blabel"]
    )
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "control characters" in result.output
    assert set(Gallery.load(gallery).classes()) == {
        "etc%2F..%2F..",
        "~root",
        "C:",
        *TRAVERSAL_LABELS,
    }
    created = _tree(tmp_path) - before
    assert all(name.startswith("work/g") for name in created), created
    result = runner.invoke(_cli(), ["remove", str(gallery), "--label", "../../etc"])
    assert result.exit_code == 0 and "removed 1" in result.output


def test_labels_ids_and_file_names_are_data_over_http(model, tmp_path) -> None:
    path = tmp_path / "inside" / "g"
    client = TestClient(create_app(Gallery(model), path, ServeSettings(api_key=KEY)))
    for i, label in enumerate(TRAVERSAL_LABELS):
        files = [("files", (f"../../../etc/{i}.png", _png(i), "image/png"))]
        r = client.post("/register", data={"label": label}, files=files, headers=AUTH)
        assert r.status_code == 200, (label, r.text)
    r = client.post(
        "/register",
        json={"label": "/abs", "images": [base64.b64encode(_png(20)).decode()], "names": ["/x"]},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["added"], r.text
    for bad in ["a\x00b", "\x00", "line\nbreak"]:
        files = [("files", ("a.png", _png(0), "image/png"))]
        r = client.post("/register", data={"label": bad}, files=files, headers=AUTH)
        assert r.status_code == 422 and "control characters" in r.json()["detail"]
    labels = {c["label"] for c in client.get("/classes").json()["classes"]}
    assert labels == {"/abs", *TRAVERSAL_LABELS}
    assert {p.name for p in tmp_path.iterdir()} == {"inside"}
    assert {p.name for p in (tmp_path / "inside").iterdir()} == {"g"}
    # item ids are integers; anything else is refused before it reaches the gallery
    for raw in ["..%2F..%2Fetc", "-1", "1e999", "0x1", "%00"]:
        r = client.delete(f"/items/{raw}", headers=AUTH)
        assert r.status_code in (404, 422), (raw, r.status_code)
    # a label with slashes is one class, removed by its URL-encoded name
    r = client.delete("/classes/..%2F..%2Fetc", headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == 1
    # upload names are never read from disk, even after a restart
    restarted = TestClient(create_app(Gallery.load(path), path, ServeSettings(api_key=KEY)))
    item = restarted.get("/items").json()["items"][0]
    assert item["source"].startswith("upload:../../../etc/")
    r = restarted.get(f"/items/{item['item_id']}/thumbnail")
    assert r.status_code == 200 and r.headers["x-thumbnail"] == "placeholder"


# ----------------------------------------------------------------------------- auth
OPEN_ROUTES = {"/", "/health"}  # liveness and the page: open even with protect_reads


def _routes(app) -> list[tuple[str, str, set[str]]]:
    """``(method, path, guards)`` of every route; guards name its auth dependencies."""
    found = []
    for route in app.routes:
        dependant = getattr(route, "dependant", None)
        guards = {dep.call.__name__ for dep in dependant.dependencies} if dependant else set()
        for method in sorted(getattr(route, "methods", None) or []):
            if method != "HEAD":
                found.append((method, route.path, guards))
    return found


def _writes(app) -> list[tuple[str, str]]:
    return sorted((m, p) for m, p, guards in _routes(app) if "require_write" in guards)


def test_every_api_route_is_guarded(saved) -> None:
    app = create_app(Gallery.load(saved), saved, ServeSettings(api_key=KEY))
    for method, path, guards in _routes(app):
        api = not path.startswith(("/static", "/docs", "/redoc", "/openapi"))
        if api and path not in OPEN_ROUTES:
            # A new endpoint must choose: a read (key with protect_reads) or a write (key).
            assert guards & {"require_read", "require_write"}, (method, path)
        if method != "GET" and api:
            assert guards & {"require_read", "require_write"}, (method, path)
    assert {
        ("DELETE", "/classes/{label:path}"),
        ("DELETE", "/items/{item_id}"),
        ("POST", "/register"),
    } <= set(_writes(app))


def _request(client: TestClient, method: str, path: str, headers: dict[str, str], params=None):
    url = path.replace("{item_id}", "0").replace("{label:path}", "class_0")
    url = url.replace("{label}", "class_0").replace("{path:path}", "app.js")
    files = [("files", ("a.png", _png(9), "image/png"))]
    if method == "POST":
        field = "files" if url in ("/register", "/classify/batch", "/search/batch") else "file"
        upload = files if field == "files" else {"file": ("a.png", _png(9), "image/png")}
        data = {"label": "intruder"} if url == "/register" else None
        return client.post(url, files=upload, data=data, headers=headers, params=params)
    return client.request(method, url, headers=headers, params=params)


WRONG_KEYS = [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEY[:-1]},
    {"X-API-Key": KEY + "x"},
    {"X-API-Key": KEY.upper()},
    {"X-API-Key": KEY.replace("0", "O")},
    {"Authorization": f"Bearer {KEY}"},
    {"X-Api-Key-Other": KEY},
]


def test_no_unauthorised_request_changes_the_gallery(saved, monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr("openrecog.serve.app.hmac.compare_digest", spy)
    gallery = Gallery.load(saved)
    app = create_app(gallery, saved, ServeSettings(api_key=KEY))
    client = TestClient(app, raise_server_exceptions=False)
    before_items, before_files = gallery.items(), _tree(saved)
    before_bytes = {name: (saved / name).read_bytes() for name in ("items.json", "gallery.json")}
    writes = _writes(app)
    for method, path, _ in _routes(app):  # every route, reads too: none may change anything
        for headers in WRONG_KEYS:
            r = _request(client, method, path, headers, params={"api_key": KEY})
            if (method, path) in writes:
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["detail"] in (
                    "wrong API key",
                    "missing API key: send it in the X-API-Key header",
                )
    assert gallery.items() == before_items and _tree(saved) == before_files
    assert {name: (saved / name).read_bytes() for name in before_bytes} == before_bytes
    assert compared and all(isinstance(a, bytes) for a, _ in compared)  # constant-time path
    # the right key works on each write route
    assert _request(client, "POST", "/register", AUTH).status_code == 200
    assert _request(client, "DELETE", "/items/{item_id}", AUTH).status_code == 200
    assert _request(client, "DELETE", "/classes/{label}", AUTH).status_code == 200


def test_writes_disabled_without_a_key_and_reads_protected_on_request(saved) -> None:
    gallery = Gallery.load(saved)
    before = gallery.items()
    app = create_app(gallery, saved, ServeSettings())
    keyless = TestClient(app)
    for method, path in _writes(app):
        for headers in ({}, {"X-API-Key": "anything"}):
            r = _request(keyless, method, path, headers)
            assert r.status_code == 403 and "no API key" in r.json()["detail"]
    assert gallery.items() == before
    app = create_app(gallery, saved, ServeSettings(api_key=KEY, protect_reads=True))
    guarded = TestClient(app, raise_server_exceptions=False)
    for method, path, guards in _routes(app):
        if "require_read" not in guards:
            continue
        r = _request(guarded, method, path, {"X-API-Key": "wrong"})
        assert r.status_code == 401, (method, path)
        assert _request(guarded, method, path, AUTH).status_code not in (401, 500), (method, path)


def test_cors_is_off_by_default(saved) -> None:
    gallery = Gallery.load(saved)
    client = TestClient(create_app(gallery, saved, ServeSettings(api_key=KEY)))
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    r = client.options("/register", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/classify", files={"file": ("a.png", _png(1))}, headers={"Origin": "x"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    allowed = TestClient(
        create_app(gallery, saved, ServeSettings(api_key=KEY, cors_origins=["https://ok.example"]))
    )
    r = allowed.options("/register", headers={**preflight, "Origin": "https://ok.example"})
    assert r.headers["access-control-allow-origin"] == "https://ok.example"
    r = allowed.options("/register", headers=preflight)
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
