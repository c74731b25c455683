"""Image checks for input rows: every way an image can be bad maps to one named reason, so a
bad image is diverted with that reason instead of failing the job."""

from __future__ import annotations

import io
import warnings

from PIL import Image

REASONS = ("missing_image", "image_too_large", "image_too_many_pixels", "undecodable_image", "truncated_image")


class ImageRejected(ValueError):
    """An unusable image; `reason` is one of REASONS, `detail` says what was found."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown image reject reason {reason!r}; known: {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes -> a fully decoded RGB image, or ImageRejected.

    The pixel count is read from the header before any pixel is decoded, so a decompression
    bomb costs nothing. `max_pixels` is the limit; PIL's own advisory warning (above
    Image.MAX_IMAGE_PIXELS) is silenced, but its hard error (above twice that, ~179M pixels)
    still refuses an image, as image_too_many_pixels.
    """
    if not data:
        raise ImageRejected("missing_image", "the row has no image bytes")
    if len(data) > max_bytes:
        raise ImageRejected("image_too_large", f"{len(data)} bytes > max_image_bytes {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("image_too_many_pixels", f"{width}x{height} > max_image_pixels {max_pixels}")
            return rgb(image)
    except (ImageRejected, MemoryError):  # MemoryError is the worker's trouble, not the row's
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_many_pixels", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("undecodable_image", "not an image format PIL recognises") from None
    except Exception as exc:  # noqa: BLE001 -- a malformed file may raise anything; none may crash a job
        # PIL reports a cut-off file as OSError("image file is truncated ...") or
        # OSError("Truncated File Read"); some plugins raise EOFError.
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        reason = "truncated_image" if truncated else "undecodable_image"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from None


def rgb(image: Image.Image) -> Image.Image:
    """The image fully decoded, in RGB. An RGB image (every JPEG photo) is returned as it is:
    convert("RGB") would copy its pixels, which costs about a third of its decoding."""
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")
