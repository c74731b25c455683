"""The end of the pipeline: flight rows -> pair candidates, rejects and per-instruction stats.

Layout of one iteration's generation output (any fsspec URL):
  candidates/part-<key>.parquet   pairs before length balancing (PAIR_SCHEMA)
  rejects/part-<key>.parquet      diverted rows and answers with their reason (REJECT_SCHEMA)
  claims/part-<key>.parquet       every scored answer's claims and probabilities (CLAIMS_SCHEMA)
  rows/part-<key>.parquet         one stats row per instruction (instruction_stats_schema),
                                  written last: its presence marks those instructions done
  pairs/part-<n>.parquet          the final pairs, after the length-balancing pass
<key> is a hash of the block's instruction ids, so a re-run writes the same names.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import pyarrow as pa

from engine.config import PairConfig
from engine.pairing import accepts, length_balance, pair_id, word_count
from engine import schemas
from engine.schemas import (
    CLAIMS_SCHEMA,
    REJECT_SCHEMA,
    assistant_turn,
    instruction_stats_schema,
    seconds_column,
    turn_text,
    user_turn,
)
from engine.storage import join, read_parquet_dir, write_parquet_atomic

PAIRS_PER_SHARD = 10_000
REJECT_PROMPT_CHARS = 200


def pair_record(prompt: str, image: bytes | None, chosen: str, rejected: str, **columns) -> dict:
    """A PAIR_SCHEMA row from plain texts: the conversational turns and the image struct, and
    the other columns as given."""
    return {
        "images": [] if image is None else [{"bytes": image, "path": None}],
        "prompt": user_turn(prompt, image is not None),
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        **columns,
    }


def pair_rows(rows: list[dict], iteration: int, policy_id: str) -> pa.Table:
    out = []
    for row in rows:
        for pair in row.get("pairs") or []:
            c, r = pair["chosen"], pair["rejected"]
            out.append(pair_record(
                row["prompt"], row.get("image"), row["answers"][c], row["answers"][r],
                pair_id=pair_id(iteration, row["id"], c, r),
                instruction_id=row["id"],
                iteration=iteration,
                chosen_score=row["scores"][c],
                rejected_score=row["scores"][r],
                chosen_n_claims=row["n_claims"][c],
                rejected_n_claims=row["n_claims"][r],
                ref_chosen_logps=pair["ref_chosen_logps"],
                ref_rejected_logps=pair["ref_rejected_logps"],
                policy_id=policy_id,
                chosen_seed=row["answer_seeds"][c],
                rejected_seed=row["answer_seeds"][r],
            ))
    return pa.Table.from_pylist(out, schema=schemas.PAIR_SCHEMA)


def claim_rows(rows: list[dict], iteration: int) -> pa.Table:
    """Every scored answer of `rows` with its claims (none from a pass without a score stage)."""
    out = []
    for row in rows:
        scored = row.get("p_yes") or []  # none for a diverted row or a pass without a score stage
        quotes = row.get("quotes") or [None] * len(scored)
        for j, p_yes in enumerate(scored):
            if p_yes is None:  # not scored: its claims could not be parsed (see rejects/)
                continue
            out.append({"instruction_id": row["id"], "iteration": iteration, "answer_index": j,
                        "prompt": row["prompt"], "answer": row["answers"][j], "answer_seed": row["answer_seeds"][j],
                        "facts": row["facts"][j], "questions": row["questions"][j], "quotes": quotes[j],
                        "p_yes": p_yes, "p_no": row["p_no"][j]})
    return pa.Table.from_pylist(out, schema=CLAIMS_SCHEMA)


def excerpt(text: str | None, limit: int = REJECT_PROMPT_CHARS) -> str | None:
    """The start of a long text and its length: enough to find the row, not a copy of it."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


def reject_rows(rows: list[dict], iteration: int) -> pa.Table:
    out = []
    for row in rows:
        base = {"instruction_id": row["id"], "iteration": iteration, "prompt": excerpt(row.get("prompt"))}
        if row.get("reject_reason") is not None:
            out.append({**base, "stage": row["reject_stage"], "reason": row["reject_reason"],
                        "detail": row.get("reject_detail") or "", "answer_index": -1})
        for item in row.get("answer_rejects") or []:
            out.append({**base, **item})
    return pa.Table.from_pylist(out, schema=REJECT_SCHEMA)


def stats_rows(rows: list[dict], stages: Sequence[str]) -> pa.Table:
    out = []
    for row in rows:
        seconds = {item["stage"]: item["seconds"] for item in row.get("stage_seconds") or []}
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
                not accepts(y, n)
                for j in parsed if j < len(p_yes) and p_yes[j] is not None for y, n in zip(p_yes[j], p_no[j])
            ),
            "answer_tokens": sum(row.get("answer_tokens") or []),
            "n_pairs": len(row.get("pairs") or []),
            "dropped_gap": row.get("dropped_gap") or 0,
            "dropped_equal_text": row.get("dropped_equal_text") or 0,
            "dropped_cap": row.get("dropped_cap") or 0,
            **{seconds_column(stage): seconds.get(stage, 0.0) for stage in stages},
        })
    return pa.Table.from_pylist(out, schema=instruction_stats_schema(stages))


def shard_key(instruction_ids: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(instruction_ids)).encode(), digest_size=10).hexdigest()


def first_of_each(sorted_table: pa.Table, column: str) -> pa.Table:
    """The first row of each run of equal `column` values of a table sorted by it: one row per
    id where a resumed pass wrote some twice (see finalize_pairs)."""
    ids = sorted_table[column].to_pylist()
    return sorted_table.filter(pa.array([k == 0 or ids[k] != ids[k - 1] for k in range(len(ids))], pa.bool_()))


def finalize_pairs(out_dir: str, pair_cfg: PairConfig) -> dict:
    """The length-balancing pass over all of an iteration's candidates (docs/algorithms.md §4),
    then the final pairs/ shards in pair_id order. Returns what it kept and dropped.

    A crash between a block's candidates and its stats rows makes a resumed pass redo those
    instructions, possibly grouped into another block (another file name): the same pair can
    then stand in two candidate files, so each pair_id is kept once."""
    candidates = first_of_each(read_parquet_dir(join(out_dir, "candidates"), schemas.PAIR_SCHEMA).sort_by("pair_id"), "pair_id")
    ratio, keep = None, [True] * candidates.num_rows
    if pair_cfg.length_balance and candidates.num_rows:
        ratio, keep = length_balance(
            [word_count(turn_text(t)) for t in candidates["chosen"].to_pylist()],
            [word_count(turn_text(t)) for t in candidates["rejected"].to_pylist()],
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
