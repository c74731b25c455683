"""One generation pass as a streamed Ray Data graph: read -> validate -> the model stages ->
write. The model stages are data: STAGES, mapped in order by `map_stages`, each an
autoscaling actor pool sized by its config section's `resources`.

Adding a stage: write its ModelStage subclass in engine/stages/, add one StageSpec below.
Its timing column, summary row, pool-fit check and dashboard metrics follow from the spec.

`plan_generation` only builds the lazy Dataset (the plan); `generate_pairs` claims the output
directory (engine.generation_dir), executes the plan, runs the length-balancing pass and writes
the manifest last.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from engine.backends import BackendFactory, batches_in_flight
from engine.config import Config, ModelConfig, Resources, actor_gpus
from engine.generation_dir import GENERATION_MANIFEST, claim_output_dir, pass_settings
from engine.inputs import count_instructions, read_instruction_dataset
from engine.progress import ProgressPrinter, board
from engine.ray_runtime import check_pools_fit
from engine.schemas import REJECT_SCHEMA, instruction_stats_schema
from engine.stages.base import RunContext, StageSpec
from engine.stages.pair import PairStage
from engine.stages.sample import SampleStage
from engine.stages.score import ScoreStage
from engine.stages.split import SplitStage
from engine.stages.validate import STAGE as VALIDATE_STAGE
from engine.stages.validate import validate_batch
from engine.storage import join, read_parquet_dir, write_json_atomic
from engine.summary import summarize_generation
from engine.pair_card import write_pair_card
from engine.writer import finalize_pairs

# The model stages of a generation pass, in order (docs/algorithms.md §1-4).
STAGES: tuple[StageSpec, ...] = (
    StageSpec("sample", SampleStage, models=("policy",), section="sample"),
    StageSpec("split", SplitStage, models=("splitter",), section="split"),
    StageSpec("score", ScoreStage, models=("labeler",), section="score"),
    StageSpec("pair", PairStage, models=("policy",), section="pair"),
)


def stage_names(stages: Sequence[StageSpec]) -> tuple[str, ...]:
    return tuple(spec.name for spec in stages)


def stage_resources(spec: StageSpec, cfg: Config, models: Mapping[str, ModelConfig]) -> Resources:
    """The stage's actor resources, GPUs per actor derived from its first model's tensor
    parallelism (engine.config.actor_gpus)."""
    resources = getattr(cfg, spec.section).resources
    if not spec.models:
        return resources
    return msgspec.structs.replace(resources, num_gpus=actor_gpus(resources, models[spec.models[0]]))


def actor_pool(resources: Resources, in_flight: int = 1) -> dict:
    """map_batches arguments for a model stage's autoscaling actor pool whose actors each take
    `in_flight` batches at once (engine.stages.base.ModelStage)."""
    from ray.data import ActorPoolStrategy

    args = {
        "compute": ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors,
                                     max_concurrent_calls_per_actor=in_flight),
        "num_cpus": resources.num_cpus,
        "batch_size": resources.batch_size,
        "batch_format": "pyarrow",
    }
    if resources.num_gpus:
        args["num_gpus"] = resources.num_gpus
    if resources.accelerator_type:
        args["accelerator_type"] = resources.accelerator_type
    return args


def map_stages(ds, stages: Sequence[StageSpec], cfg: Config, context: RunContext,
               models: Mapping[str, ModelConfig]):
    """ds with every stage of `stages` mapped in order; `models` maps each role a stage
    names to the model it loads. Fails fast when the pools cannot fit a local cluster."""
    resources = {spec.name: stage_resources(spec, cfg, models) for spec in stages}
    check_pools_fit(resources)
    if stages:
        ds = in_blocks_of(ds, resources[stages[0].name].batch_size)
    for spec in stages:
        kind = spec.stage_class.backend_kind
        backends = {role: BackendFactory(models[role], context.cache_dir, kind) for role in spec.models}
        in_flight = batches_in_flight((models[role] for role in spec.models), kind)
        ds = ds.map_batches(
            spec.stage_class,
            fn_constructor_kwargs={"cfg": getattr(cfg, spec.section), "context": context, "backends": backends,
                                   "batches_in_flight": in_flight},
            **actor_pool(resources[spec.name], in_flight),
        )
    return ds


def in_blocks_of(ds, rows: int):
    """ds cut into blocks of at most `rows` rows (streamed, order kept). Ray Data hands a block
    to one actor whole, and a pool grows only while blocks queue for its actors: read as one
    block (as a small file is), the input would keep every pool at one busy actor. Blocks of
    the first pool's batch size give each of its calls its own block; the later pools' blocks
    are the earlier pools' outputs, so they stay as fine."""
    return ds.repartition(target_num_rows_per_block=rows)


