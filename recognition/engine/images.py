"""Turning untrusted uploaded bytes into an RGB array, or a clear error."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a camera or a photo library produces. Anything else (PDF, SVG, HTML renamed .jpg...) is refused
# before it reaches a decoder.
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}


class ImageError(ValueError):
    """An upload that cannot be used. ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 20


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode an upload to an (H, W, 3) uint8 RGB array.

    Honours EXIF orientation; converts RGBA (onto white), greyscale, palette, CMYK and 16-bit images.
    Raises ImageError for empty, oversized, undecodable, truncated or decompression-bomb inputs.
    """
    if not data:
        raise ImageError("empty_file", "The uploaded file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            "file_too_large",
            f"The file is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            fmt = probe.format
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "image_too_large", f"The image has more pixels than the limit of {limits.max_pixels:,} (a decompression bomb?)."
        )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError("invalid_image", "The file is not an image this service can read (JPEG, PNG, WebP, BMP, GIF, TIFF).")
    if fmt not in ACCEPTED_FORMATS:
        raise ImageError("unsupported_format", f"Image format {fmt} is not accepted; use JPEG, PNG or WebP.")
    if width * height > limits.max_pixels:
        raise ImageError(
            "image_too_large",
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,} pixels.",
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            "image_too_small", f"The image is {width}x{height}; each side must be at least {limits.min_side} pixels."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # a truncated file fails here, not later
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("corrupt_image", "The image file is truncated or corrupt and cannot be decoded.")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip.
        arr = np.asarray(image, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (thumbnails, crops)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
