"""Instruction and correction datasets through fsspec: local paths, memory://, s3://, gs://, ...

Parquet carries image bytes as binary (or as a Hugging Face datasets Image struct, whose bytes
are taken); JSONL carries them base64-encoded in an "image" string (or an "image_uri" to load
from). `normalise_rows` turns either into the kind's schema (INSTRUCTION_SCHEMA,
CORRECTION_SCHEMA); a row it cannot fully read keeps flowing with a null image or a
`read_error`, so it is diverted with a reason instead of the whole job failing.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.schemas import CORRECTION_SCHEMA, INSTRUCTION_SCHEMA, SFT_SCHEMA
from engine.storage import filesystem, redact_uri, write_bytes_atomic

FORMATS = ("parquet", "jsonl")
_SUFFIXES = ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"))


@dataclass(frozen=True)
class RowKind:
    """One kind of input row: its schema, the columns no row can do without, and the JSON types
    each JSONL field may hold (the image as base64 text)."""

    name: str
    schema: pa.Schema
    required: tuple[str, ...]
    jsonl_types: dict[str, tuple[type, ...]]

    @property
    def jsonl_schema(self) -> pa.Schema:
        return pa.schema([pa.field("image", pa.string()) if f.name == "image" else f for f in self.schema])


_COMMON_TYPES = {"id": (str, int), "image": (str,), "image_uri": (str,)}
INSTRUCTIONS = RowKind("instruction", INSTRUCTION_SCHEMA, ("id", "prompt"),
                       {**_COMMON_TYPES, "prompt": (str,), "objects": (list,), "references": (list,)})
CORRECTIONS = RowKind("correction", CORRECTION_SCHEMA, ("question", "chosen", "rejected"),
                      {**_COMMON_TYPES, "question": (str,), "rejected": (str,), "chosen": (str,), "edits": (list,)})
SFT_EXAMPLES = RowKind("sft example", SFT_SCHEMA, ("question", "answer"),
                       {**_COMMON_TYPES, "question": (str,), "answer": (str,)})
# JSONL list fields whose items are not strings: checked by converting the row to the schema.
_STRUCT_LISTS = ("edits",)


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


def _column(table: pa.Table, field: pa.Field, kind: RowKind, source: str) -> pa.Array | pa.ChunkedArray:
    if source not in table.column_names:
        return pa.nulls(table.num_rows, field.type)
    values = table[source]
    if field.name == "image" and pa.types.is_struct(values.type) and values.type.get_field_index("bytes") >= 0:
        values = pc.struct_field(values, "bytes")  # null where the struct is null
    if field.name == "image" and not pa.types.is_binary(values.type):
        return pa.array([_decode_base64(v) for v in values.to_pylist()], pa.binary())
    if field.name == "id":
        # A null id becomes "" (validation diverts it) rather than the string "None".
        return pa.array(["" if v is None else str(v) for v in values.to_pylist()], pa.string())
    try:
        return values.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{kind.name} column {field.name!r} has type {values.type}, "
                         f"which does not convert to {field.type}: {exc}") from None


def normalise_rows(table: pa.Table, kind: RowKind, columns: dict[str, str] | None = None) -> pa.Table:
    """Any batch read from Parquet or JSONL -> the kind's schema (extra columns dropped), each
    field read from the column `columns` names for it, else from its own name.

    Raises ValueError only for what no row could survive: a missing required column, or a
    column of an unconvertible type. Bad values in a row are left for validation to divert.
    """
    columns = columns or {}
    missing = [columns.get(c, c) for c in kind.required if columns.get(c, c) not in table.column_names]
    if missing:
        raise ValueError(f"{kind.name} input lacks column(s) {missing}; it has {table.column_names}")
    return pa.table({f.name: _column(table, f, kind, columns.get(f.name, f.name)) for f in kind.schema},
                    schema=kind.schema)


def normalise_instructions(table: pa.Table) -> pa.Table:
    return normalise_rows(table, INSTRUCTIONS)


def _jsonl_bytes(table: pa.Table) -> bytes:
    lines = []
    for row in table.to_pylist():
        if row["image"] is not None:
            row["image"] = base64.b64encode(row["image"]).decode()
        lines.append(json.dumps(row) + "\n")
    return "".join(lines).encode()


def write_rows(table: pa.Table, url: str, kind: RowKind = INSTRUCTIONS) -> None:
    """Parquet for *.parquet, JSONL (base64 images) for *.jsonl; written atomically.

    JSONL lines carry every column, nulls included, so a reader that takes its columns from
    the first line still sees them all.
    """
    fmt = instruction_format(url)
    table = normalise_rows(table, kind).drop_columns(["read_error"])  # the reader's state, not data
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
    else:
        data = _jsonl_bytes(table)
    write_bytes_atomic(url, data)


def rejects_beside(url: str) -> str:
    """Where the rows diverted while making the file at `url` go: <url without suffix>.rejects.parquet."""
    return url.rsplit(".", 1)[0] + ".rejects.parquet"


def write_instructions(table: pa.Table, url: str) -> None:
    write_rows(table, url, INSTRUCTIONS)


def parse_jsonl(data: bytes, url: str, kind: RowKind = INSTRUCTIONS, columns: dict[str, str] | None = None) -> pa.Table:
    """Every non-blank line of a JSONL file as one row. A line that cannot be read (not UTF-8,
    not JSON, not an object, a field of the wrong type) becomes a row whose `read_error` names
    the file and line, so validation diverts it and the other lines go on. `columns` as in
    normalise_rows."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    rows = [_jsonl_row(line, f"{url} line {number}", f"{name}:{number}", kind, columns or {})
            for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    return normalise_rows(pa.Table.from_pylist(rows, schema=kind.jsonl_schema), kind)


