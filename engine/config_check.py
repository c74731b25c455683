"""The config rules that tie fields together, which per-field range annotations (engine.config)
cannot express. check_config runs in every job's preflight, before Ray starts or a model loads."""

from __future__ import annotations

from engine import families
from engine import hallucination as hal
from engine.backends import WEIGHT_BACKENDS
from engine.claims import CHARS_PER_TOKEN, claims_token_estimate
from engine.config import Config, EvalConfig, ModelConfig, Resources
from engine.errors import ConfigError
from engine.sampling import SamplingParams

def check_config(cfg: Config) -> None:
    """Raise ConfigError, naming the keys and what they must be, on the first rule broken."""
    check_run_name(cfg.run.name)
    check_families(cfg)
    check_stages(cfg)
    check_actor_range("eval", cfg.eval.resources)
    check_tensor_parallel("eval", cfg.eval.resources, "models.policy", cfg.models.policy)
    try:
        SamplingParams(temperature=cfg.eval.temperature, max_new_tokens=cfg.eval.max_new_tokens)
    except ValueError as exc:
        raise ConfigError(f"eval: {exc}") from None
    check_eval(cfg.eval)
    check_split_budget(cfg)


def check_stages(cfg: Config) -> None:
    """Every stage of the generation, Best-of-N and rollout passes, from their stage lists: its
    actor range, its GPUs against its model's tensor parallelism, and the settings its
    constructor builds (decoding parameters), so a value it would refuse fails here, not in an
    actor. Whether a job that runs the reward stage has a reward model is preflight's
    (engine.preflight.check_reward_model): the other jobs need none."""
    from engine.bon import bon_models
    from engine.bon_pass import BON_STAGES
    from engine.pipeline import STAGES, generation_models
    from engine.rollouts import ROLLOUT_STAGES, rollout_models

    for stages, models, model_key in ((STAGES, generation_models(cfg), "models.{role}"),
                                      (BON_STAGES, bon_models(cfg), "models.policy"),
                                      (ROLLOUT_STAGES, rollout_models(cfg), "models.{role}")):
        for spec in stages:
            section = getattr(cfg, spec.section)
            check_actor_range(spec.section, section.resources)
            if spec.models:
                role = spec.models[0]
                check_tensor_parallel(spec.section, section.resources, model_key.format(role=role), models[role])
            try:
                spec.stage_class.check_config(section)
            except ValueError as exc:
                raise ConfigError(f"{spec.section}: {exc}") from None


# The roles that take images; the splitter reads text only, so any family can split.
IMAGE_ROLES = ("policy", "labeler")


def check_families(cfg: Config) -> None:
    """A tiny:<family> model must be a known family, served by its backend, and take images in a
    role that gets them: found here rather than when the first batch reaches the model."""
    for role in ("policy", "labeler", "splitter"):
        model_cfg = getattr(cfg.models, role)
        if not model_cfg.path.startswith(families.TINY_PREFIX) or model_cfg.backend not in WEIGHT_BACKENDS:
            continue
        key = f"models.{role}"
        try:
            name, _ = families.parse_tiny_name(model_cfg.path)
        except ValueError as exc:
            raise ConfigError(f"{key}.path: {exc}") from None
        family = families.FAMILIES[name]
        if model_cfg.backend in family.refused:
            raise ConfigError(f"{key}: backend = {model_cfg.backend!r} cannot serve {model_cfg.path!r}: "
                              f"{family.refused[model_cfg.backend]}")
        if role in IMAGE_ROLES and not family.multimodal:
            raise ConfigError(f"{key}.path = {model_cfg.path!r} is a text-only family, but the {role} reads images")


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


def check_tensor_parallel(stage: str, resources: Resources, model_key: str, model_cfg: ModelConfig) -> None:
    """A tensor-parallel vllm actor gets num_gpus x tensor_parallel_size GPUs (engine.config.actor_gpus),
    one per rank: a fraction of a GPU per rank cannot be split across ranks."""
    if model_cfg.backend == "vllm" and model_cfg.tensor_parallel_size > 1 and resources.num_gpus != 1:
        raise ConfigError(
            f"{stage}.resources.num_gpus = {resources.num_gpus} must be 1 when {model_key}.tensor_parallel_size = "
            f"{model_cfg.tensor_parallel_size}: it is the GPUs per tensor-parallel rank, and the actor gets "
            "num_gpus x tensor_parallel_size")


def check_split_budget(cfg: Config) -> None:
    """A splitter LLM's token budget must hold the longest claim list the schema admits: a list
    cut off by split.max_new_tokens does not parse, is re-drawn and finally diverted, so long
    answers would lose their pairs. Rule-based splitters (no tokens) are exempt."""
    split = cfg.split
    if cfg.models.splitter.backend not in WEIGHT_BACKENDS:
        return
    needed = claims_token_estimate(split.max_claims, split.max_claim_chars, split.quote_sentences)
    strings = "quote, fact and question" if split.quote_sentences else "fact and question"
    if split.max_new_tokens < needed:
        raise ConfigError(
            f"split.max_new_tokens = {split.max_new_tokens} cannot hold split.max_claims = {split.max_claims} "
            f"claims of split.max_claim_chars = {split.max_claim_chars} characters ({strings} each): "
            f"about {needed} tokens of JSON at {CHARS_PER_TOKEN} characters per token; raise it or lower those")


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
