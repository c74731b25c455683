"""Self-feedback Best-of-N (ALGORITHMS.md 7): the trained policy ranks its own samples.

For the N answers y of one input, r(y) = beta / T * (log pi_theta(y|x) - log pi_ref(y|x)),
T the response's token count (the closing eos included, as in the summed log-probs), and the
answer with the highest r is returned. Without 1/T the sum of per-token log-ratios grows with
length, so whenever they are mostly negative the shortest answer wins; `length_normalise=False`
ranks that way, for comparison.

Output of `run_bon` (any fsspec URL):
  candidates/part-<key>.parquet   every sample with its log-probs, reward and chosen flag
  rejects/part-<key>.parquet      diverted input rows with their reason (REJECT_SCHEMA)
  bon.json                        the summary, written last
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import msgspec
import pyarrow as pa

from engine.config import Config, ModelConfig
from engine.errors import PreflightError

MANIFEST = "bon.json"

# What the stage hands back per instruction (the image is dropped: the output never needs it).
BON_ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("reject_stage", pa.string()),
        pa.field("reject_reason", pa.string()),
        pa.field("reject_detail", pa.string()),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("answer_seeds", pa.list_(pa.int64())),
        pa.field("n_tokens", pa.list_(pa.int32())),
        pa.field("policy_logps", pa.list_(pa.float64())),
        pa.field("ref_logps", pa.list_(pa.float64())),
        pa.field("rewards", pa.list_(pa.float64())),
        pa.field("chosen", pa.int32()),
    ]
)

BON_CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field("instruction_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("candidate", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("policy_logps", pa.float64(), nullable=False),
        pa.field("ref_logps", pa.float64(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("chosen", pa.bool_(), nullable=False),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("reference_id", pa.string(), nullable=False),
    ]
)


def implicit_rewards(
    policy_logps: Sequence[float],
    ref_logps: Sequence[float],
    n_tokens: Sequence[int],
    beta: float,
    length_normalise: bool = True,
) -> list[float]:
    """r = beta / T * (log pi_theta - log pi_ref) per answer; without normalisation beta * (...)."""
    if not len(policy_logps) == len(ref_logps) == len(n_tokens):
        raise ValueError(f"{len(policy_logps)} policy, {len(ref_logps)} reference log-probs, {len(n_tokens)} counts")
    if length_normalise and any(t < 1 for t in n_tokens):
        raise ValueError(f"token counts must be >= 1 to normalise by them, got {list(n_tokens)}")
    return [
        beta * (p - r) / (t if length_normalise else 1)
        for p, r, t in zip(policy_logps, ref_logps, n_tokens)
    ]


def best_of(rewards: Sequence[float]) -> int:
    """Index of the highest reward. Ties go to the lowest index: candidates are in the order
    of their derived seeds, so the pick is reproducible (and exact ties are in practice equal
    answers, where the pick does not matter). NaN ranks below everything."""
    if not rewards:
        raise ValueError("no candidates to choose from")
    return max(range(len(rewards)), key=lambda j: (-math.inf if math.isnan(rewards[j]) else rewards[j], -j))


def candidate_table(rows: list[dict], policy_id: str, reference_id: str) -> pa.Table:
    """Stage rows (BON_ROW_SCHEMA) -> one row per candidate (BON_CANDIDATE_SCHEMA); diverted
    rows have no candidates (they go to rejects/)."""
    out = []
    for row in rows:
        if row.get("reject_reason") is not None:
            continue
        for j, answer in enumerate(row["answers"]):
            out.append({
                "instruction_id": row["id"], "prompt": row["prompt"], "candidate": j,
                "seed": row["answer_seeds"][j], "response": answer, "n_tokens": row["n_tokens"][j],
                "policy_logps": row["policy_logps"][j], "ref_logps": row["ref_logps"][j],
                "reward": row["rewards"][j], "chosen": j == row["chosen"],
                "policy_id": policy_id, "reference_id": reference_id,
            })
    return pa.Table.from_pylist(out, schema=BON_CANDIDATE_SCHEMA)


def summarize_bon(candidates: pa.Table, n_rejected: int, wall_seconds: float) -> dict:
    """Counts, and mean length of the chosen answers against all samples: the length bias
    that normalisation is there to remove shows as chosen << all."""
    rows = candidates.to_pylist()
    chosen = [row for row in rows if row["chosen"]]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "instructions": len(chosen) + n_rejected,
        "instructions_rejected": n_rejected,
        "candidates": len(rows),
        "mean_tokens_all": mean([row["n_tokens"] for row in rows]),
        "mean_tokens_chosen": mean([row["n_tokens"] for row in chosen]),
        "mean_reward_chosen": mean([row["reward"] for row in chosen]),
        "wall_seconds": round(wall_seconds, 2),
    }


def format_bon(summary: dict, candidates: pa.Table, max_rows: int = 10) -> str:
    """The chosen answer of the first `max_rows` instructions, then the summary."""
    chosen = [row for row in candidates.to_pylist() if row["chosen"]][:max_rows]
    lines = ["== best-of-n ==", f"  {'instruction':<24}{'pick':>5}{'reward':>11}{'T':>5}  answer"]
    for row in chosen:
        text = row["response"].replace("\n", " ")
        text = text if len(text) <= 48 else text[:45] + "..."
        lines.append(f"  {row['instruction_id'][:24]:<24}{row['candidate']:>5}{row['reward']:>11.4f}"
                     f"{row['n_tokens']:>5}  {text}")
    lines += [f"  {key:<28} {value}" for key, value in summary.items()]
    return "\n".join(lines)


def bon_models(cfg: Config) -> tuple[ModelConfig, ModelConfig]:
    """(policy, reference): bon.policy / bon.reference paths, "" meaning models.policy, each
    run with models.policy's backend settings. Two distinct models share one actor, so each
    gets half of gpu_memory_utilization (a per-engine budget in vLLM)."""
    base = cfg.models.policy
    policy_path, reference_path = cfg.bon.policy or base.path, cfg.bon.reference or base.path
    if policy_path != reference_path:
        base = msgspec.structs.replace(base, gpu_memory_utilization=base.gpu_memory_utilization / 2)
    return msgspec.structs.replace(base, path=policy_path), msgspec.structs.replace(base, path=reference_path)


def run_bon(cfg: Config, out_dir: str) -> tuple[dict, pa.Table]:
    """Best-of-N over cfg.input on Ray Data (validate, then the BonStage actor pool), writing
    candidates and rejects per batch as they stream in and the summary last. Returns the
    summary and every candidate. out_dir must hold no earlier Best-of-N output: files of
    another run would mix with this one's."""
    from engine.pipeline import actor_pool, read_instructions
    from engine.stages.bon import BonStage
    from engine.stages.validate import validate_batch
    from engine.storage import exists, join, list_parquet, write_json_atomic, write_parquet_atomic
    from engine.writer import reject_rows, shard_key

    if exists(join(out_dir, MANIFEST)) or list_parquet(join(out_dir, "candidates")):
        raise PreflightError(f"{out_dir} already holds Best-of-N output; choose another output directory")
    start = time.perf_counter()
    policy, reference = bon_models(cfg)
    ds = read_instructions(cfg)
    ds = ds.map_batches(validate_batch, fn_kwargs={"cfg": cfg.validate}, batch_format="pyarrow")
    ds = ds.map_batches(BonStage, fn_constructor_args=(policy, reference, cfg.bon, cfg.models.cache_dir,
                                                       cfg.run.name, cfg.run.seed),
                        **actor_pool(cfg.bon.resources))
    tables, n_rejected = [], 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = batch.to_pylist()
        if not rows:
            continue
        name = f"part-{shard_key([row['id'] for row in rows])}.parquet"
        candidates, rejects = candidate_table(rows, policy.path, reference.path), reject_rows(rows, iteration=0)
        write_parquet_atomic(candidates, join(out_dir, "candidates", name))
        write_parquet_atomic(rejects, join(out_dir, "rejects", name))
        tables.append(candidates)
        n_rejected += rejects.num_rows
    candidates = pa.concat_tables(tables) if tables else BON_CANDIDATE_SCHEMA.empty_table()
    summary = summarize_bon(candidates, n_rejected, time.perf_counter() - start)
    summary.update(policy=policy.path, reference=reference.path, n=cfg.bon.n, beta=cfg.bon.beta,
                   length_normalise=cfg.bon.length_normalise)
    write_json_atomic(summary, join(out_dir, MANIFEST))
    return summary, candidates