def _jsonl_row(line: bytes, where: str, fallback_id: str, kind: RowKind, columns: dict[str, str]) -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return {"id": fallback_id, "read_error": f"{where} is not UTF-8 text"}
    except json.JSONDecodeError as exc:
        return {"id": fallback_id, "read_error": f"{where} is not JSON: {exc}"}
    if not isinstance(row, dict):
        return {"id": fallback_id, "read_error": f"{where} is not a JSON object"}
    out = {field: row.get(columns.get(field, field)) for field in kind.jsonl_types}
    if out["id"] is None:
        out["id"] = ""  # an instruction's validation diverts it as missing_id; a correction is numbered
    elif isinstance(out["id"], int) and not isinstance(out["id"], bool):
        out["id"] = str(out["id"])
    problem = _field_problem(out, kind)
    if problem:
        readable_id = out["id"] if isinstance(out["id"], str) and _is_utf8(out["id"]) else fallback_id
        return {"id": readable_id or fallback_id, "read_error": f"{where}: {problem}"}
    return out


def _field_problem(row: dict, kind: RowKind) -> str | None:
    for field, types in kind.jsonl_types.items():
        value = row[field]
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return f"field {field!r} is {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}"
        if field in _STRUCT_LISTS:
            try:
                pa.array([value], kind.schema.field(field).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, KeyError) as exc:
                return f"field {field!r} does not fit {kind.schema.field(field).type}: {exc}"
            continue
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


def read_rows(url: str, kind: RowKind, format: str = "auto", columns: dict[str, str] | None = None) -> pa.Table:
    """A whole file of the kind's rows as one table (small inputs, tests, evaluation sets, correction
    files); `columns` as in normalise_rows."""
    fmt = instruction_format(url, format)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            return normalise_rows(pq.read_table(f), kind, columns)
        return parse_jsonl(f.read(), url, kind, columns)


def read_instruction_table(url: str, format: str = "auto") -> pa.Table:
    return read_rows(url, INSTRUCTIONS, format)


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