def validated_instructions(cfg: Config, context: RunContext, done_ids: frozenset[str] = frozenset()):
    """The input as flight rows: read, minus the instructions already done, validated."""
    ds = read_instruction_dataset(cfg.input)
    if done_ids:
        ds = ds.map_batches(_skip_done(done_ids), batch_format="pyarrow")
    return ds.map_batches(validate_batch, fn_kwargs={"cfg": cfg.validate, "context": context},
                          batch_format="pyarrow")


def _skip_done(done_ids: frozenset[str]):
    def keep_undone(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=pa.array(sorted(done_ids), pa.string()))))

    return keep_undone


def run_context(cfg: Config, iteration: int, progress=None) -> RunContext:
    return RunContext(run_name=cfg.run.name, seed=cfg.run.seed, iteration=iteration, cache_dir=cfg.models.cache_dir,
                      progress=progress)


def generation_models(cfg: Config, policy: ModelConfig | None = None) -> dict[str, ModelConfig]:
    """The model of each role the generation stages name; `policy` is this iteration's."""
    return {"policy": policy or cfg.models.policy, "splitter": cfg.models.splitter, "labeler": cfg.models.labeler}


def plan_generation(cfg: Config, iteration: int, policy: ModelConfig, done_ids: frozenset[str] = frozenset(),
                    stages: Sequence[StageSpec] = STAGES, progress=None):
    """The lazy Dataset of one generation pass; nothing runs until it is written."""
    context = run_context(cfg, iteration, progress)
    return map_stages(validated_instructions(cfg, context, done_ids), stages, cfg, context,
                      generation_models(cfg, policy))


def done_instruction_ids(out_dir: str, stages: Sequence[StageSpec] = STAGES) -> frozenset[str]:
    """Instructions whose stats row is durably written: a resumed pass skips them."""
    stats = read_parquet_dir(join(out_dir, "rows"), instruction_stats_schema(stage_names(stages)))
    return frozenset(stats["instruction_id"].to_pylist())


def write_pass(ds, sink, title: str, cfg: Config, names: Sequence[str], done: frozenset[str], tally,
               echo: Callable[[str], None] | None) -> None:
    """Execute a pass's plan into its sink; with `echo`, a first line (`title`, the instructions
    to do and those done before) and the progress lines of engine.progress while it runs."""
    if echo is None:
        ds.write_datasink(sink)
        return
    total = count_instructions(cfg.input) - len(done)
    echo(f"{title}: {total} instructions" + (f" ({len(done)} done before)" if done else ""))
    with ProgressPrinter(tally, (VALIDATE_STAGE, *names), total, echo):
        ds.write_datasink(sink)


def generate_pairs(cfg: Config, iteration: int, out_dir: str, policy: ModelConfig | None = None,
                   stages: Sequence[StageSpec] = STAGES, echo: Callable[[str], None] | None = None) -> dict:
    """Run one generation pass into out_dir (resuming an earlier partial run of the same pass
    there; another pass's outputs are refused) and return its summary. `generation.json` is
    written last and marks the pass complete. With `echo`, progress lines (engine.progress) go
    to it while the pass runs."""
    from engine.sink import IterationSink

    policy = policy or cfg.models.policy
    names = stage_names(stages)
    start = time.perf_counter()
    claim_output_dir(out_dir, pass_settings(cfg, iteration, policy, stages))
    done = done_instruction_ids(out_dir, stages)
    tally = board() if echo else None
    ds = plan_generation(cfg, iteration, policy, done, stages, tally)
    write_pass(ds, IterationSink(out_dir, iteration, policy.path, names), f"generation, iteration {iteration}",
               cfg, names, done, tally, echo)
    balance = finalize_pairs(out_dir, cfg.pair)
    write_pair_card(out_dir, cfg, iteration, policy.path, balance)
    summary = summarize_generation(
        read_parquet_dir(join(out_dir, "rows"), instruction_stats_schema(names)),
        read_parquet_dir(join(out_dir, "rejects"), REJECT_SCHEMA),
        balance,
        wall_seconds=time.perf_counter() - start,
        stages=names,
        resumed_rows=len(done),
    )
    write_json_atomic({"iteration": iteration, "policy_id": policy.path,
                       "pair_files": balance["files"], "summary": summary}, join(out_dir, GENERATION_MANIFEST))
    return summary
