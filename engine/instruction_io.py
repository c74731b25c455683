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


def _decode_base64(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def normalise_instructions(table: pa.Table) -> pa.Table:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"instruction input lacks column(s) {missing}; it has {table.column_names}")
    columns = {}
    for field in INSTRUCTION_SCHEMA:
        if field.name not in table.column_names:
            columns[field.name] = pa.nulls(table.num_rows, field.type)
        elif field.name == "image" and not pa.types.is_binary(table["image"].type):
            columns["image"] = pa.array([_decode_base64(v) for v in table["image"].to_pylist()], pa.binary())
        elif field.name == "id":
            # A missing id becomes "" (validation diverts it) rather than the string "None".
            columns["id"] = pa.array(["" if v is None else str(v) for v in table["id"].to_pylist()], pa.string())
        else:
            columns[field.name] = table[field.name].cast(field.type)
    return pa.table(columns, schema=INSTRUCTION_SCHEMA)


def write_instructions(table: pa.Table, url: str) -> None:
    """Parquet for *.parquet, JSONL (base64 images) for *.jsonl; written atomically."""
    table = normalise_instructions(table)
    if url.endswith(".parquet"):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
    elif url.endswith(".jsonl"):
        lines = []
        for row in table.to_pylist():
            if row["image"] is not None:
                row["image"] = base64.b64encode(row["image"]).decode()
            lines.append(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        data = "".join(lines).encode()
    else:
        raise ValueError(f"cannot tell the format of {url!r}: name it .parquet or .jsonl")
    write_bytes_atomic(url, data)


def read_instructions(url: str) -> pa.Table:
    """A whole instruction file as one table (small inputs, tests, evaluation sets)."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        if url.endswith(".parquet"):
            table = pq.read_table(f)
        elif url.endswith((".jsonl", ".json")):
            table = pa.Table.from_pylist([json.loads(line) for line in f.read().decode().splitlines() if line.strip()])
        else:
            raise ValueError(f"cannot tell the format of {url!r}: name it .parquet or .jsonl")
    return normalise_instructions(table)


def load_image_bytes(uri: str) -> bytes:
    """Image bytes behind a URI; OSError (FileNotFoundError for a missing file) names the URI."""
    try:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            return f.read()
    except OSError:
        raise
    except Exception as exc:  # unknown protocol, missing backend, credentials
        raise OSError(f"cannot read {uri}: {type(exc).__name__}: {exc}") from None
