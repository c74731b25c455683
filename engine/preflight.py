"""Checks that run before Ray starts or any model loads, so a bad setting or path fails in
seconds with the key that set it. Every job runs `preflight` first."""

from __future__ import annotations

import os
from typing import Mapping

import msgspec

from engine import hub
from engine.backends import REWARD_BACKENDS, WEIGHT_BACKENDS
from engine.config import Config, ModelConfig
from engine.config_check import check_config
from engine.errors import PreflightError
from engine.inputs import check_unique_ids
from engine.reward_layout import HEAD_FILE, VLLM_HEAD_PREFIXES
from engine.storage import exists, join, read_json


def preflight(cfg: Config, inputs: Mapping[str, str] | None = None,
              models: Mapping[str, ModelConfig] | None = None,
              reward_models: Mapping[str, ModelConfig] | None = None) -> None:
    """check_config, then every input and model path the job reads, each keyed by the config key
    or option that set it, and input.path's instruction ids, which must not repeat. The defaults
    are those of a run of iterations: input.path (and eval.heldout_path when iterations are
    evaluated) and the three models. `reward_models` are the token-level reward models the job
    loads (a job running the reward stage: {"models.reward_model.path": cfg.models.reward_model}),
    each checked by check_reward_model."""
    check_config(cfg)
    if inputs is None:
        inputs = {"input.path": cfg.input.path}
        if cfg.eval.enabled:
            inputs["eval.heldout_path"] = cfg.eval.heldout_path
    if models is None:
        from engine.pipeline import generation_models

        models = {f"models.{role}.path": model for role, model in generation_models(cfg).items()}
    for key, path in inputs.items():
        if not _exists(key, path):
            raise PreflightError(f"{key} {path!r} does not exist")
    if "input.path" in inputs:
        check_unique_ids(cfg.input)
    for key, model in models.items():
        check_model_path(key, model)
    for key, model in (reward_models or {}).items():
        check_reward_model(key, model)


def policy_at(cfg: Config, option: str, path: str | None) -> dict[str, ModelConfig]:
    """{key: model} for a job whose `option` (e.g. --init) may replace models.policy.path; the
    model keeps models.policy's backend settings."""
    if path is None:
        return {"models.policy.path": cfg.models.policy}
    return {option: msgspec.structs.replace(cfg.models.policy, path=path)}


def ppo_models(cfg: Config) -> tuple[dict[str, ModelConfig], dict[str, ModelConfig]]:
    """(models, reward_models) arguments of preflight for jobs/ppo.py: the policy and the
    reference when [ppo] names one (with the policy's settings); the reward model and the first
    critic when [ppo] names one (with the reward model's)."""
    models = {"models.policy.path": cfg.models.policy}
    if cfg.ppo.reference:
        models["ppo.reference"] = msgspec.structs.replace(cfg.models.policy, path=cfg.ppo.reference)
    reward_models = {"models.reward_model.path": cfg.models.reward_model}
    if cfg.ppo.critic:
        reward_models["ppo.critic"] = msgspec.structs.replace(cfg.models.reward_model, path=cfg.ppo.critic)
    return models, reward_models


def check_model_path(key: str, model: ModelConfig) -> None:
    """A model path that weights load from must be a tiny: model, an existing local/fsspec
    directory, or a hub id such as `llava-hf/llava-1.5-7b-hf`: any when the hub is allowed,
    one the Hugging Face cache holds when it is not (HF_HUB_OFFLINE)."""
    path = model.path
    if model.backend not in WEIGHT_BACKENDS or path.startswith("tiny:") or _exists(key, path):
        return
    hub_allowed = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false")
    if hub.is_hub_id(path) and (hub_allowed or hub.is_cached(path)):
        return
    raise PreflightError(f"{key} {path!r} does not exist"
                         + ("" if hub_allowed else " (hub access is off and the Hugging Face cache lacks it)"))


def check_reward_model(key: str, model: ModelConfig) -> None:
    """A reward model must be set, be a directory jobs/train_rm.py exported (its HEAD_FILE), and
    have a backend that serves it: hf, or vllm for the model types it was verified on
    (engine.reward_layout.VLLM_HEAD_PREFIXES). `key` is its path's key (models.reward_model.path)."""
    section = key.removesuffix(".path")
    if not model.path:
        raise PreflightError(f"{key} is empty, but this job runs the reward stage: set it to a reward model "
                             "directory (jobs/train_rm.py --out)")
    if model.backend not in REWARD_BACKENDS:
        raise PreflightError(f"{section}.backend = {model.backend!r} cannot serve a reward model; "
                             f"use one of {', '.join(map(repr, REWARD_BACKENDS))}")
    if model.path.startswith("tiny:") or not _exists(key, join(model.path, HEAD_FILE)):
        raise PreflightError(f"{key} {model.path!r} has no {HEAD_FILE}: it is not a reward model "
                             "jobs/train_rm.py exported")
    if model.backend == "vllm":
        model_type = read_json(join(model.path, "config.json")).get("model_type")
        if model_type not in VLLM_HEAD_PREFIXES:
            raise PreflightError(f"{section}.backend = 'vllm' is verified for reward models of model type "
                                 f"{', '.join(map(repr, VLLM_HEAD_PREFIXES))} only, not {model_type!r}: "
                                 "use backend = 'hf'")


def _exists(key: str, path: str) -> bool:
    try:
        return exists(path)
    except Exception as exc:  # an unknown protocol, missing credentials, a network error
        raise PreflightError(f"{key} {path!r} is not reachable: {type(exc).__name__}: {exc}") from None
