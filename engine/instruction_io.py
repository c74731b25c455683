"""Instruction datasets through fsspec: local paths, memory://, s3://, gs://, ...

Parquet carries image bytes as binary; JSONL carries them base64-encoded in an "image" string
(or an "image_uri" to load from). `normalise_instructions` turns either into
INSTRUCTION_SCHEMA; a row it cannot fully read keeps flowing with a null image, so validation
diverts it with a reason instead of the whole job failing.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from engine.schemas import INSTRUCTION_SCHEMA
from engine.storage import filesystem, write_bytes_atomic

REQUIRED_COLUMNS = ("id", "prompt")
FORMATS = ("parquet", "jsonl")
_SUFFIXES = ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"))


def instruction_format(url: str, declared: str = "auto") -> str:
    """"parquet" or "jsonl": the declared format, else the one the name ends with."""
    if declared in FORMATS:
        return declared
    if declared != "auto":
        raise ValueError(f"unknown instruction format {declared!r}; known: auto, {', '.join(FORMATS)}")
    for suffix, fmt in _SUFFIXES:
        if url.rstrip("/").endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of {url!r}: name it .parquet or .jsonl, or declare the format")


def _decode_base64(value) -> bytes | None:
    """Bytes pass through; a string that is not base64 becomes None (validation diverts the row)."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError, TypeError, AttributeError):
        return None


def _column(table: pa.Table, field: pa.Field) -> pa.Array | pa.ChunkedArray:
    if field.name not in table.column_names:
        return pa.nulls(table.num_rows, field.type)
    values = table[field.name]
    if field.name == "image" and not pa.types.is_binary(values.type):
        return pa.array([_decode_base64(v) for v in values.to_pylist()], pa.binary())
    if field.name == "id":
        # A null id becomes "" (validation diverts it) rather than the string "None".
        return pa.array(["" if v is None else str(v) for v in values.to_pylist()], pa.string())
    try:
        return values.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"instruction column {field.name!r} has type {values.type}, "
                         f"which does not convert to {field.type}: {exc}") from None


def normalise_instructions(table: pa.Table) -> pa.Table:
    """Any batch read from Parquet or JSONL -> INSTRUCTION_SCHEMA (extra columns dropped).

    Raises ValueError only for what no row could survive: a missing id or prompt column, or a
    column of an unconvertible type. Bad values in a row are left for validation to divert.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"instruction input lacks column(s) {missing}; it has {table.column_names}")
    return pa.table({f.name: _column(table, f) for f in INSTRUCTION_SCHEMA}, schema=INSTRUCTION_SCHEMA)


def _jsonl_bytes(table: pa.Table) -> bytes:
    lines = []
    for row in table.to_pylist():
        if row["image"] is not None:
            row["image"] = base64.b64encode(row["image"]).decode()
        lines.append(json.dumps(row) + "\n")
    return "".join(lines).encode()


def write_instructions(table: pa.Table, url: str) -> None:
    """Parquet for *.parquet, JSONL (base64 images) for *.jsonl; written atomically.

    JSONL lines carry every column, nulls included, so a reader that takes its columns from
    the first line still sees them all.
    """
    fmt = instruction_format(url)
    table = normalise_instructions(table)
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
    else:
        data = _jsonl_bytes(table)
    write_bytes_atomic(url, data)


def _read_jsonl(data: bytes, url: str) -> pa.Table:
    rows = []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{url} line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{url} line {number} is not a JSON object")
        rows.append(row)
    # Columns are the union over all lines: a key absent from a line reads as null there.
    names = list(dict.fromkeys(name for row in rows for name in row))
    try:
        return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"{url}: a column mixes value types: {exc}") from None


def read_instruction_table(url: str, format: str = "auto") -> pa.Table:
    """A whole instruction file as one table (small inputs, tests, evaluation sets)."""
    fmt = instruction_format(url, format)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f) if fmt == "parquet" else _read_jsonl(f.read(), url)
    return normalise_instructions(table)


def load_image_bytes(uri: str) -> bytes:
    """Image bytes behind a URI; FileNotFoundError or OSError whose message names the URI."""
    try:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {uri}") from None
    except Exception as exc:  # permissions, unknown protocol, missing backend, credentials
        raise OSError(f"cannot read image {uri}: {type(exc).__name__}: {exc}") from None
