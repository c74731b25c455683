"""Validation diverts each bad kind with its reason and leaves good rows intact and in order."""

import io

import pyarrow as pa
import pytest
from PIL import Image

from engine.config import ValidateConfig
from engine.flight import FLIGHT_SCHEMA
from engine.schemas import INSTRUCTION_SCHEMA
from engine.stages.base import RunContext
from engine.stages.validate import validate_batch

CFG = ValidateConfig(max_prompt_chars=100, max_image_pixels=1000, max_image_bytes=4000)
CONTEXT = RunContext(run_name="test", seed=0, iteration=1, cache_dir="unused")


def png(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def mixed_batch(tmp_path):
    """One row of every kind, good rows first, in the middle and last; and the reasons expected."""
    good = png()
    (tmp_path / "ok.png").write_bytes(good)
    rows_and_reasons = [
        ({"id": "g1", "prompt": "Describe.", "image": good, "objects": ["blue square"]}, None),
        ({"id": "", "prompt": "Describe.", "image": good}, "missing_id"),
        ({"id": "b1", "prompt": "  \n", "image": good}, "empty_prompt"),
        ({"id": "b2", "prompt": None, "image": good}, "empty_prompt"),
        ({"id": "b3", "prompt": "x" * 101, "image": good}, "prompt_too_long"),
        ({"id": "g2", "prompt": "x" * 100, "image": good}, None),  # at the limit: fine
        ({"id": "b4", "prompt": "Describe.", "image": b"garbage"}, "undecodable_image"),
        ({"id": "b5", "prompt": "Describe.", "image": good[: len(good) // 2]}, "truncated_image"),
        ({"id": "b6", "prompt": "Describe.", "image_uri": str(tmp_path / "missing.png")}, "missing_image"),
        ({"id": "b7", "prompt": "Describe.", "image_uri": "nosuchprotocol://bucket/x.png"}, "missing_image"),
        ({"id": "b8", "prompt": "Describe.", "image": png((50, 50))}, "image_too_many_pixels"),  # 2500 > 1000
        ({"id": "b9", "prompt": "Describe.", "image": b"x" * 4001}, "image_too_large"),
        ({"id": "b10", "prompt": "Describe."}, "missing_image"),  # neither bytes nor URI
        ({"id": "g3", "prompt": "Describe.", "image_uri": str(tmp_path / "ok.png")}, None),
    ]
    rows = [row for row, _ in rows_and_reasons]
    return pa.Table.from_pylist(rows, schema=INSTRUCTION_SCHEMA), [reason for _, reason in rows_and_reasons], good


def test_mixed_batch(mixed_batch):
    table, expected, good = mixed_batch
    out_table = validate_batch(table, CFG)
    assert out_table.schema == FLIGHT_SCHEMA
    out = out_table.to_pylist()
    assert [r["id"] for r in out] == table["id"].to_pylist()  # every row, in order
    assert [r["reject_reason"] for r in out] == expected
    for row in out:
        if row["reject_reason"]:
            assert row["reject_stage"] == "validate" and row["reject_detail"]
        else:
            assert row["reject_stage"] is None and row["reject_detail"] is None
    assert "missing.png" in out[8]["reject_detail"] and "nosuchprotocol://bucket/x.png" in out[9]["reject_detail"]
    # Good rows: input columns unchanged, bytes as given (or as read from the URI), never re-encoded.
    inputs = table.to_pylist()
    for index in (0, 5):
        assert {k: out[index][k] for k in INSTRUCTION_SCHEMA.names} == inputs[index]
    assert out[0]["image"] == good and out[-1]["image"] == good
    assert out[-1]["image_uri"] == inputs[-1]["image_uri"]


def test_counting_validation_gives_the_same_rows(mixed_batch):
    table, expected, _ = mixed_batch
    out = validate_batch(table, CFG, CONTEXT)
    assert out.equals(validate_batch(table, CFG))
    assert out["reject_reason"].to_pylist() == expected


def test_empty_batch():
    empty = INSTRUCTION_SCHEMA.empty_table()
    assert validate_batch(empty, CFG, CONTEXT).num_rows == 0


@pytest.mark.parametrize("placeholder", ["<image>", "<|image_pad|>", "<fake_token_around_image>", "<global-img>"])
def test_a_prompt_holding_a_family_image_token_is_diverted(placeholder):
    from engine.flight import to_rows

    table = pa.Table.from_pylist([{"id": "p", "prompt": f"What is {placeholder} here?", "image": png()}],
                                 schema=INSTRUCTION_SCHEMA)
    (row,) = to_rows(validate_batch(table, cfg=CFG, context=CONTEXT))
    assert row["reject_reason"] == "image_placeholder" and placeholder in row["reject_detail"]
