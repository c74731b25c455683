import io

import pytest
from PIL import Image

from engine.images import ImageRejected, decode_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 10_000}


def png(size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buffer, format="PNG")
    return buffer.getvalue()


def test_valid_png_decodes_to_rgb():
    image = decode_image(png(mode="L"), **LIMITS)
    assert image.mode == "RGB" and image.size == (20, 10)


@pytest.mark.parametrize(
    "data, reason",
    [
        (None, "missing_image"),
        (b"", "missing_image"),
        (b"\x00not an image at all" * 10, "undecodable_image"),
        (png((60, 60))[:60], "truncated_image"),
        (png((200, 100)), "image_too_many_pixels"),  # 20,000 pixels > 10,000
    ],
)
def test_bad_images_are_rejected_with_their_reason(data, reason):
    with pytest.raises(ImageRejected) as err:
        decode_image(data, **LIMITS)
    assert err.value.reason == reason and err.value.detail


def test_too_many_bytes():
    with pytest.raises(ImageRejected) as err:
        decode_image(png(), max_bytes=10, max_pixels=10_000)
    assert err.value.reason == "image_too_large"


def test_huge_dimensions_are_refused_before_decoding():
    # A 1-bit 30000x30000 PNG is ~100 kB on disk but 900M pixels: refused from its header alone.
    big = png((30000, 30000), mode="1")
    with pytest.raises(ImageRejected) as err:
        decode_image(big, max_bytes=10**7, max_pixels=40_000_000)
    assert err.value.reason == "image_too_many_pixels"
