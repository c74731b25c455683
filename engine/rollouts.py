"""The rollout pass of one PPO round (jobs/ppo.py, docs/algorithms.md §9): read -> validate ->
sample (sample.n answers per instruction from the round's policy, seeds derived with the round
as the iteration) -> reward (models.reward_model's value at every answer token), the stages
mapped by engine.pipeline.map_stages and each block written by engine.sink.ShardSink:

  rollouts/part-<key>.parquet  one row per answer (ROLLOUT_SCHEMA)
  rejects/part-<key>.parquet   diverted rows and answers with their reason (REJECT_SCHEMA)
  rows/part-<key>.parquet      one stats row per instruction, written last: its presence marks
                               the instruction done, so a rerun after a kill skips it
  rollouts.json                the manifest (counts, per-stage busy seconds), written last

<key> hashes the block's instruction ids, so a retried write replaces its files. A start
marker (ROLLOUT_START_MARKER) names the round, policy and settings the directory holds, as a
generation pass's does (engine.generation_dir); another pass's outputs there are refused.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from engine.config import Config, ModelConfig
from engine.generation_dir import claim_output_dir, pass_settings
from engine.pipeline import (done_instruction_ids, map_stages, run_context, stage_names, validated_instructions,
                             write_pass)
from engine.progress import board
from engine.schemas import REJECT_SCHEMA, ROLLOUT_SCHEMA, instruction_stats_schema
from engine.stages.base import StageSpec
from engine.stages.reward import RewardStage
from engine.stages.sample import SampleStage
from engine.storage import join, read_parquet_dir, write_json_atomic
from engine.summary import count_reasons, stage_throughput
from engine.writer import first_of_each, reject_rows, stats_rows

ROLLOUT_STAGES: tuple[StageSpec, ...] = (
    StageSpec("sample", SampleStage, models=("policy",), section="sample"),
    StageSpec("reward", RewardStage, models=("reward_model",), section="reward"),
)
ROLLOUT_MANIFEST = "rollouts.json"
ROLLOUT_START_MARKER = "rollouts_start.json"
ROLLOUT_OUTPUTS = ("rollouts", "rejects", "rows", ROLLOUT_MANIFEST)


def rollout_models(cfg: Config, policy: ModelConfig | None = None) -> dict[str, ModelConfig]:
    """The model of each role the rollout stages name; `policy` is this round's."""
    return {"policy": policy or cfg.models.policy, "reward_model": cfg.models.reward_model}


def rollout_id(instruction_id: str, answer_index: int) -> str:
    return f"{instruction_id}/{answer_index}"


def rollout_rows(rows: list[dict], round_index: int) -> pa.Table:
    """One ROLLOUT_SCHEMA row per answer of every live flight row (diverted rows go to rejects/)."""
    out = []
    for row in rows:
        if row.get("reject_reason") is not None:
            continue
        for j, (answer, seed, rewards) in enumerate(zip(row["answers"], row["answer_seeds"], row["token_rewards"])):
            out.append({"rollout_id": rollout_id(row["id"], j), "instruction_id": row["id"], "round": round_index,
                        "image": row.get("image"), "prompt": row["prompt"], "answer": answer, "answer_seed": seed,
                        "token_rewards": rewards})
    return pa.Table.from_pylist(out, schema=ROLLOUT_SCHEMA)


def read_rollouts(out_dir: str) -> pa.Table:
    """Every rollout of a pass, in rollout_id order, each once: a resumed pass may have
    rewritten the instructions of a block whose stats row a kill had cut off, grouped into
    another block (another file name)."""
    return first_of_each(read_parquet_dir(join(out_dir, "rollouts"), ROLLOUT_SCHEMA).sort_by("rollout_id"),
                         "rollout_id")


def run_rollouts(cfg: Config, round_index: int, out_dir: str, policy: ModelConfig,
                 echo: Callable[[str], None] | None = None) -> dict:
    """Run the rollout pass of PPO round `round_index` from `policy` into out_dir (resuming an
    earlier partial run of the same pass there) and return its summary; ROLLOUT_MANIFEST is
    written last and marks the pass complete. With `echo`, progress lines go to it."""
    from engine.sink import ShardSink

    start = time.perf_counter()
    names = stage_names(ROLLOUT_STAGES)
    claim_output_dir(out_dir, pass_settings(cfg, round_index, policy, ROLLOUT_STAGES), kind="rollout",
                     marker=ROLLOUT_START_MARKER, outputs=ROLLOUT_OUTPUTS)
    done = done_instruction_ids(out_dir, ROLLOUT_STAGES)
    tally = board() if echo else None
    context = run_context(cfg, round_index, tally)
    ds = map_stages(validated_instructions(cfg, context, done), ROLLOUT_STAGES, cfg, context,
                    rollout_models(cfg, policy))
    sink = ShardSink(out_dir, (
        ("rollouts", partial(rollout_rows, round_index=round_index)),
        ("rejects", partial(reject_rows, iteration=round_index)),
        ("rows", partial(stats_rows, stages=names)),
    ))
    write_pass(ds, sink, f"rollouts, round {round_index}", cfg, names, done, tally, echo)
    summary = summarize_rollouts(read_parquet_dir(join(out_dir, "rows"), instruction_stats_schema(names)),
                                 read_parquet_dir(join(out_dir, "rejects"), REJECT_SCHEMA), read_rollouts(out_dir),
                                 time.perf_counter() - start, len(done))
    write_json_atomic({"round": round_index, "policy_id": policy.path, "reward_model": cfg.models.reward_model.path,
                       "summary": summary}, join(out_dir, ROLLOUT_MANIFEST))
    return summary


def summarize_rollouts(stats: pa.Table, rejects: pa.Table, rollouts: pa.Table, wall_seconds: float,
                       resumed_rows: int) -> dict:
    live = stats.filter(pc.is_null(stats["reject_reason"]))
    rewards = pc.list_flatten(rollouts["token_rewards"])
    return {
        "instructions": stats.num_rows,
        "instructions_resumed": resumed_rows,
        "instructions_rejected": stats.num_rows - live.num_rows,
        "rollouts": rollouts.num_rows,
        "answer_tokens": pc.sum(stats["answer_tokens"]).as_py() or 0,
        "reward_tokens": len(rewards),
        "mean_token_reward": round(pc.mean(rewards).as_py(), 6) if len(rewards) else None,
        "rejects_by_reason": count_reasons(rejects),
        "stages": stage_throughput(stats, live.num_rows, stage_names(ROLLOUT_STAGES)),
        "wall_seconds": round(wall_seconds, 2),
    }
