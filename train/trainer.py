"""DPO / DDPO on pair shards, SFT on (image, question, answer) rows, the token-level reward
model on labelled answers and PPO on rewarded rollouts: Ray Train's TorchTrainer runs one
DeepSpeed loop on each worker; what it optimises is an objective of train/objectives.py, which
may also evaluate held-out rows after the last step.

For DPO only the policy is in memory: its reference log-probs come precomputed in the shards.
For DDPO the reference's *weighted* log-probs depend on gamma and the token diff, which the
shards do not carry, so they are computed once, before the first update, by the policy
itself (at step 0 the policy is the reference). PPO trains the policy and its critic in one
engine and holds its frozen reference only while it scores the rollouts, before the first
update.

Precision: train.precision = "bf16" applies on GPU (DeepSpeed bf16, fp32 master weights);
CPU workers always train in fp32 with gloo, one thread per CPU of train.cpus_per_worker.

<out_dir>/ds_checkpoint/   Ray Train run: DeepSpeed checkpoints reported every
                           train.checkpoint_every_steps steps and at the end, with the step,
                           the batch plan and the metric history; a new call resumes there
<out_dir>/model/           the trained model in Hugging Face format (train/export.py)
<out_dir>/critic/          PPO's trained critic, a reward-model directory (engine/reward_model.py)
<out_dir>/train_result.json  written last: training is complete
"""

from __future__ import annotations

import importlib
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from pyarrow.fs import FSSpecHandler, PyFileSystem
from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from transformers.integrations import HfDeepSpeedConfig

from engine import chat
from engine.config import Config, TrainConfig, with_absolute_model_dirs
from engine.metrics import record_train_step
from engine.progress import format_seconds
from engine.ray_runtime import init_ray
from engine.storage import absolute, absolute_if_dir, exists, filesystem, join, read_json, write_json_atomic
from engine.tiny_models import resolve_model_path
from train.data import BatchPlan, read_pair_dataset, rows_of
from train.export import CRITIC_DIR, MODEL_DIR, is_local
from train.objectives import OBJECTIVES, critic_init

CHECKPOINT_RUN = "ds_checkpoint"
RESULT_FILE = "train_result.json"
DATASET_KEY = "rows"
HELDOUT_KEY = "heldout"


@dataclass(frozen=True)
class TrainResult:
    """What <out_dir>/train_result.json holds: the one marker that training is complete."""

    model_dir: str | None  # None when the call stopped at max_steps before the end
    steps: int  # optimizer steps done so far (over all calls)
    started_at_step: int  # the step this call resumed at (0 for a fresh run)
    history: list[dict] = field(default_factory=list)  # one metrics dict per optimizer step
    metrics: dict = field(default_factory=dict)  # the last step's metrics
    wall_seconds: float = 0.0  # how long the call that finished the run took
    # Why nothing was trained (engine.iterate: "no pairs"); model_dir is then the untrained init.
    skipped: str | None = None
    # The objective's metrics on held-out rows after the last step (the reward model's eval/...).
    evaluation: dict = field(default_factory=dict)
    critic_dir: str | None = None  # PPO: the trained critic, a reward-model directory


def write_result(result: TrainResult, out_dir: str) -> None:
    write_json_atomic(asdict(result), join(out_dir, RESULT_FILE))


def read_result(out_dir: str) -> TrainResult | None:
    """The finished result under out_dir, None while training is not complete."""
    url = join(out_dir, RESULT_FILE)
    return TrainResult(**read_json(url)) if exists(url) else None


def train_dpo(
    cfg: Config,
    pairs_dir: str,
    init_model: str,
    out_dir: str,
    resume: bool = True,
    max_steps: int | None = None,
    iteration: int = 0,
) -> TrainResult:
    """Train `init_model` (a model dir or URL, hub id or tiny:<name>) on the pair shards in `pairs_dir`.

    resume=True continues from the latest checkpoint under out_dir (or returns the finished
    result); resume=False deletes out_dir's checkpoints, model and result first.
    max_steps stops this call after that many optimizer steps in total (the learning-rate
    schedule still spans the whole run) with a checkpoint saved, so a later call resumes,
    e.g. to fit a run into time slots; the result then has model_dir None.
    iteration only tags the exported training metrics (engine.metrics).
    Ray must be initialised by the caller, or a local Ray is started with cfg.ray's caps.
    """
    return _fit(cfg, "preference", lambda: read_pair_dataset(pairs_dir), init_model, out_dir, resume, max_steps,
                iteration)


