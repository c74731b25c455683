"""Self-feedback Best-of-N (docs/algorithms.md §7): the trained policy ranks its own samples.

For the N answers y of one input, r(y) = beta / T * (log pi_theta(y|x) - log pi_ref(y|x)),
T the response's token count (the closing eos included, as in the summed log-probs), and the
answer with the highest r is returned. Without 1/T the sum of per-token log-ratios grows with
length, so whenever they are mostly negative the shortest answer wins; `length_normalise=False`
ranks that way, for comparison. The pass that runs it is engine.bon_pass.
"""

from __future__ import annotations

import math
from typing import Sequence

import msgspec
import pyarrow as pa

from engine.config import Config, ModelConfig

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
    """Flight rows after the Best-of-N stage -> one row per candidate (BON_CANDIDATE_SCHEMA);
    diverted rows have no candidates (they go to rejects/)."""
    out = []
    for row in rows:
        if row.get("reject_reason") is not None:
            continue
        for j, answer in enumerate(row["answers"]):
            out.append({
                "instruction_id": row["id"], "prompt": row["prompt"], "candidate": j,
                "seed": row["answer_seeds"][j], "response": answer, "n_tokens": row["answer_tokens"][j],
                "policy_logps": row["policy_logps"][j], "ref_logps": row["ref_logps"][j],
                "reward": row["rewards"][j], "chosen": j == row["best_answer"],
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


def bon_models(cfg: Config) -> dict[str, ModelConfig]:
    """policy and reference: bon.policy / bon.reference paths, "" meaning models.policy, each
    run with models.policy's backend settings. Two distinct models share one actor, so each
    gets half of gpu_memory_utilization (a per-engine budget in vLLM)."""
    base = cfg.models.policy
    policy_path, reference_path = cfg.bon.policy or base.path, cfg.bon.reference or base.path
    if policy_path != reference_path:
        base = msgspec.structs.replace(base, gpu_memory_utilization=base.gpu_memory_utilization / 2)
    return {"policy": msgspec.structs.replace(base, path=policy_path),
            "reference": msgspec.structs.replace(base, path=reference_path)}
