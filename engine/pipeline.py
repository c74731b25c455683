"""One generation pass as a streamed Ray Data graph: read -> validate -> sample -> split ->
score -> pair -> write, each model stage an autoscaling actor pool sized by config.

`plan_generation` only builds the lazy Dataset (the plan); `generate_pairs` executes it,
runs the length-balancing pass and writes the manifest last.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from engine.config import Config, ModelConfig, Resources
from engine.instruction_io import normalise_instructions
from engine.ray_runtime import check_pools_fit
from engine.schemas import INSTRUCTION_STATS_SCHEMA, REJECT_SCHEMA
from engine.stages.pair import PairStage
from engine.stages.sample import SampleStage
from engine.stages.score import ScoreStage
from engine.stages.split import SplitStage
from engine.stages.validate import validate_batch
from engine.storage import exists, filesystem, join, read_parquet_dir, write_json_atomic
from engine.summary import summarize_generation
from engine.writer import IterationSink, finalize_pairs


GENERATION_MANIFEST = "generation.json"


from engine.errors import InputError  # noqa: E402  (re-exported: engine.pipeline.InputError)


def input_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if path.rstrip("/").endswith(suffix):
            return fmt
    raise InputError(f"cannot tell the format of {path!r}: name it .parquet/.jsonl or set input.format")


def check_input(path: str) -> None:
    """Fail fast, before any model loads, on an input that is not there or not reachable."""
    try:
        found = exists(path)
    except Exception as exc:  # unknown protocol, missing fsspec backend, no credentials, DNS...
        raise InputError(f"input {path!r} is not reachable: {type(exc).__name__}: {exc}") from None
    if not found:
        raise InputError(f"input {path!r} does not exist")


def read_instructions(cfg: Config):
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    check_input(cfg.input.path)
    fs, path = filesystem(cfg.input.path)
    arrow_fs = PyFileSystem(FSSpecHandler(fs))
    if input_format(cfg.input.path, cfg.input.format) == "parquet":
        ds = ray.data.read_parquet(path, filesystem=arrow_fs)
    else:
        ds = ray.data.read_json(path, filesystem=arrow_fs)  # newline-delimited JSON
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    return ds.map_batches(normalise_instructions, batch_format="pyarrow")


def actor_pool(resources: Resources) -> dict:
    """map_batches arguments for a model stage's autoscaling actor pool."""
    from ray.data import ActorPoolStrategy

    args = {
        "compute": ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors),
        "num_cpus": resources.num_cpus,
        "batch_size": resources.batch_size,
        "batch_format": "pyarrow",
    }
    if resources.num_gpus:
        args["num_gpus"] = resources.num_gpus
    if resources.accelerator_type:
        args["accelerator_type"] = resources.accelerator_type
    return args


def _skip_done(done_ids: frozenset[str]):
    def keep_undone(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=pa.array(sorted(done_ids), pa.string()))))

    return keep_undone


def plan_generation(cfg: Config, iteration: int, policy: ModelConfig, out_dir: str,
                    done_ids: frozenset[str] = frozenset()):
    """The lazy Dataset of one generation pass; nothing runs until it is written."""
    cache, run, seed = cfg.models.cache_dir, cfg.run.name, cfg.run.seed
    check_pools_fit({"sample": cfg.sample.resources, "split": cfg.split.resources,
                     "score": cfg.score.resources, "pair": cfg.pair.resources})
    ds = read_instructions(cfg)
    if done_ids:
        ds = ds.map_batches(_skip_done(done_ids), batch_format="pyarrow")
    ds = ds.map_batches(validate_batch, fn_kwargs={"cfg": cfg.validate}, batch_format="pyarrow")
    ds = ds.map_batches(SampleStage, fn_constructor_args=(policy, cfg.sample, cache, run, seed, iteration),
                        **actor_pool(cfg.sample.resources))
    ds = ds.map_batches(SplitStage, fn_constructor_args=(cfg.models.splitter, cfg.split, cache, run, seed, iteration),
                        **actor_pool(cfg.split.resources))
    ds = ds.map_batches(ScoreStage, fn_constructor_args=(cfg.models.labeler, cfg.score, cache, run, iteration),
                        **actor_pool(cfg.score.resources))
    ds = ds.map_batches(PairStage, fn_constructor_args=(policy, cfg.pair, cache, run, seed, iteration),
                        **actor_pool(cfg.pair.resources))
    return ds


def done_instruction_ids(out_dir: str) -> frozenset[str]:
    """Instructions whose stats row is durably written: a resumed pass skips them."""
    return frozenset(read_parquet_dir(join(out_dir, "rows"), INSTRUCTION_STATS_SCHEMA)["instruction_id"].to_pylist())


def generate_pairs(cfg: Config, iteration: int, out_dir: str, policy: ModelConfig | None = None,
                   policy_id: str | None = None) -> dict:
    """Run one generation pass into out_dir (resuming any earlier partial pass there) and
    return its summary. `generation.json` is written last and marks the pass complete."""
    policy = policy or cfg.models.policy
    start = time.perf_counter()
    done = done_instruction_ids(out_dir)
    ds = plan_generation(cfg, iteration, policy, out_dir, done)
    ds.write_datasink(IterationSink(out_dir, iteration, policy_id or policy.path))
    balance = finalize_pairs(out_dir, cfg.pair)
    summary = summarize_generation(
        read_parquet_dir(join(out_dir, "rows"), INSTRUCTION_STATS_SCHEMA),
        read_parquet_dir(join(out_dir, "rejects"), REJECT_SCHEMA),
        balance,
        wall_seconds=time.perf_counter() - start,
        resumed_rows=len(done),
    )
    write_json_atomic({"iteration": iteration, "policy_id": policy_id or policy.path,
                       "pair_files": balance["files"], "summary": summary}, join(out_dir, GENERATION_MANIFEST))
    return summary
