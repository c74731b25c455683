"""Instruction files through fsspec, and coercion of whatever a reader produced."""

from __future__ import annotations

import base64
import json

import fsspec
import pyarrow as pa
import pytest

from engine.instruction_io import (instruction_format, load_image_bytes, normalise_instructions,
                                   read_instruction_table, write_instructions)
from engine.scenes import make_instructions
from engine.schemas import INSTRUCTION_SCHEMA


def mixed_table() -> pa.Table:
    """Scene rows plus a row that points at its image instead of carrying it."""
    rows = make_instructions(3, seed=0).to_pylist()
    rows.append({"id": "by-uri", "prompt": "p", "image": None, "image_uri": "memory://imgs/a.png", "objects": None,
                 "references": None})
    return pa.Table.from_pylist(rows, schema=INSTRUCTION_SCHEMA)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_round_trip_local_and_memory(tmp_path, suffix):
    table = mixed_table()
    for url in (str(tmp_path / "new" / "dir" / f"x{suffix}"), f"memory://io-test{suffix}/x{suffix}"):
        write_instructions(table, url)
        assert read_instruction_table(url).equals(table)
        fs, path = fsspec.core.url_to_fs(url)
        assert fs.ls(path.rsplit("/", 1)[0], detail=False) == [path]  # no temp file left behind


def test_jsonl_carries_base64_images_and_every_column(tmp_path):
    table = mixed_table()
    write_instructions(table, str(tmp_path / "x.jsonl"))
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert base64.b64decode(lines[0]["image"]) == table["image"][0].as_py()
    assert lines[-1] == {"id": "by-uri", "prompt": "p", "image": None, "image_uri": "memory://imgs/a.png",
                         "objects": None, "references": None}
    assert lines[0]["references"] == table["references"][0].as_py() and len(lines[0]["references"]) == 1


def test_jsonl_columns_are_the_union_over_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt": "q", "image_uri": "u", "extra": 1}\n')
    table = read_instruction_table(str(path))
    assert table["image_uri"].to_pylist() == [None, "u"] and table.column_names == INSTRUCTION_SCHEMA.names


def test_declared_format_overrides_the_name(tmp_path):
    write_instructions(make_instructions(2, seed=0), str(tmp_path / "x.jsonl"))
    (tmp_path / "x.jsonl").rename(tmp_path / "x.data")
    assert read_instruction_table(str(tmp_path / "x.data"), format="jsonl").num_rows == 2
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_instruction_table(str(tmp_path / "x.data"))
    with pytest.raises(ValueError, match="csv"):
        instruction_format("x.csv", "csv")


def test_bad_base64_keeps_the_row_with_a_null_image():
    table = pa.Table.from_pylist([{"id": "a", "prompt": "p", "image": "%%%not base64"},
                                  {"id": "b", "prompt": "q", "image": base64.b64encode(b"ok").decode()},
                                  {"id": "c", "prompt": "r", "image": "bm9u-ASCII\u00e9"}])
    out = normalise_instructions(table)
    assert out["image"].to_pylist() == [None, b"ok", None] and out["id"].to_pylist() == ["a", "b", "c"]
    assert out["objects"].null_count == 3 and out.schema == INSTRUCTION_SCHEMA


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="prompt"):
        normalise_instructions(pa.Table.from_pylist([{"id": "a", "image": "x"}]))
    with pytest.raises(ValueError, match="id"):
        normalise_instructions(pa.Table.from_pylist([{"prompt": "a"}]))


def test_unconvertible_column_type_is_named():
    with pytest.raises(ValueError, match="objects"):
        normalise_instructions(pa.Table.from_pylist([{"id": "a", "prompt": "p", "objects": {"x": 1}}]))


