"""Hostile and mutated inputs for the reliability tests and ``bench/reliability.py``.

- :func:`hostile_images`: named files a user or attacker may upload, and whether a correct
  loader reads them.
- :func:`mutated_images`: a seeded stream of bit-flipped, truncated and spliced JPEG, PNG,
  WebP and GIF files made here with Pillow.
- :func:`hostile_bodies`: malformed HTTP request bodies (JSON and multipart).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` written in ``fmt`` to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG whose header claims ``width`` × ``height`` (a decompression bomb header)."""
    data = encode(Image.new("L", (4, 4)), "PNG")
    start = data.index(b"IHDR") - 4
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:start] + ihdr + data[start + 25 :]


def _frames(size: int = 24) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), colour) for colour in ("red", "green", "blue")]


def _animated(fmt: str) -> bytes:
    first, *rest = _frames()
    buffer = io.BytesIO()
    first.save(buffer, fmt, save_all=True, append_images=rest, duration=50)
    return buffer.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: 40×20 stored, 20×40 shown
    return encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(image, "PNG", transparency=0)


def noise_image(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """A deterministic RGB noise image (compresses badly, so mutations hit pixel data)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def hostile_images() -> dict[str, tuple[bytes, bool]]:
    """``{name: (file bytes, readable)}``: what a loader must survive.

    ``readable`` says whether a correct loader returns an image (True) or must refuse it
    with a clear error (False).
    """
    jpeg = encode(noise_image(), "JPEG")
    png = encode(noise_image(), "PNG")
    return {
        "zero_bytes": (b"", False),
        "text": (b"just some text, not an image\n" * 4, False),
        "html_as_jpeg": (b"<!DOCTYPE html><html><body><img src=x></body></html>", False),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', False),
        "postscript": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", False),
        "pdf": (encode(Image.new("RGB", (8, 8)), "PDF"), False),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], False),
        "truncated_png": (png[: len(png) // 2], False),
        "png_signature_only": (b"\x89PNG\r\n\x1a\n", False),
        "corrupt_png_header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, False),
        "bomb_20000x20000": (png_declaring(20_000, 20_000), False),
        "bomb_9000x9000": (png_declaring(9_000, 9_000), False),
        "gif_declaring_65535": (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0\0\0;", False),
        "one_pixel_png": (encode(Image.new("RGB", (1, 1), "red"), "PNG"), True),
        "one_pixel_jpeg": (encode(Image.new("RGB", (1, 1), "red"), "JPEG"), True),
        "one_by_4000": (encode(Image.new("RGB", (1, 4000), "red"), "PNG"), True),
        "animated_gif": (_animated("GIF"), True),
        "animated_webp": (_animated("WEBP"), True),
        "animated_png": (_animated("PNG"), True),
        "png_16_bit": (
            encode(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), "PNG"),
            True,
        ),
        "cmyk_jpeg": (encode(Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG"), True),
        "lab_tiff": (encode(Image.new("LAB", (16, 16), (128, 128, 128)), "TIFF"), True),
        "float_tiff_nan": (
            encode(Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)), "TIFF"),
            True,
        ),
        "palette_transparency": (_palette_with_transparency(), True),
        "exif_rotated_jpeg": (_exif_rotated(), True),
        "png_named_jpg": (png, True),  # wrong extension: the content decides
        "grayscale_jpeg": (encode(Image.new("L", (16, 16), 90), "JPEG"), True),
        "rgba_webp": (encode(Image.new("RGBA", (16, 16), (0, 0, 255, 100)), "WEBP"), True),
        "bmp": (encode(Image.new("RGB", (9, 7)), "BMP"), True),
    }


def seed_files(seed: int = 0) -> dict[str, bytes]:
    """Real small JPEG, PNG, WebP and GIF files to mutate."""
    image = noise_image((48, 40), seed)
    return {
        "jpeg": encode(image, "JPEG", quality=85),
        "png": encode(image, "PNG"),
        "webp": encode(image, "WEBP", quality=80),
        "gif": encode(image.convert("P"), "GIF"),
    }


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``: bit flips, a truncation, random bytes, or both."""
    out = bytearray(data)
    kind = rng.choice(["flip", "truncate", "flip+truncate", "bytes", "splice"])
    if kind in ("flip", "flip+truncate"):
        for _ in range(rng.randint(1, 16)):
            pos = rng.randrange(len(out))
            out[pos] ^= 1 << rng.randrange(8)
    if kind in ("truncate", "flip+truncate"):
        out = out[: rng.randrange(len(out))]
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    if kind == "splice":  # a block repeated or dropped: length fields stop matching
        a, b = sorted(rng.randrange(len(out)) for _ in range(2))
        out = out[:a] + out[a:b] * rng.randint(0, 3) + out[b:]
    return kind, bytes(out)


def mutated_images(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` seeded mutations ``(description, bytes)`` of :func:`seed_files`."""
    rng = random.Random(seed)
    seeds = seed_files(seed)
    names = sorted(seeds)
    for _ in range(count):
        fmt = rng.choice(names)
        kind, data = mutate(seeds[fmt], rng)
        yield f"{fmt}/{kind}", data


def _multipart(field: str, data: bytes, boundary: bytes = b"XX") -> bytes:
    head = f'Content-Disposition: form-data; name="{field}"; filename="a.png"\r\n\r\n'.encode()
    return b"--" + boundary + b"\r\n" + head + data + b"\r\n--" + boundary + b"--\r\n"


def hostile_bodies(mutations: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``(content type, body)`` of malformed requests: JSON too deep or of the wrong shape,
    broken multipart, other media types, and ``mutations`` uploads with mutated headers.

    Bodies carry a multipart field ``file``; :func:`fuzz_bodies` renames it for batches.
    """
    png = encode(noise_image(seed=seed), "PNG")
    json_type, multipart = "application/json", "multipart/form-data; boundary=XX"
    bodies = [
        (json_type, b"[" * 100_000),  # deeper than the parser's stack (was a 500)
        (json_type, b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        (json_type, b'{"images": {"a": 1}, "label": ["x"]}'),
        (json_type, b'{"image": 5, "images": "x", "names": 3}'),
        (json_type, b"\xff\xfe{}"),
        (json_type, b"null"),
        (json_type, b'{"images": ["AAAA"], "names": ["a", "b"], "label": "x"}'),
        (json_type, b'{"images": [], "label": "x"}'),
        ("multipart/form-data", _multipart("file", png)),  # no boundary
        ("multipart/form-data; boundary=YY", _multipart("file", png)),
        (multipart, _multipart("file", png)[:60]),
        (multipart, b"--XX\r\n\r\n\r\n--XX--"),
        ("text/plain", png),
        ("application/x-www-form-urlencoded", b"file=abc&label=x"),
    ]
    rng = random.Random(seed)
    good = _multipart("file", png)
    for _ in range(mutations):  # the part headers of a good upload, mutated
        head = bytearray(good[:200])
        for _ in range(rng.randint(1, 8)):
            head[rng.randrange(len(head))] = rng.randrange(256)
        bodies.append((multipart, bytes(head) + good[200:]))
    return bodies
