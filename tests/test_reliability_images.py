"""Hostile and mutated images: the library and the HTTP API answer each with a clear error.

Every case of :func:`tests.reliability_tools.hostile_images` and 1,000+ seeded mutations
of real JPEG/PNG/WebP/GIF files go to ``load_image``, ``Gallery.register/classify`` and
the HTTP endpoints: no crash, no hang, no 5xx, and the server keeps serving afterwards.
"""

from __future__ import annotations

import io
import warnings

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from openrecog.data.images import ImageLoadError, load_image
from openrecog.gallery import Gallery
from openrecog.models import save_artifact
from openrecog.serve import ServeSettings, create_app
from tests.reliability_tools import (
    BODY_ROUTES,
    encode,
    fuzz_bodies,
    fuzz_http,
    fuzz_library,
    hostile_bodies,
    hostile_images,
    mutated_images,
    noise_image,
    time_limit,
    tiny_model,
    torch_threads,
)

KEY = "fuzz-key"
AUTH = {"X-API-Key": KEY}
HOSTILE = hostile_images()
FUZZ_INPUTS = 1000


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENRECOG_API_KEY", raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _client(gallery: Gallery) -> TestClient:
    return TestClient(create_app(gallery, None, ServeSettings(api_key=KEY)))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_in_the_library(name, model) -> None:
    data, readable = HOSTILE[name]
    gallery = Gallery(model, threshold=0.0)
    gallery.register(noise_image(seed=1), "seed")
    with time_limit(20, name), warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. NaN casts or bomb warnings must not leak
        if readable:
            image = load_image(data)
            assert image.mode == "RGB" and min(image.size) >= 1
            assert gallery.classify(data)[0] in {"seed", "unknown"}
            gallery.register(data, name)
            assert len(gallery) == 2
        else:
            with pytest.raises(ImageLoadError) as info:
                load_image(data)
            assert str(info.value).startswith("<image>: ") and len(str(info.value)) > 15
            with pytest.raises(ImageLoadError):
                gallery.classify(data)
            with pytest.raises(ImageLoadError):
                gallery.register(data, name)
            assert len(gallery) == 1


def test_hostile_images_decode_correctly() -> None:
    assert load_image(HOSTILE["exif_rotated_jpeg"][0]).size == (20, 40)
    assert load_image(HOSTILE["palette_transparency"][0]).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(HOSTILE["png_16_bit"][0]).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(HOSTILE["animated_webp"][0]).getpixel((5, 5))[0] > 200  # first: red
    grey = load_image(HOSTILE["lab_tiff"][0]).getpixel((0, 0))
    assert max(grey) - min(grey) <= 3 and 100 < grey[0] < 140  # L=50 %, a=b=0: mid grey
    assert load_image(HOSTILE["float_tiff_nan"][0]).getpixel((0, 0)) == (0, 0, 0)
    for name in ("bomb_20000x20000", "bomb_9000x9000"):
        with pytest.raises(ImageLoadError, match="too large"):
            load_image(HOSTILE[name][0])
    for name in ("postscript", "pdf", "svg"):  # never handed to Ghostscript or the like
        with pytest.raises(ImageLoadError, match="not a recognised image format"):
            load_image(HOSTILE[name][0])


def test_wrong_extensions_and_files(tmp_path) -> None:
    png = encode(noise_image(), "PNG")
    (tmp_path / "photo.jpg").write_bytes(png)  # content wins over the name
    assert load_image(tmp_path / "photo.jpg").size == (48, 40)
    (tmp_path / "page.jpg").write_bytes(HOSTILE["html_as_jpeg"][0])
    with pytest.raises(ImageLoadError, match="page.jpg: not a recognised image format"):
        load_image(tmp_path / "page.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png"):
        load_image(tmp_path / "empty.png")


