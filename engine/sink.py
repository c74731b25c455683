"""The Ray Data sink of a generation pass: each block's candidates, rejects, claims and stats rows
written by engine.writer's layout, stats last, so a block is done only once all four are.
Its own module: importing it imports Ray Data, which nothing else of the writer needs."""

from __future__ import annotations

from typing import Iterable, Sequence

from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from engine.storage import join, write_parquet_atomic
from engine.writer import claim_rows, pair_rows, reject_rows, shard_key, stats_rows


class IterationSink(Datasink[int]):
    """Writes each block's candidates, rejects, claims and stats, stats last."""

    def __init__(self, out_dir: str, iteration: int, policy_id: str, stages: Sequence[str]):
        self.out_dir = out_dir
        self.iteration = iteration
        self.policy_id = policy_id
        self.stages = tuple(stages)

    def write(self, blocks: Iterable[Block], ctx) -> int:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        rows = [row for table in tables for row in table.to_pylist()]
        if not rows:
            return 0
        name = f"part-{shard_key([row['id'] for row in rows])}.parquet"
        write_parquet_atomic(pair_rows(rows, self.iteration, self.policy_id), join(self.out_dir, "candidates", name))
        write_parquet_atomic(reject_rows(rows, self.iteration), join(self.out_dir, "rejects", name))
        write_parquet_atomic(claim_rows(rows, self.iteration), join(self.out_dir, "claims", name))
        write_parquet_atomic(stats_rows(rows, self.stages), join(self.out_dir, "rows", name))
        return len(rows)