def test_null_id_becomes_empty_for_validation_to_divert(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": None, "prompt": "p"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    assert read_instruction_table(str(path))["id"].to_pylist() == ["", ""]


def test_load_image_bytes_names_the_uri(tmp_path):
    (tmp_path / "a.png").write_bytes(b"123")
    assert load_image_bytes(str(tmp_path / "a.png")) == b"123"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image_bytes(str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match="memory://nowhere/nope.png"):
        load_image_bytes("memory://nowhere/nope.png")
    with pytest.raises(OSError, match="nosuchproto://x/y.png"):
        load_image_bytes("nosuchproto://x/y.png")


def test_every_unreadable_jsonl_line_is_one_row_with_its_error(tmp_path):
    good = b'{"id": "ok", "prompt": "Describe."}'
    lines = [good, b'{"id": "cut", "prompt": "Descr', b'\xff\xfe not utf-8', b'[1, 2]',
             b'{"id": "num", "prompt": 7}', b'{"id": 8, "prompt": "p", "objects": "cat"}',
             b'{"id": "sur", "prompt": "\\ud800"}', b'', b'{"id": 9, "prompt": "int ids are read as text"}',
             b'{"id": "ref", "prompt": "p", "references": [1]}']
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = read_instruction_table(str(path)).to_pylist()
    assert [(row["id"], row["read_error"] is None) for row in rows] == [
        ("ok", True), ("mixed.jsonl:2", False), ("mixed.jsonl:3", False), ("mixed.jsonl:4", False),
        ("num", False), ("8", False), ("sur", False), ("9", True), ("ref", False)]
    errors = [row["read_error"] for row in rows if row["read_error"]]
    assert all(f"{path} line " in error for error in errors)
    assert "line 2 is not JSON" in errors[0] and "line 3 is not UTF-8" in errors[1]
    assert "line 4 is not a JSON object" in errors[2] and "'prompt' is int" in errors[3]
    assert "'objects' is str" in errors[4] and "lone surrogate" in errors[5]
    assert "'references' must be a list of strings" in errors[6]


def test_a_binary_file_named_jsonl_gives_diverted_rows_not_a_crash(tmp_path):
    path = tmp_path / "image.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    rows = read_instruction_table(str(path)).to_pylist()
    assert rows and all(row["read_error"] for row in rows)


@pytest.mark.parametrize("uri, shown", [
    ("s3://key:secret@bucket/a.png", "s3://<redacted>@bucket/a.png"),
    ("https://host/a.png?X-Amz-Signature=abc", "https://host/a.png?<redacted>"),
    ("/local/a.png", "/local/a.png"),
])
def test_image_errors_name_the_uri_without_credentials(uri, shown):
    with pytest.raises(OSError) as info:
        load_image_bytes(uri)
    assert shown in str(info.value) and "secret" not in str(info.value) and "abc" not in str(info.value)


def test_a_hugging_face_image_struct_gives_its_bytes():
    images = pa.array([{"bytes": b"png", "path": "a.png"}, None],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    out = normalise_instructions(pa.table({"id": ["a", "b"], "prompt": ["p", "q"], "image": images}))
    assert out["image"].to_pylist() == [b"png", None]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_rows_with_ids_reads_only_the_row_groups_and_lines_it_needs(tmp_path, monkeypatch, suffix):
    import pyarrow.parquet as pq

    from engine.config import InputConfig
    from engine.inputs import rows_with_ids

    table = make_instructions(6, seed=0)
    url = str(tmp_path / f"in{suffix}")
    if suffix == ".parquet":
        pq.write_table(table, url, row_group_size=2)
    else:
        write_instructions(table, url)
    whole_groups = []
    read_row_group = pq.ParquetFile.read_row_group

    def spy(self, group, columns=None, **kwargs):
        if columns is None:
            whole_groups.append(group)
        return read_row_group(self, group, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    wanted = {table["id"][3].as_py(), table["id"][2].as_py()}
    found = pa.concat_tables(rows_with_ids(InputConfig(path=url), wanted))
    assert found.schema == INSTRUCTION_SCHEMA and set(found["id"].to_pylist()) == wanted
    assert found["image"].to_pylist() == table["image"].to_pylist()[2:4]
    assert whole_groups == ([1] if suffix == ".parquet" else [])