def test_hostile_images_over_http(model) -> None:
    gallery = Gallery(model, threshold=0.0)
    client = _client(gallery)
    assert client.post(
        "/register",
        data={"label": "seed"},
        files=[("files", ("seed.png", encode(noise_image(seed=1), "PNG"), "image/png"))],
        headers=AUTH,
    ).json()["added"] == [0]
    for name, (data, readable) in sorted(HOSTILE.items()):
        with time_limit(20, name):
            r = client.post("/classify", files={"file": (f"{name}.jpg", data, "image/jpeg")})
        if readable:
            assert r.status_code == 200, (name, r.text)
        else:
            assert r.status_code == 400, (name, r.text)
            assert r.json()["detail"].startswith(f"{name}.jpg: "), r.json()
    files = [("files", (f"{n}.png", d, "image/png")) for n, (d, _) in sorted(HOSTILE.items())]
    r = client.post("/register", data={"label": "mixed"}, files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    readable = sorted(f"{n}.png" for n, (_, ok) in HOSTILE.items() if ok)
    assert len(r.json()["added"]) == len(readable)
    skipped = {s["file"]: s["reason"] for s in r.json()["skipped"]}
    assert set(skipped) == {f"{n}.png" for n, (_, ok) in HOSTILE.items() if not ok}
    assert skipped["bomb_20000x20000.png"].startswith("image too large")
    assert len(gallery) == 1 + len(readable)


def test_cli_register_skips_hostile_files(model, tmp_path) -> None:
    from openrecog.cli.main import app

    folder = tmp_path / "classes" / "mixed"
    folder.mkdir(parents=True)
    for name, (data, _) in HOSTILE.items():
        (folder / f"{name}.png").write_bytes(data)
    model_dir = save_artifact(model, tmp_path / "model")
    result = CliRunner().invoke(
        app, ["register", str(tmp_path / "g"), str(tmp_path / "classes"), "--model", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    readable = sum(ok for _, ok in HOSTILE.values())
    assert f"registered {readable} images ({len(HOSTILE) - readable} skipped)" in result.output
    assert "bomb_20000x20000.png: image too large" in result.output


def test_fuzz_library(model) -> None:
    gallery = Gallery(model, threshold=0.0)
    gallery.register(noise_image(seed=1), "seed")
    inputs = list(mutated_images(FUZZ_INPUTS, seed=1))
    report = fuzz_library(gallery, inputs, per_call_s=10)
    assert report.inputs == FUZZ_INPUTS
    assert not report.crashes, report.crashes[:5]
    assert not report.hangs, report.hangs[:5]
    # Both outcomes are exercised: some mutations still decode, most do not.
    assert report.accepted > 50 and report.refused > 300, report
    assert len(gallery) == 1 + report.registered


def test_fuzz_http_and_server_keeps_serving(model) -> None:
    gallery = Gallery(model, threshold=0.0)
    client = _client(gallery)
    seed = encode(noise_image(seed=2), "PNG")
    files = [("files", ("seed.png", seed, "image/png"))]
    assert client.post("/register", data={"label": "seed"}, files=files, headers=AUTH).is_success
    inputs = list(mutated_images(FUZZ_INPUTS, seed=2))
    report = fuzz_http(client, inputs, AUTH, per_call_s=10)
    assert report.inputs == FUZZ_INPUTS
    assert not report.crashes, report.crashes[:5]
    assert not report.hangs, report.hangs[:5]
    assert report.accepted > 50 and report.refused > 300, report
    # Still serving, with exactly the registrations it acknowledged.
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 1 + report.registered
    r = client.post("/classify", files={"file": ("q.png", seed, "image/png")}, params={"k": 1})
    assert r.status_code == 200 and r.json()["top"][0]["item_id"] == 0
    assert r.json()["top"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert 'status="500"' not in client.get("/metrics").text


def test_giant_upload_is_refused_before_decoding(model, monkeypatch) -> None:
    from openrecog.models import encoder as encoder_module

    decoded = []  # uploads' bytes that reached the decoder
    real = encoder_module.load_image
    monkeypatch.setattr(
        encoder_module,
        "load_image",
        lambda d, **kw: (isinstance(d, bytes) and decoded.append(1)) or real(d, **kw),
    )
    gallery = Gallery(model)
    gallery.register(noise_image(), "seed")
    client = TestClient(
        create_app(gallery, None, ServeSettings(api_key=KEY, max_upload_bytes=1000))
    )
    big = encode(Image.effect_noise((64, 64), 80).convert("RGB"), "PNG")
    assert len(big) > 1000
    r = client.post("/classify", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "big.png" in r.json()["detail"]
    r = client.post(
        "/register", data={"label": "x"}, files=[("files", ("b.png", big))], headers=AUTH
    )
    assert r.status_code == 413
    assert decoded == [] and len(gallery) == 1
    # the decompression bomb is small on the wire: it is refused at decoding, by its header
    bomb = HOSTILE["bomb_20000x20000"][0]
    r = client.post("/classify", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 400 and "too large" in r.json()["detail"]
    assert io.BytesIO(bomb).getbuffer().nbytes < 1000


def test_hostile_request_bodies_are_4xx(model) -> None:
    gallery = Gallery(model)
    gallery.register(noise_image(), "seed")
    client = _client(gallery)
    bodies = hostile_bodies(mutations=150, seed=4)
    report = fuzz_bodies(client, bodies, AUTH, per_call_s=20)
    assert report.inputs == len(BODY_ROUTES) * len(bodies)
    assert not report.crashes, report.crashes[:5]
    assert not report.hangs, report.hangs[:5]
    assert client.get("/health").json()["status"] == "ok"
    assert 'status="500"' not in client.get("/metrics").text
