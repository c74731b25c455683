"""Image checks for input rows: every way an image can be bad maps to one named reason."""

from __future__ import annotations

import io
import warnings

from PIL import Image

REASONS = ("missing_image", "image_too_large", "image_too_many_pixels", "undecodable_image", "truncated_image")


class ImageRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes -> RGB image, or ImageRejected. The size is read from the header before any pixel
    is decoded, so a decompression bomb costs nothing."""
    if not data:
        raise ImageRejected("missing_image", "the row has no image bytes")
    if len(data) > max_bytes:
        raise ImageRejected("image_too_large", f"{len(data)} bytes > max_image_bytes {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("image_too_many_pixels", f"{width}x{height} > max_image_pixels {max_pixels}")
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image_too_many_pixels", str(exc)) from None
    except Image.UnidentifiedImageError as exc:
        raise ImageRejected("undecodable_image", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports a cut-off file as OSError("image file is truncated ...") or similar.
        reason = "truncated_image" if "truncated" in str(exc).lower() else "undecodable_image"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from None
    return image.convert("RGB")
