import io

import numpy as np
import pytest
from PIL import Image

from openrecog.data.images import ImageLoadError, load_image
from openrecog.models import load_model
from openrecog.models.encoder import ImageEncoder


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (20, 10), 128),
        Image.new("RGBA", (20, 10), (255, 0, 0, 128)),
        Image.new("LA", (20, 10)),
        Image.new("CMYK", (20, 10), (0, 255, 0, 0)),
        Image.new("P", (20, 10)),
        Image.new("1", (20, 10)),
        Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)),
    ],
    ids=["L", "RGBA", "LA", "CMYK", "P", "1", "I16"],
)
def test_modes_become_rgb(image) -> None:
    out = load_image(image)
    assert out.mode == "RGB"
    assert out.size == (20, 10)


def test_sixteen_bit_png_keeps_brightness() -> None:
    data = _bytes(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), "PNG")
    assert load_image(data).getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (30, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    data = _bytes(image, "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (10, 30)


def test_cmyk_jpeg_from_bytes() -> None:
    data = _bytes(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG")
    assert load_image(data).mode == "RGB"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not a recognised image"),
        (b"<html><body>hi</body></html>", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "corrupt|not a recognised"),
    ],
)
def test_garbage_is_a_clear_error(payload, message) -> None:
    with pytest.raises(ImageLoadError, match=message):
        load_image(payload)


def test_truncated_jpeg_is_a_clear_error() -> None:
    data = _bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "none.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused() -> None:
    data = _bytes(Image.new("L", (9000, 9000)), "PNG")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(data, max_pixels=10_000_000)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).size == (8, 8)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth shading, fine texture and sharp edges at several scales."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(7 * x + c) * np.cos(5 * y - c) for c in (0.0, 1.0, 2.0)], axis=-1)
    blocks = rng.random((height // 40 + 1, width // 40 + 1, 3)).repeat(40, 0).repeat(40, 1)
    noise = rng.normal(0, 0.05, (height, width, 3))
    pixels = 0.35 * base + 0.5 * blocks[:height, :width] + noise + 0.25
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def test_min_side_decodes_a_large_jpeg_at_reduced_scale() -> None:
    data = _bytes(_photo(1600, 1200), "JPEG", quality=90)
    assert load_image(data).size == (1600, 1200)
    # 1200 // 448 = 2: the largest libjpeg scale keeping both sides >= 448 is 1/2.
    assert load_image(data, min_side=448).size == (800, 600)
    assert load_image(data, min_side=100).size == (200, 150)  # 1/8 is the smallest scale
    assert load_image(data, min_side=1000).size == (1600, 1200)


def test_min_side_keeps_small_jpegs_other_formats_and_orientation() -> None:
    assert load_image(_bytes(_photo(300, 200), "JPEG"), min_side=448).size == (300, 200)
    assert load_image(_bytes(_photo(1600, 1200), "PNG"), min_side=448).size == (1600, 1200)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _bytes(_photo(1600, 1200), "JPEG", exif=exif.tobytes())
    assert load_image(rotated, min_side=448).size == (600, 800)
    cmyk = _bytes(Image.new("CMYK", (1600, 1200), (0, 40, 0, 0)), "JPEG")
    out = load_image(cmyk, min_side=448)
    assert (out.mode, out.size) == ("RGB", (800, 600))


def test_encoder_reduced_jpeg_decoding_leaves_embeddings_unchanged(tmp_path) -> None:
    encoder = ImageEncoder(load_model("default"), engine="torch", device="cpu")
    assert encoder.decode_min_side == 2 * encoder.preprocessing["image_size"]
    sizes = [(1600, 1200), (1200, 1800), (4000, 3000)]
    paths = []
    for seed, (width, height) in enumerate(sizes):
        paths.append(tmp_path / f"photo{seed}.jpg")
        _photo(width, height, seed).save(paths[-1], quality=90)
    assert encoder.load(paths[2]).size == (1000, 750)
    fast = encoder.encode(paths)
    whole = encoder.encode([load_image(path) for path in paths])
    cosines = np.sum(fast * whole, axis=1)
    assert cosines.min() > 0.995, cosines
