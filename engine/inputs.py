"""The instruction input of a pass: checked before anything heavy starts, then read as a
streamed Ray Dataset of INSTRUCTION_SCHEMA rows."""

from __future__ import annotations

import pyarrow as pa

from engine.config import InputConfig
from engine.errors import InputError
from engine.instruction_io import instruction_format, normalise_instructions, parse_jsonl
from engine.schemas import INSTRUCTION_SCHEMA
from engine.storage import exists, filesystem


def check_input(path: str, declared_format: str = "auto") -> None:
    """Fail fast, before any model loads, on an input that is not there, not reachable, or
    of no known format."""
    try:
        instruction_format(path, declared_format)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        found = exists(path)
    except Exception as exc:  # unknown protocol, missing fsspec backend, no credentials, DNS...
        raise InputError(f"input {path!r} is not reachable: {type(exc).__name__}: {exc}") from None
    if not found:
        raise InputError(f"input {path!r} does not exist")


def count_instructions(input_cfg: InputConfig) -> int:
    """How many rows a pass over the input will read (for progress): Parquet from its footers,
    JSONL by counting non-blank lines, without decoding any row."""
    import pyarrow.parquet as pq

    fs, path = filesystem(input_cfg.path)
    files = ([name for name in fs.find(path) if not name.rsplit("/", 1)[-1].startswith((".", "_"))]
             if fs.isdir(path) else [path])
    total = 0
    for name in files:
        with fs.open(name, "rb") as f:
            if instruction_format(input_cfg.path, input_cfg.format) == "parquet":
                total += pq.ParquetFile(f).metadata.num_rows
            else:
                total += sum(1 for line in f if line.strip())
    return min(total, input_cfg.limit) if input_cfg.limit else total


def read_instruction_dataset(input_cfg: InputConfig):
    """The lazy Ray Dataset of the input's rows, normalised to INSTRUCTION_SCHEMA."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    check_input(input_cfg.path, input_cfg.format)
    fs, path = filesystem(input_cfg.path)
    arrow_fs = PyFileSystem(FSSpecHandler(fs))
    if instruction_format(input_cfg.path, input_cfg.format) == "parquet":
        ds = ray.data.read_parquet(path, filesystem=arrow_fs).map_batches(normalise_instructions,
                                                                          batch_format="pyarrow")
    else:
        # The project's own line reader, not read_json: a bad line becomes one diverted row
        # that names its file and line, instead of failing the whole read.
        ds = ray.data.read_binary_files(path, filesystem=arrow_fs, include_paths=True)
        ds = ds.map_batches(_parse_jsonl_files, batch_size=1, batch_format="pyarrow")
    return ds.limit(input_cfg.limit) if input_cfg.limit else ds


def _parse_jsonl_files(batch: pa.Table) -> pa.Table:
    tables = [parse_jsonl(data, path) for data, path in zip(batch["bytes"].to_pylist(), batch["path"].to_pylist())]
    return pa.concat_tables(tables) if tables else INSTRUCTION_SCHEMA.empty_table()
