"""The end of the pipeline: flight rows -> pair candidates, rejects and per-instruction stats.

Layout of one iteration's generation output (any fsspec URL):
  candidates/part-<key>.parquet   pairs before length balancing (PAIR_SCHEMA)
  rejects/part-<key>.parquet      diverted rows and answers with their reason (REJECT_SCHEMA)
  rows/part-<key>.parquet         one stats row per instruction (INSTRUCTION_STATS_SCHEMA),
                                  written last: its presence marks those instructions done
  pairs/part-<n>.parquet          the final pairs, after the length-balancing pass
<key> is a hash of the block's instruction ids, so a re-run writes the same names.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from engine.config import PairConfig
from engine.pairing import length_balance, pair_id, word_count
from engine.schemas import INSTRUCTION_STATS_SCHEMA, PAIR_SCHEMA, REJECT_SCHEMA
from engine.storage import join, read_parquet_dir, write_parquet_atomic

PAIRS_PER_SHARD = 10_000


def pair_rows(rows: list[dict], iteration: int, policy_id: str) -> pa.Table:
    out = []
    for row in rows:
        for pair in row.get("pairs") or []:
            c, r = pair["chosen"], pair["rejected"]
            out.append({
                "pair_id": pair_id(iteration, row["id"], c, r),
                "instruction_id": row["id"],
                "iteration": iteration,
                "images": [row["image"]] if row.get("image") is not None else [],
                "prompt": row["prompt"],
                "chosen": row["answers"][c],
                "rejected": row["answers"][r],
                "chosen_score": row["scores"][c],
                "rejected_score": row["scores"][r],
                "chosen_n_claims": row["n_claims"][c],
                "rejected_n_claims": row["n_claims"][r],
                "ref_chosen_logps": pair["ref_chosen_logps"],
                "ref_rejected_logps": pair["ref_rejected_logps"],
                "policy_id": policy_id,
                "chosen_seed": row["answer_seeds"][c],
                "rejected_seed": row["answer_seeds"][r],
            })
    return pa.Table.from_pylist(out, schema=PAIR_SCHEMA)


def reject_rows(rows: list[dict], iteration: int) -> pa.Table:
    out = []
    for row in rows:
        base = {"instruction_id": row["id"], "iteration": iteration, "prompt": row.get("prompt")}
        if row.get("reject_reason") is not None:
            out.append({**base, "stage": row["reject_stage"], "reason": row["reject_reason"],
                        "detail": row.get("reject_detail") or "", "answer_index": -1})
        for item in row.get("answer_rejects") or []:
            out.append({**base, **item})
    return pa.Table.from_pylist(out, schema=REJECT_SCHEMA)


def stats_rows(rows: list[dict]) -> pa.Table:
    out = []
    for row in rows:
        parsed = [j for j, f in enumerate(row.get("facts") or []) if f is not None]
        p_yes, p_no = row.get("p_yes") or [], row.get("p_no") or []
        out.append({
            "instruction_id": row["id"],
            "reject_stage": row.get("reject_stage"),
            "reject_reason": row.get("reject_reason"),
            "n_answers": len(row.get("answers") or []),
            "n_answers_parsed": len(parsed),
            "n_claims": sum(len(row["facts"][j]) for j in parsed),
            "n_claims_rejected": sum(
                n > y for j in parsed if j < len(p_yes) and p_yes[j] is not None for y, n in zip(p_yes[j], p_no[j])
            ),
            "answer_tokens": sum(row.get("answer_tokens") or []),
            "n_pairs": len(row.get("pairs") or []),
            "dropped_gap": row.get("dropped_gap") or 0,
            "dropped_equal_text": row.get("dropped_equal_text") or 0,
            "dropped_cap": row.get("dropped_cap") or 0,
            **{f"seconds_{s}": row.get(f"seconds_{s}") or 0.0 for s in ("sample", "split", "score", "pair")},
        })
    return pa.Table.from_pylist(out, schema=INSTRUCTION_STATS_SCHEMA)


def shard_key(instruction_ids: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(instruction_ids)).encode(), digest_size=10).hexdigest()


class IterationSink(Datasink[int]):
    """Writes each block's candidates, rejects and stats, stats last (see module docstring)."""

    def __init__(self, out_dir: str, iteration: int, policy_id: str):
        self.out_dir = out_dir
        self.iteration = iteration
        self.policy_id = policy_id

    def write(self, blocks: Iterable[Block], ctx) -> int:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        rows = [row for table in tables for row in table.to_pylist()]
        if not rows:
            return 0
        name = f"part-{shard_key([row['id'] for row in rows])}.parquet"
        write_parquet_atomic(pair_rows(rows, self.iteration, self.policy_id), join(self.out_dir, "candidates", name))
        write_parquet_atomic(reject_rows(rows, self.iteration), join(self.out_dir, "rejects", name))
        write_parquet_atomic(stats_rows(rows), join(self.out_dir, "rows", name))
        return len(rows)


def finalize_pairs(out_dir: str, pair_cfg: PairConfig) -> dict:
    """The length-balancing pass over all of an iteration's candidates (ALGORITHMS.md 4), then
    the final pairs/ shards in pair_id order. Returns what it kept and dropped."""
    candidates = read_parquet_dir(join(out_dir, "candidates"), PAIR_SCHEMA).sort_by("pair_id")
    ratio, keep = None, [True] * candidates.num_rows
    if pair_cfg.length_balance and candidates.num_rows:
        ratio, keep = length_balance(
            [word_count(t) for t in candidates["chosen"].to_pylist()],
            [word_count(t) for t in candidates["rejected"].to_pylist()],
            pair_cfg.balance_ratio_step,
        )
    pairs = candidates.filter(pa.array(keep, pa.bool_()))
    files = []
    for n, start in enumerate(range(0, max(pairs.num_rows, 1), PAIRS_PER_SHARD)):
        url = join(out_dir, "pairs", f"part-{n:05d}.parquet")
        write_parquet_atomic(pairs.slice(start, PAIRS_PER_SHARD), url)
        files.append(url)
    return {
        "candidates": candidates.num_rows,
        "pairs": pairs.num_rows,
        "dropped_length_balance": candidates.num_rows - pairs.num_rows,
        "length_balance_ratio": ratio,
        "files": files,
    }