def train_sft(cfg: Config, examples, init_model: str, out_dir: str, resume: bool = True,
              max_steps: int | None = None) -> TrainResult:
    """Supervised fine-tuning of `init_model` on `examples` (train.sft_data.read_sft_examples'
    rows, a pyarrow Table) with cfg.train's optimisation and cfg.sft's augmentations; resume and
    max_steps as in train_dpo."""
    import ray.data

    return _fit(cfg, "sft", lambda: ray.data.from_arrow(examples), init_model, out_dir, resume, max_steps, 0)


def train_reward_model(cfg: Config, rows, heldout, init_model: str, out_dir: str, resume: bool = True,
                       max_steps: int | None = None) -> TrainResult:
    """The token-level reward model: `init_model` with a scalar head (engine.reward_model) fitted
    to the labels of `rows` (engine.schemas.RM_SCHEMA, a pyarrow Table) with cfg.train's
    optimisation, then evaluated on `heldout` (same schema, possibly empty); resume and
    max_steps as in train_dpo. The export under out_dir/model loads with
    engine.reward_model.load_reward_model."""
    import ray.data

    return _fit(cfg, "reward_model", lambda: ray.data.from_arrow(rows), init_model, out_dir, resume, max_steps, 0,
                heldout=(lambda: ray.data.from_arrow(heldout)) if heldout.num_rows else None)


def train_ppo(cfg: Config, rollouts: pa.Table, init_model: str, out_dir: str, resume: bool = True,
              max_steps: int | None = None) -> TrainResult:
    """One PPO update (jobs/ppo.py's round): `init_model`, the policy that sampled `rollouts`
    (engine.schemas.ROLLOUT_SCHEMA, one round's, rewarded), trained for ppo.epochs passes over
    them with cfg.train's optimisation, beside a critic that starts from ppo.critic ("":
    models.reward_model) against the frozen ppo.reference ("": models.policy). resume and
    max_steps as in train_dpo. The policy is exported to out_dir/model like every trained
    model, the critic to out_dir/critic (result.critic_dir) for
    engine.reward_model.load_reward_model, so that the next round can continue it (with
    ppo.critic set to it). The steps' metrics are recorded under the rollouts' round."""
    import ray.data

    from train.ppo_data import check_rollouts

    critic_init(cfg)  # refused here rather than in every worker
    rollout_round = check_rollouts(rollouts)
    return _fit(cfg, "ppo", lambda: ray.data.from_arrow(rollouts), init_model, out_dir, resume, max_steps,
                rollout_round)


