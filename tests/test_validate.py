"""Validation diverts each bad kind with its reason and leaves good rows intact and in order."""

import io

import pyarrow as pa
from PIL import Image

from engine.config import ValidateConfig
from engine.schemas import INSTRUCTION_SCHEMA
from engine.stages.validate import validate_batch


def png(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_batch(tmp_path):
    good = png()
    (tmp_path / "ok.png").write_bytes(good)
    rows = [
        {"id": "g1", "prompt": "Describe.", "image": good},
        {"id": "", "prompt": "Describe.", "image": good},
        {"id": "b1", "prompt": "  ", "image": good},
        {"id": "b2", "prompt": "x" * 101, "image": good},
        {"id": "b3", "prompt": "Describe.", "image": b"garbage"},
        {"id": "b4", "prompt": "Describe.", "image": good[: len(good) // 2]},
        {"id": "b5", "prompt": "Describe.", "image_uri": str(tmp_path / "missing.png")},
        {"id": "b6", "prompt": "Describe.", "image": png((50, 50))},
        {"id": "b7", "prompt": "Describe.", "image": b"x" * 5000},
        {"id": "b8", "prompt": "Describe."},
        {"id": "g2", "prompt": "Describe.", "image_uri": str(tmp_path / "ok.png")},
    ]
    cfg = ValidateConfig(max_prompt_chars=100, max_image_pixels=1000, max_image_bytes=4000)
    out = validate_batch(pa.Table.from_pylist(rows, schema=INSTRUCTION_SCHEMA), cfg).to_pylist()
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    reasons = [r["reject_reason"] for r in out]
    assert reasons == [None, "missing_id", "empty_prompt", "prompt_too_long", "undecodable_image", "truncated_image",
                       "missing_image", "image_too_many_pixels", "image_too_large", "missing_image", None]
    assert all(r["reject_stage"] == "validate" and r["reject_detail"] for r in out if r["reject_reason"])
    assert "missing.png" in out[6]["reject_detail"]
    assert out[0]["image"] == good and out[-1]["image"] == good  # loaded from its URI, bytes unchanged
