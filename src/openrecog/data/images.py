"""Robust image reading: any common file → upright 8-bit RGB, or one clear error line.

Handles EXIF orientation, grayscale, 16-bit, palette and alpha (composited on white, so
transparent logos do not turn black), CMYK/LAB, animated files (first frame) and
decompression bombs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)
# Pillow's own bomb guard warns at 89 Mpx and raises at twice that; we refuse above this.
MAX_PIXELS = 64_000_000
# The raster formats we decode, whatever the file is called. Everything else Pillow could
# open is refused: EPS and PDF-like formats would run Ghostscript on an uploaded file, and
# rarely used decoders are where parser bugs live. (Multi-picture JPEGs open as JPEG.)
DECODERS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM")

ImageInput = str | os.PathLike | bytes | Image.Image


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message names it and says why."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Return True if ``path`` has an image file extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # NaN/inf (float TIFFs) would become arbitrary bytes in the cast below.
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0, neginf=0)
        high = array.max() if array.size else 0.0
        scale = 255.0 / 65535.0 if high > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_image(
    source: ImageInput, max_pixels: int = MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an upright RGB image.

    Args:
        source: a file path, the file's bytes, or an already opened PIL image (used as is).
        max_pixels: refuse images with more pixels than this.
        min_side: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, as long as both
            sides stay at least ``min_side`` px (libjpeg's DCT scaling, Pillow's ``draft``):
            a 12-Mpx phone photo meant for a 224 px model then decodes many times faster.
            Other formats are always decoded whole.

    Raises:
        ImageLoadError: missing file, not an image, truncated/corrupt data, or too many pixels.
    """
    name = "<image>" if isinstance(source, bytes | Image.Image) else str(source)
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
            with handle:
                if not handle.read(1):
                    raise ImageLoadError(f"{name}: empty file, not a recognised image format")
                handle.seek(0)
                image = Image.open(handle, formats=DECODERS)
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: image too large ({width}x{height} > {max_pixels} pixels)"
                    )
                image.seek(0)  # first frame of animations
                if min_side is not None and image.format == "JPEG":
                    image.draft(None, (min_side, min_side))
                image.load()
        image = ImageOps.exif_transpose(image) or image
        if image.width < 1 or image.height < 1:
            raise ImageLoadError(f"{name}: empty image")
        return to_rgb(image)
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{name}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"{name}: is a directory, not an image") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{name}: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name}: not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: image too large (decompression bomb guard)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({exc})") from exc


def check_image(path: str | os.PathLike) -> str | None:
    """Cheaply check that ``path`` is a readable image header; return a reason if not."""
    try:
        with Image.open(path, formats=DECODERS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                return f"image too large ({width}x{height})"
            if width < 1 or height < 1:
                return "empty image"
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Image.DecompressionBombError:
        return "image too large (decompression bomb guard)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({exc})"
    return None


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` sorted by path; hidden files and folders are ignored."""
    folder = Path(folder)
    pattern: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in pattern
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files)