def _fit(cfg: Config, objective: str, dataset, init_model: str, out_dir: str, resume: bool,
         max_steps: int | None, iteration: int, heldout=None) -> TrainResult:
    """Run (or resume) the objective's training; `dataset` builds the Ray Dataset of its rows,
    `heldout`, when given, that of the rows it evaluates after the last step."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    out_dir = absolute(out_dir)
    if not resume:
        _remove(out_dir, (RESULT_FILE, MODEL_DIR, CRITIC_DIR, CHECKPOINT_RUN))
    elif (finished := read_result(out_dir)) is not None:
        return finished
    started = time.perf_counter()
    cfg, train_cfg = with_absolute_model_dirs(cfg), cfg.train
    init_model = absolute_if_dir(init_model)
    init_ray(cfg.ray)
    datasets = {DATASET_KEY: dataset()}
    if heldout is not None:
        datasets[HELDOUT_KEY] = heldout()
    storage_path, storage_fs = _ray_storage(out_dir)
    resources = {"CPU": train_cfg.cpus_per_worker}
    if train_cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "config": cfg,  # a msgspec Struct: it pickles as it is
            "objective": objective,
            "seed": cfg.run.seed,
            "init_model": init_model,
            "cache_dir": absolute(cfg.models.cache_dir),
            "out_dir": out_dir,
            "max_steps": max_steps,
            "run": cfg.run.name,
            "iteration": iteration,
            "heldout": heldout is not None,
        },
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker=resources,
            accelerator_type=train_cfg.accelerator_type,
        ),
        run_config=RunConfig(
            name=CHECKPOINT_RUN,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
        datasets=datasets,
        # Every worker gets all rows and takes its part of each global batch (BatchPlan):
        # Ray's streaming split hands out blocks as workers ask, which is not reproducible.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    result = TrainResult(**trainer.fit().return_value, wall_seconds=round(time.perf_counter() - started, 2))
    if result.model_dir is not None:
        write_result(result, out_dir)
    return result


def _remove(out_dir: str, names: tuple[str, ...]) -> None:
    fs, path = filesystem(out_dir)
    for name in names:
        target = f"{path.rstrip('/')}/{name}"
        if fs.exists(target):
            fs.rm(target, recursive=True)


def _ray_storage(out_dir: str):
    """RunConfig storage for out_dir: an absolute local path, or the path on a pyarrow
    filesystem wrapping the fsspec one (s3://, gs://, ...)."""
    fs, path = filesystem(out_dir)
    if is_local(fs):
        return path, None
    return path, PyFileSystem(FSSpecHandler(fs))


# ---------------------------------------------------------------- inside each Ray Train worker


def _train_worker(spec: dict) -> dict:
    """One worker's DeepSpeed loop. Returns the result (rank 0's is the run's)."""
    train_cfg: TrainConfig = spec["config"].train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(train_cfg.cpus_per_worker)))
    seed = spec["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    objective_class = OBJECTIVES[spec["objective"]]
    rows = rows_of(ray.train.get_dataset_shard(DATASET_KEY), objective_class.id_column)
    heldout = rows_of(ray.train.get_dataset_shard(HELDOUT_KEY), objective_class.id_column) if spec["heldout"] else []
    # Resolved on the worker's own node (a hub snapshot or remote model is local files there),
    # once: the same directory is loaded here and read again by the export.
    init_dir = resolve_model_path(spec["init_model"], spec["cache_dir"])
    processor = AutoProcessor.from_pretrained(init_dir)
    bf16 = train_cfg.precision == "bf16" and device.type == "cuda"
    objective = objective_class(spec["config"], processor, rows, device, torch.bfloat16 if bf16 else torch.float32,
                                seed)
    plan = BatchPlan(len(rows), train_cfg.micro_batch_size, train_cfg.gradient_accumulation_steps, world,
                     objective.epochs, seed, train_cfg.shuffle)
    ds_engine = _deepspeed_engine(train_cfg, init_dir, plan, bf16=bf16, multimodal=chat.is_multimodal(processor),
                                  trained_model=lambda model: objective.trained_model(model, init_dir))
    # Before the checkpoint is restored: what prepare computes comes from the initial weights.
    objective.prepare(ds_engine, plan, rank, world)

    start, history = _restore(ds_engine, plan)
    stop = min(plan.total_steps, spec["max_steps"] or plan.total_steps)
    for step in range(start, stop):
        started = time.perf_counter()
        metrics = _optimizer_step(ds_engine, objective, step, plan.micro_batches(step, rank))
        metrics.update(step=step + 1, epoch=(step + 1) / plan.steps_per_epoch,
                       step_seconds=time.perf_counter() - started)
        history.append(metrics)
        if rank == 0:
            record_train_step(metrics, spec["run"], spec["iteration"])
            # The live view: Ray forwards a worker's stdout to the driver's console. Ray Train
            # patches print to log through its logger as well, which showed every line twice; a
            # print to the real stdout is passed through once.
            eta = format_seconds((plan.total_steps - step - 1) * metrics["step_seconds"])
            print(f"train step {step + 1}/{plan.total_steps}  loss {metrics['loss']:.4f}  "
                  f"{objective.progress(metrics)}  {metrics['step_seconds']:.1f} s/step  ETA {eta}",
                  file=sys.__stdout__, flush=True)
        # Only checkpoints are reported: Ray Train's report queue holds one result and the
        # controller drains it every health check (2 s), so a report per step made every step
        # of a small model last 2 s. The metrics are in the history and record_train_step.
        last = step + 1 == stop
        if last or (train_cfg.checkpoint_every_steps and (step + 1) % train_cfg.checkpoint_every_steps == 0):
            _save(ds_engine, step + 1, history, plan, metrics)
    finished = stop == plan.total_steps
    evaluation = {}
    if finished and heldout:
        evaluation = objective.evaluate(ds_engine, heldout, rank, world)
        if rank == 0:
            print("held-out  " + "  ".join(f"{key} {value:.4g}" for key, value in evaluation.items()),
                  file=sys.__stdout__, flush=True)
    return {
        "model_dir": None,
        **(objective.export(ds_engine, init_dir, spec["out_dir"]) if finished else {}),
        "steps": stop,
        "started_at_step": start,
        "history": history,
        "metrics": history[-1] if history else {},
        "evaluation": evaluation,
    }


def _optimizer_step(ds_engine, objective, step: int, micro_batches: list[list[int]]) -> dict:
    """Forward/backward every micro-batch of one optimizer step (DeepSpeed steps the
    optimizer on the last); returns the metrics averaged over the whole global batch."""
    learning_rate = ds_engine.get_lr()[0]  # this step's; the scheduler advances inside ds_engine.step()
    names = None
    sums = None
    for indices in micro_batches:
        batch = objective.batch(indices, step)
        loss, metrics = objective.loss(ds_engine, batch)
        ds_engine.backward(loss)
        ds_engine.step()
        rows = len(indices)
        names = ["loss", *metrics]
        values = torch.stack([loss.detach(), *metrics.values()]).double().cpu() * rows
        counts = torch.tensor([rows, batch.n_truncated], dtype=torch.float64)
        micro_sums = torch.cat([values, counts])
        sums = micro_sums if sums is None else sums + micro_sums
    sums = sums.to(objective.device)
    dist.all_reduce(sums)  # every worker's micro-batches: the global batch
    sums = sums.cpu().tolist()
    n_rows, n_truncated = sums[-2], sums[-1]
    out = {name: value / n_rows for name, value in zip(names, sums)}
    out["truncated_sequences"] = int(n_truncated)
    out["learning_rate"] = learning_rate
    grad_norm = ds_engine.get_global_grad_norm()
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    return out


def _deepspeed_config(train_cfg: TrainConfig, bf16: bool) -> dict:
    zero: dict = {"stage": train_cfg.zero_stage}
    if train_cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # export gathers the partitions
    return {
        "train_micro_batch_size_per_gpu": train_cfg.micro_batch_size,
        "gradient_accumulation_steps": train_cfg.gradient_accumulation_steps,
        "gradient_clipping": train_cfg.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW: no fused-op JIT build on CPU
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,  # metrics go to the history and engine.metrics instead
    }


def _deepspeed_engine(train_cfg: TrainConfig, init_dir: str, plan, bf16: bool, multimodal: bool, trained_model):
    """The objective's `trained_model` of the policy wrapped by DeepSpeed with AdamW and a
    warm-up, then train.lr_schedule."""
    import deepspeed

    # The shared-memory all-reduce op is only used for inference and costs a slow JIT build on
    # every CPU start (docs/cpu-stack.md). Patch the module, not its alias.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed()  # adopts the process group Ray Train set up
    ds_config = _deepspeed_config(train_cfg, bf16)
    # ZeRO-3 partitions the parameters: while an HfDeepSpeedConfig of this config is alive
    # (transformers holds a weak reference), from_pretrained builds the model inside
    # deepspeed.zero.Init and each worker loads only its partition, never the whole model.
    # Stages 0-2 keep every parameter on every worker and load it whole.
    zero3_loading = HfDeepSpeedConfig(ds_config) if train_cfg.zero_stage == 3 else None
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model = model_class.from_pretrained(init_dir, dtype=torch.float32)
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = trained_model(model)  # what it loads besides (PPO's critic) is partitioned as well
    del zero3_loading  # loading is done; transformers' other ZeRO-3 paths (resizing) stay off
    model.train()
    optimizer = torch.optim.AdamW(_parameter_groups(model, train_cfg.weight_decay), lr=train_cfg.learning_rate)
    ds_engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: _lr_scheduler(opt, train_cfg, plan.total_steps),
        config=ds_config,
    )
    return ds_engine


