import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from engine.images import REASONS, ImageRejected, decode_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 10_000}


def png(size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(size=(60, 60)) -> bytes:
    """A PNG whose pixel data does not compress away, so cutting it loses pixels."""
    image = Image.frombytes("L", size, bytes((i * 97 + i // 7) % 256 for i in range(size[0] * size[1])))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grey PNG that claims width x height but holds (almost) no pixel data: a few
    dozen bytes. Decoding its pixels would fail as truncated, so a rejection for its size
    proves the size was checked before any decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_valid_png_decodes_to_rgb():
    image = decode_image(png(mode="L"), **LIMITS)
    assert image.mode == "RGB" and image.size == (20, 10)
    assert decode_image(png(), **LIMITS).getpixel((0, 0)) == (255, 0, 0)


def test_an_rgb_image_keeps_its_decoded_pixels_uncopied():
    data = noisy_png()
    image = decode_image(data, **LIMITS)
    assert image.mode == "RGB" and image.tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()


@pytest.mark.parametrize(
    "data, reason",
    [
        (None, "missing_image"),
        (b"", "missing_image"),
        (b"\x00not an image at all" * 10, "undecodable_image"),
        (noisy_png()[: len(noisy_png()) // 2], "truncated_image"),  # a valid PNG cut in half
        (noisy_png()[:60], "truncated_image"),                       # header only, no pixels
        (png((200, 100)), "image_too_many_pixels"),                  # 20,000 pixels > 10,000
    ],
    ids=["none", "empty", "random-bytes", "half-png", "png-header", "too-many-pixels"],
)
def test_bad_images_are_rejected_with_their_reason(data, reason):
    with pytest.raises(ImageRejected) as err:
        decode_image(data, **LIMITS)
    assert err.value.reason == reason and err.value.detail


def test_too_many_bytes():
    data = png()
    with pytest.raises(ImageRejected) as err:
        decode_image(data, max_bytes=len(data) - 1, max_pixels=10_000)
    assert err.value.reason == "image_too_large"
    assert decode_image(data, max_bytes=len(data), max_pixels=10_000).size == (20, 10)  # the limit is inclusive


def test_pixel_limit_is_checked_before_decoding():
    # 5000 x 5000 = 25M pixels from a ~60-byte file: refused from its header alone.
    with pytest.raises(ImageRejected) as err:
        decode_image(png_header_only(5000, 5000), max_bytes=10**6, max_pixels=24_999_999)
    assert err.value.reason == "image_too_many_pixels" and "5000x5000" in err.value.detail
    # At the limit (inclusive) the same file gets as far as decoding, and is found truncated.
    with pytest.raises(ImageRejected) as err:
        decode_image(png_header_only(5000, 5000), max_bytes=10**6, max_pixels=25_000_000)
    assert err.value.reason == "truncated_image"


def test_decompression_bomb_is_refused_without_a_warning_escaping():
    # 30000 x 30000 = 900M pixels is over PIL's own hard limit, whatever max_pixels says.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageRejected) as err:
            decode_image(png_header_only(30000, 30000), max_bytes=10**6, max_pixels=10**12)
    assert err.value.reason == "image_too_many_pixels"


def test_reasons_are_a_fixed_set():
    with pytest.raises(ValueError):
        ImageRejected("blurry", "not a known reason")
    assert REASONS == ("missing_image", "image_too_large", "image_too_many_pixels", "undecodable_image",
                       "truncated_image")
