import io

import numpy as np
import pytest
from PIL import Image

from openrecog.data.images import ImageLoadError, load_image


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
