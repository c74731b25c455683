"""The config rules that tie fields together, which per-field range annotations (engine.config)
cannot express. check_config runs in every job's preflight, before Ray starts or a model loads."""

from __future__ import annotations

from engine import hallucination as hal
from engine.config import Config, EvalConfig, ModelConfig, Resources
from engine.errors import ConfigError
from engine.sampling import SamplingParams

# The model each actor-pool stage loads (a models.<role>), as the pipeline, bon and eval run them.
STAGE_MODELS = {"sample": "policy", "split": "splitter", "score": "labeler", "pair": "policy",
                "bon": "policy", "eval": "policy"}


def check_config(cfg: Config) -> None:
    """Raise ConfigError, naming the keys and what they must be, on the first rule broken."""
    check_run_name(cfg.run.name)
    for stage, role in STAGE_MODELS.items():
        resources = getattr(cfg, stage).resources
        check_actor_range(stage, resources)
        check_tensor_parallel(stage, resources, role, getattr(cfg.models, role))
    check_sampling(cfg)
    check_eval(cfg.eval)


def check_run_name(name: str) -> None:
    """The run lives in <output_dir>/<name>/: a name that is not one path component would put it
    (and what a resumed or fresh run deletes there) somewhere else."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"run.name = {name!r} must be a single path component: not empty, "
                          "not '.' or '..', no '/' or '\\'")


def check_actor_range(stage: str, resources: Resources) -> None:
    if resources.max_actors < resources.min_actors:
        raise ConfigError(f"{stage}.resources.max_actors = {resources.max_actors} must be >= "
                          f"{stage}.resources.min_actors = {resources.min_actors}")


def check_tensor_parallel(stage: str, resources: Resources, role: str, model_cfg: ModelConfig) -> None:
    """A tensor-parallel vllm actor gets num_gpus x tensor_parallel_size GPUs (engine.config.actor_gpus),
    one per rank: a fraction of a GPU per rank cannot be split across ranks."""
    if model_cfg.backend == "vllm" and model_cfg.tensor_parallel_size > 1 and resources.num_gpus != 1:
        raise ConfigError(
            f"{stage}.resources.num_gpus = {resources.num_gpus} must be 1 when models.{role}.tensor_parallel_size = "
            f"{model_cfg.tensor_parallel_size}: it is the GPUs per tensor-parallel rank, and the actor gets "
            "num_gpus x tensor_parallel_size")


def check_sampling(cfg: Config) -> None:
    """Build every stage's decoding parameters once, as the stages will, so a setting they
    refuse fails here with its section instead of inside a Ray actor after a model loaded."""
    sample, split, bon = cfg.sample, cfg.split, cfg.bon
    sections = {
        "sample": [dict(temperature=t, top_p=sample.top_p, max_new_tokens=sample.max_new_tokens)
                   for t in sample.confounded_temperatures or [sample.temperature]],
        "split": [dict(temperature=split.temperature, top_p=split.top_p, max_new_tokens=split.max_new_tokens)],
        "bon": [dict(temperature=bon.temperature, top_p=bon.top_p, max_new_tokens=bon.max_new_tokens)],
        "eval": [dict(temperature=cfg.eval.temperature, max_new_tokens=cfg.eval.max_new_tokens)],
    }
    for section, settings in sections.items():
        for params in settings:
            try:
                SamplingParams(**params)
            except ValueError as exc:
                raise ConfigError(f"{section}: {exc}") from None


def check_eval(eval_cfg: EvalConfig) -> None:
    """Settings no held-out row could be evaluated with."""
    template = eval_cfg.probe_question
    try:
        usable = "{object}" in template and bool(template.format(object="x"))
    except (KeyError, IndexError, ValueError):  # another placeholder, or a stray brace
        usable = False
    if not usable:
        raise ConfigError(f"eval.probe_question {template!r} must hold {{object}} and no other placeholder")
    unknown = sorted(set(eval_cfg.vocabulary) - set(hal.vocabulary_groups()))
    if unknown:
        raise ConfigError(f"eval.vocabulary names unknown group(s) {unknown}; known: {list(hal.vocabulary_groups())}")
