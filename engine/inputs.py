"""The instruction input of a pass: checked before anything heavy starts, then read as a
streamed Ray Dataset of INSTRUCTION_SCHEMA rows."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterator

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

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


def input_files(input_cfg: InputConfig) -> tuple[object, list[str], str]:
    """(filesystem, the files a pass reads in order, their format): one file, or a directory's
    files without hidden and underscore ones (_SUCCESS, .crc), Parquet ones only for Parquet,
    as ray.data.read_parquet reads them."""
    fmt = instruction_format(input_cfg.path, input_cfg.format)
    fs, root = filesystem(input_cfg.path)
    if not fs.isdir(root):
        return fs, [root], fmt
    files = [path for path in sorted(fs.find(root)) if not path.rsplit("/", 1)[-1].startswith((".", "_"))]
    return fs, [path for path in files if fmt != "parquet" or path.endswith(".parquet")], fmt


def count_instructions(input_cfg: InputConfig) -> int:
    """How many rows a pass over the input will read (for progress): Parquet from its footers,
    JSONL by counting non-blank lines, without decoding any row."""
    fs, files, fmt = input_files(input_cfg)
    total = 0
    for name in files:
        with fs.open(name, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows if fmt == "parquet" else sum(1 for line in f if line.strip())
    return min(total, input_cfg.limit) if input_cfg.limit else total


class _InstructionId(msgspec.Struct):
    """A JSONL line read for its id alone: msgspec skips the other fields without building them."""

    id: str | int | None = None


def check_unique_ids(input_cfg: InputConfig, shown: int = 3) -> None:
    """Refuse an input that repeats an instruction id: pair ids, resumption (an id written once
    counts as done) and training's check for repeated pair ids all take an id for one
    instruction. Streams over the files reading ids only."""
    check_input(input_cfg.path, input_cfg.format)
    counts = Counter(instruction_id for instruction_id in instruction_ids(input_cfg) if instruction_id)
    repeated = [(instruction_id, n) for instruction_id, n in counts.items() if n > 1]
    if repeated:
        named = ", ".join(f"{instruction_id!r} x{n}" for instruction_id, n in repeated[:shown])
        raise InputError(f"input {input_cfg.path!r} repeats instruction ids ({named}; {len(repeated)} repeated "
                         "in all): give every instruction its own id")


def instruction_ids(input_cfg: InputConfig) -> Iterator[str | None]:
    """The id of each row the pass reads (the first input.limit), in reading order. None for a
    JSONL line the reader turns into a diverted row named by its file and line."""
    fs, files, fmt = input_files(input_cfg)
    ids = (instruction_id for path in files for instruction_id in _file_ids(fs, path, fmt))
    return itertools.islice(ids, input_cfg.limit or None)


def _file_ids(fs, path: str, fmt: str) -> Iterator[str | None]:
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            for batch in pq.ParquetFile(f).iter_batches(columns=["id"]):
                yield from batch.column(0).cast(pa.string()).fill_null("").to_pylist()
            return
        for line in f:
            if not line.strip():
                continue
            try:
                instruction_id = msgspec.json.decode(line, type=_InstructionId).id
            except (msgspec.DecodeError, msgspec.ValidationError):
                yield None
                continue
            yield "" if instruction_id is None else str(instruction_id)


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
