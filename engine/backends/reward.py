"""Reward-model backends: a token-level reward model (engine/reward_model.py) served for the
reward stage. A reward model scores text, it does not generate, so these are not generative
backends (engine/backends/base.py) but implement one method of their own, `token_rewards`.
They are built like those, `cls(path, model_cfg)`, from engine.backends.REWARD_BACKENDS.

- hf: load_reward_model + score_tokens, model_cfg.batch_size conversations per forward.
- vllm: vLLM's pooling runner as a token classifier over a view of the exported directory
  (engine.reward_model.vllm_view, built in a temporary directory once per actor), every
  conversation of a call in one `encode`; the reward of a response token is read from its own
  position, as score_tokens reads it. Verified for the model types of
  engine.reward_layout.VLLM_HEAD_PREFIXES only. vLLM's engine core is a spawned process, as
  for the generative vllm backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from engine.backends.base import Prompt
from engine.config import ModelConfig


class RewardBackend(Protocol):
    max_model_len: int

    def token_rewards(self, items: list[Prompt], responses: list[str]) -> list[list[float]]:
        """Per (prompt, response), one reward per response token: the tokens of
        engine.chat.response_token_ids, the end-of-turn token included."""
        ...

    def close(self) -> None: ...


def _check_lengths(items: list[Prompt], responses: list[str]) -> None:
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} prompts but {len(responses)} responses")


class HFRewardBackend:
    def __init__(self, path: str, model_cfg: ModelConfig, *, device: str | None = None) -> None:
        import torch

        from engine.reward_model import load_reward_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_reward_model(path, getattr(torch, model_cfg.dtype), device)
        self.max_model_len = model_cfg.max_model_len
        self.batch_size = model_cfg.batch_size

    def token_rewards(self, items: list[Prompt], responses: list[str]) -> list[list[float]]:
        from engine.reward_model import score_tokens

        _check_lengths(items, responses)
        if not items:
            return []
        return score_tokens(self.model, self.processor, [item.image for item in items],
                            [item.text for item in items], responses, self.batch_size)

    def close(self) -> None:
        del self.model


class VLLMRewardBackend:
    def __init__(self, path: str, model_cfg: ModelConfig) -> None:
        from transformers import AutoProcessor
        from vllm import LLM
        from vllm.platforms import current_platform

        from engine import chat
        from engine.backends.vllm import DEFAULT_CPU_KVCACHE_GIB
        from engine.reward_model import vllm_view

        if current_platform.is_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
        self._view_root = tempfile.mkdtemp(prefix="reward-view-")
        try:
            view = str(vllm_view(path, Path(self._view_root) / "model"))
            self.processor = AutoProcessor.from_pretrained(view)
            multimodal = chat.is_multimodal(self.processor)
            self.llm = LLM(model=view, runner="pooling", convert="classify", pooler_config={"task": "token_classify"},
                           dtype=model_cfg.dtype, max_model_len=model_cfg.max_model_len,
                           gpu_memory_utilization=model_cfg.gpu_memory_utilization,
                           tensor_parallel_size=model_cfg.tensor_parallel_size,
                           # CUDA graphs pay off on GPU; on CPU eager mode skips their capture.
                           enforce_eager=current_platform.is_cpu(), seed=0, disable_log_stats=True,
                           **({"limit_mm_per_prompt": {"image": 1}} if multimodal else {}))
        except BaseException:
            shutil.rmtree(self._view_root, ignore_errors=True)
            raise
        self.max_model_len = model_cfg.max_model_len

    def token_rewards(self, items: list[Prompt], responses: list[str]) -> list[list[float]]:
        from vllm.pooling_params import PoolingParams

        from engine import chat

        _check_lengths(items, responses)
        if not items:
            return []
        requests, lengths = [], []
        for item, response in zip(items, responses):
            ids, n_response = chat.conversation_token_ids(self.processor, item.text, response, item.image is not None)
            request = {"prompt_token_ids": ids}
            if item.image is not None:
                request["multi_modal_data"] = {"image": item.image}
            requests.append(request)
            lengths.append(n_response)
        # The raw logit of every position (no sigmoid): the reward score_tokens gives.
        outputs = self.llm.encode(requests, pooling_task="token_classify",
                                  pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [output.outputs.data.reshape(-1)[-n:].tolist() for output, n in zip(outputs, lengths)]

    def close(self) -> None:
        """Stop the engine-core process now rather than at garbage collection."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        shutil.rmtree(self._view_root, ignore_errors=True)