def _lr_scheduler(optimizer, train_cfg: TrainConfig, total_steps: int):
    """A linear warm-up over train.warmup_ratio of the steps, then train.lr_schedule."""
    warmup = math.ceil(train_cfg.warmup_ratio * total_steps)
    if train_cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps, num_cycles=train_cfg.cosine_cycles)


def _parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only, not on biases or normalisation weights (as the
    Hugging Face Trainer the reference used does)."""
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = type(module).__name__.endswith("Norm")
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (no_decay if is_norm or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _restore(ds_engine, plan) -> tuple[int, list[dict]]:
    """(first step to run, metric history so far) from Ray Train's latest checkpoint."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    from train.safe_checkpoint import load_deepspeed_checkpoint  # imports deepspeed, as the engine's build does

    with checkpoint.as_directory() as directory:
        client_state = load_deepspeed_checkpoint(ds_engine, directory)
    if client_state is None:
        raise RuntimeError(f"the checkpoint in {checkpoint.path} holds no DeepSpeed state")
    if client_state["plan"] != asdict(plan):
        raise ValueError(
            f"the checkpoint in {checkpoint.path} was made with batch plan {client_state['plan']}, this run "
            f"has {asdict(plan)} (pairs, batch sizes, workers, epochs, shuffle or seed changed): its data "
            "position would be wrong. Train with resume=False to start over."
        )
    return client_state["step"], client_state["history"]


def _save(ds_engine, step: int, history: list[dict], plan, metrics: dict) -> None:
    """Rank-collective DeepSpeed checkpoint, handed to Ray Train, which merges the workers'
    files into one checkpoint directory under <out_dir>/ds_checkpoint and keeps the latest."""
    with tempfile.TemporaryDirectory(prefix="ds-checkpoint-") as directory:
        ds_engine.save_checkpoint(directory, tag=f"step_{step}",
                                  client_state={"step": step, "history": history, "plan": asdict(plan)})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"step_{step:08d}")
