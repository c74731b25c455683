"""The generation summary: counts, rejection rate, pairs kept/dropped by rule, rejects by reason,
and per-stage throughput, as a dict (for summary.json) and a printed table."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from engine.schemas import seconds_column


def _sum(table: pa.Table, column: str) -> float:
    return sum(v or 0 for v in table[column].to_pylist()) if table.num_rows else 0


def count_reasons(rejects: pa.Table) -> dict[str, int]:
    """Diverted rows and answers by reason (REJECT_SCHEMA rows)."""
    return dict(sorted(Counter(rejects["reason"].to_pylist()).items()))


def stage_throughput(stats: pa.Table, live_rows: int, stages: Sequence[str]) -> dict:
    """Per stage, its busy seconds over a pass's stats rows and the live rows per busy second."""
    per_stage = {}
    for stage in stages:
        busy = _sum(stats, seconds_column(stage))
        per_stage[stage] = {
            "busy_seconds": round(busy, 3),
            "rows_per_busy_second": round(live_rows / busy, 3) if busy else None,
        }
    return per_stage


def summarize_generation(stats: pa.Table, rejects: pa.Table, balance: dict, wall_seconds: float,
                         stages: Sequence[str], resumed_rows: int = 0) -> dict:
    n_rows = stats.num_rows
    live = stats.filter(pc.is_null(stats["reject_reason"])) if n_rows else stats
    claims, claims_rejected = _sum(stats, "n_claims"), _sum(stats, "n_claims_rejected")
    rejects_by_reason = count_reasons(rejects)
    return {
        "instructions": n_rows,
        "instructions_resumed": resumed_rows,
        "instructions_rejected": n_rows - live.num_rows,
        "answers": int(_sum(stats, "n_answers")),
        "answers_parsed": int(_sum(stats, "n_answers_parsed")),
        "answer_tokens": int(_sum(stats, "answer_tokens")),
        "claims": int(claims),
        "claims_rejected": int(claims_rejected),
        "claim_rejection_rate": round(claims_rejected / claims, 4) if claims else None,
        "pair_candidates": balance["candidates"],
        "pairs": balance["pairs"],
        "pairs_dropped": {
            "score_gap_too_small": int(_sum(stats, "dropped_gap")),
            "equal_text": int(_sum(stats, "dropped_equal_text")),
            "over_per_instruction_cap": int(_sum(stats, "dropped_cap")),
            "length_balance": balance["dropped_length_balance"],
        },
        "length_balance_ratio": balance["length_balance_ratio"],
        "rejects_by_reason": rejects_by_reason,
        "answers_without_claims": rejects_by_reason.get("no_claims", 0),
        "stages": stage_throughput(stats, live.num_rows, stages),
        "wall_seconds": round(wall_seconds, 2),
        "instructions_per_second": round(n_rows / wall_seconds, 3) if wall_seconds else None,
    }


def format_summary(summary: dict, title: str = "generation") -> str:
    lines = [f"== {title} =="]
    for key in ("instructions", "instructions_resumed", "instructions_rejected", "answers", "answers_parsed",
                "answers_without_claims",
                "answer_tokens", "claims", "claims_rejected", "claim_rejection_rate", "pair_candidates", "pairs",
                "length_balance_ratio", "wall_seconds", "instructions_per_second"):
        lines.append(f"  {key:<28} {summary.get(key)}")
    lines += [f"  dropped: {rule:<19} {n}" for rule, n in summary["pairs_dropped"].items()]
    lines += [f"  rejects: {reason:<19} {n}" for reason, n in summary["rejects_by_reason"].items()]
    lines.append(f"  {'stage':<10}{'busy s':>10}{'rows/busy s':>14}")
    for stage, s in summary["stages"].items():
        lines.append(f"  {stage:<10}{s['busy_seconds']:>10}{str(s['rows_per_busy_second']):>14}")
    return "\n".join(lines)
