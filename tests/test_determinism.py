"""A generation pass is bitwise repeatable: run twice, or killed part-way and resumed, with the
rows grouped into other batches, it writes the same pairs/, every column, floats bit for bit."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import load_config
from engine.generation_dir import GENERATION_MANIFEST
from engine.pipeline import generate_pairs
from engine.schemas import PAIR_SCHEMA
from engine.storage import read_parquet_dir

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"


def config(model_cache: str, pair_batch: int):
    """The smoke pass cut to 8 instructions; the pair stage's batch size decides which answers
    share a log-prob call, and resources may change between a pass and its resumption."""
    return load_config(SMOKE, [f'models.cache_dir="{model_cache}"', "input.limit=8", "sample.n=3", "sample.max_new_tokens=12",
                               f"pair.resources.batch_size={pair_batch}"])


def assert_bitwise_equal(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows > 0 and a.equals(b)
    for name, field in zip(a.column_names, a.schema):
        if pa.types.is_floating(field.type):
            bits = [np.asarray(table[name].to_numpy()).view(np.uint64) for table in (a, b)]
            assert np.array_equal(*bits), name


def pairs(out_dir: Path) -> pa.Table:
    return read_parquet_dir(str(out_dir / "pairs"), PAIR_SCHEMA)


@pytest.fixture(scope="module")
def uninterrupted(ray_local, model_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    generate_pairs(config(model_cache, pair_batch=4), 0, str(out))
    return out


def test_the_same_pass_twice_writes_bitwise_equal_pairs(uninterrupted, model_cache, tmp_path):
    generate_pairs(config(model_cache, pair_batch=3), 0, str(tmp_path))
    assert_bitwise_equal(pairs(uninterrupted), pairs(tmp_path))


def test_a_pass_killed_part_way_and_resumed_writes_the_uninterrupted_pairs(uninterrupted, model_cache, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(uninterrupted, out)
    # Killed after half of the blocks were written: the other blocks' stats rows (written last,
    # one shard per block) are missing, though their candidates got out; the final pairs and
    # manifest never came.
    rows_files = sorted((out / "rows").glob("*.parquet"))
    assert len(rows_files) > 1
    kept = rows_files[: len(rows_files) // 2]
    for path in rows_files[len(kept):]:
        path.unlink()
    shutil.rmtree(out / "pairs")
    (out / GENERATION_MANIFEST).unlink()
    summary = generate_pairs(config(model_cache, pair_batch=1), 0, str(out))
    assert summary["instructions_resumed"] == sum(pq.read_metadata(path).num_rows for path in kept) > 0
    assert_bitwise_equal(pairs(uninterrupted), pairs(out))
