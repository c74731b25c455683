"""The Ray Data sinks of the passes: each block's rows written as one Parquet shard per table
(engine.writer's layout), the table that marks instructions done last, so a block is done only
once all of its shards are. Its own module: importing it imports Ray Data, which nothing else
of the writer needs."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Sequence

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from engine.storage import join, write_parquet_atomic
from engine.writer import claim_rows, pair_rows, reject_rows, shard_key, stats_rows

# A shard's directory under the output directory, and the function that makes its table from a
# block's flight rows (picklable: the sink travels to Ray's write tasks).
ShardTable = tuple[str, Callable[[list[dict]], pa.Table]]


class ShardSink(Datasink[int]):
    """Writes each block's tables in order, every shard named by the hash of the block's
    instruction ids, so a retried block replaces its files. The last table marks the block's
    instructions done (a resumed pass reads its ids)."""

    def __init__(self, out_dir: str, tables: Sequence[ShardTable]):
        self.out_dir = out_dir
        self.tables = tuple(tables)

    def write(self, blocks: Iterable[Block], ctx) -> int:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        rows = [row for table in tables for row in table.to_pylist()]
        if not rows:
            return 0
        name = f"part-{shard_key([row['id'] for row in rows])}.parquet"
        for directory, table_of in self.tables:
            write_parquet_atomic(table_of(rows), join(self.out_dir, directory, name))
        return len(rows)


class IterationSink(ShardSink):
    """A generation pass: each block's candidates, rejects, claims and stats, stats last."""

    def __init__(self, out_dir: str, iteration: int, policy_id: str, stages: Sequence[str]):
        super().__init__(out_dir, (
            ("candidates", partial(pair_rows, iteration=iteration, policy_id=policy_id)),
            ("rejects", partial(reject_rows, iteration=iteration)),
            ("claims", partial(claim_rows, iteration=iteration)),
            ("rows", partial(stats_rows, stages=tuple(stages))),
        ))
