import base64
import json

import pyarrow as pa
import pytest

from engine.instruction_io import load_image_bytes, normalise_instructions, read_instructions, write_instructions
from engine.scenes import make_instructions


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_round_trip_local_and_memory(tmp_path, suffix):
    table = make_instructions(4, seed=0)
    for url in (str(tmp_path / f"x{suffix}"), f"memory://io-test/x{suffix}"):
        write_instructions(table, url)
        assert read_instructions(url).equals(table)


def test_bad_base64_keeps_the_row_with_a_null_image():
    table = pa.Table.from_pylist([{"id": "a", "prompt": "p", "image": "%%%not base64"},
                                  {"id": "b", "prompt": "q", "image": base64.b64encode(b"ok").decode()}])
    out = normalise_instructions(table)
    assert out["image"].to_pylist() == [None, b"ok"] and out["id"].to_pylist() == ["a", "b"]
    assert out["objects"].null_count == 2


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="prompt"):
        normalise_instructions(pa.Table.from_pylist([{"id": "a", "image": "x"}]))


def test_null_id_becomes_empty_for_validation_to_divert(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": None, "prompt": "p"}) + "\n")
    assert read_instructions(str(path))["id"].to_pylist() == [""]


def test_load_image_bytes_names_the_uri(tmp_path):
    (tmp_path / "a.png").write_bytes(b"123")
    assert load_image_bytes(str(tmp_path / "a.png")) == b"123"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image_bytes(str(tmp_path / "nope.png"))
    with pytest.raises(OSError, match="cannot read"):
        load_image_bytes("nosuchproto://x/y.png")
