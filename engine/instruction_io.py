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
from engine.storage import filesystem, redact_uri, write_bytes_atomic

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
    table = normalise_instructions(table).drop_columns(["read_error"])  # the reader's state, not data
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
    else:
        data = _jsonl_bytes(table)
    write_bytes_atomic(url, data)


# A JSONL line's fields and the JSON types each may hold (the image as base64 text).
_JSONL_FIELDS = {"id": (str, int), "prompt": (str,), "image": (str,), "image_uri": (str,), "objects": (list,),
                "references": (list,)}
_JSONL_ROW_SCHEMA = pa.schema([pa.field("image", pa.string()) if f.name == "image" else f for f in INSTRUCTION_SCHEMA])


def parse_jsonl(data: bytes, url: str) -> pa.Table:
    """Every non-blank line of a JSONL file as one instruction row. A line that cannot be read
    (not UTF-8, not JSON, not an object, a field of the wrong type) becomes a row whose
    `read_error` names the file and line, so validation diverts it and the other lines go on."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    rows = [_jsonl_row(line, f"{url} line {number}", f"{name}:{number}")
            for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    return normalise_instructions(pa.Table.from_pylist(rows, schema=_JSONL_ROW_SCHEMA))


def _jsonl_row(line: bytes, where: str, fallback_id: str) -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return {"id": fallback_id, "read_error": f"{where} is not UTF-8 text"}
    except json.JSONDecodeError as exc:
        return {"id": fallback_id, "read_error": f"{where} is not JSON: {exc}"}
    if not isinstance(row, dict):
        return {"id": fallback_id, "read_error": f"{where} is not a JSON object"}
    out = {field: row.get(field) for field in _JSONL_FIELDS}
    if out["id"] is None:
        out["id"] = ""  # validation diverts it as missing_id
    elif isinstance(out["id"], int) and not isinstance(out["id"], bool):
        out["id"] = str(out["id"])
    problem = _field_problem(out)
    if problem:
        readable_id = out["id"] if isinstance(out["id"], str) and _is_utf8(out["id"]) else fallback_id
        return {"id": readable_id or fallback_id, "read_error": f"{where}: {problem}"}
    return out


def _field_problem(row: dict) -> str | None:
    for field, types in _JSONL_FIELDS.items():
        value = row[field]
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return f"field {field!r} is {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}"
        texts = value if isinstance(value, list) else [value]
        if not all(isinstance(text, str) for text in texts):
            return f"field {field!r} must be a list of strings"
        if not all(_is_utf8(text) for text in texts):
            return f"field {field!r} holds text that is not valid Unicode (a lone surrogate)"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_instruction_table(url: str, format: str = "auto") -> pa.Table:
    """A whole instruction file as one table (small inputs, tests, evaluation sets)."""
    fmt = instruction_format(url, format)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return normalise_instructions(pq.read_table(f)) if fmt == "parquet" else parse_jsonl(f.read(), url)


def load_image_bytes(uri: str) -> bytes:
    """Image bytes behind a URI; FileNotFoundError or OSError whose message names the URI with
    any credentials removed (messages end up in rejects/ and logs)."""
    shown = redact_uri(uri)
    try:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {shown}") from None
    except Exception as exc:  # permissions, unknown protocol, missing backend, credentials
        detail = str(exc).replace(uri, shown)
        raise OSError(f"cannot read image {shown}: {type(exc).__name__}: {detail}") from None
