"""The Best-of-N pass on Ray Data: read -> validate -> the Best-of-N stage -> candidates.

Output of `run_bon` (any fsspec URL):
  candidates/part-<key>.parquet   every sample with its log-probs, reward and chosen flag
  rejects/part-<key>.parquet      diverted input rows with their reason (REJECT_SCHEMA)
  bon.json                        the summary, written last
"""

from __future__ import annotations

import time

import pyarrow as pa

from engine.bon import BON_CANDIDATE_SCHEMA, bon_models, candidate_table, summarize_bon
from engine.config import Config
from engine.errors import PreflightError
from engine.pipeline import map_stages, run_context, validated_instructions
from engine.stages.base import StageSpec
from engine.stages.bon import BonStage
from engine.storage import exists, join, list_parquet, write_json_atomic, write_parquet_atomic
from engine.writer import reject_rows, shard_key

MANIFEST = "bon.json"

BON_STAGES = (StageSpec("bon", BonStage, models=("policy", "reference"), section="bon"),)


def run_bon(cfg: Config, out_dir: str) -> tuple[dict, pa.Table]:
    """Best-of-N over cfg.input, writing candidates and rejects per batch as they stream in
    and the summary last. Returns the summary and every candidate. out_dir must hold no
    earlier Best-of-N output: files of another run would mix with this one's."""
    if exists(join(out_dir, MANIFEST)) or list_parquet(join(out_dir, "candidates")):
        raise PreflightError(f"{out_dir} already holds Best-of-N output; choose another output directory")
    start = time.perf_counter()
    models = bon_models(cfg)
    policy_id, reference_id = models["policy"].path, models["reference"].path
    context = run_context(cfg, iteration=0)
    ds = map_stages(validated_instructions(cfg, context), BON_STAGES, cfg, context, models)
    tables, n_rejected = [], 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = batch.to_pylist()
        if not rows:
            continue
        name = f"part-{shard_key([row['id'] for row in rows])}.parquet"
        candidates, rejects = candidate_table(rows, policy_id, reference_id), reject_rows(rows, iteration=0)
        write_parquet_atomic(candidates, join(out_dir, "candidates", name))
        write_parquet_atomic(rejects, join(out_dir, "rejects", name))
        tables.append(candidates)
        n_rejected += rejects.num_rows
    candidates = pa.concat_tables(tables) if tables else BON_CANDIDATE_SCHEMA.empty_table()
    summary = summarize_bon(candidates, n_rejected, time.perf_counter() - start)
    summary.update(policy=policy_id, reference=reference_id, n=cfg.bon.n, beta=cfg.bon.beta,
                   length_normalise=cfg.bon.length_normalise)
    write_json_atomic(summary, join(out_dir, MANIFEST))
    return summary, candidates
