"""The plain transformers baselines the engine's optimisations are measured against: what a
user would write without them, in its strongest batched form, so a ratio credits only the
optimisation. Shared by the CPU benchmarks and bench/gpu_check.py.

- full_prefill_yes_no: every (image, question) row is a full prefill, image tokens included,
  `batch_size` rows (of any images) per left-padded forward. Each image is preprocessed once
  and its pixel_values repeated per row: the baseline loses on recomputing the prefix, not on
  redundant preprocessing.
- generate_n: one `model.generate(do_sample=True, num_return_sequences=n)` call on all prompts.
- synchronous_vllm: the vllm backend on one blocking `vllm.LLM.generate` call per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from PIL import Image

from engine import chat
from engine.backends.base import Prompt, SamplingParams
from engine.backends.hf import HFBackend, shared_prefix_length
from engine.config import ModelConfig


def encoded_rows(backend: HFBackend, images: Sequence[Image.Image], questions: list[str]) -> list[tuple[list[int], dict]]:
    """(token ids, image inputs) of every (image, question), image by image; each image is
    preprocessed once, as the prefix-reuse path does."""
    rows = []
    for image in images:
        first, token_rows = chat.encode_shared_image_prompts(backend.processor, image, questions)
        image_inputs = {key: value for key, value in first.items() if key not in chat.TOKEN_KEYS}
        rows += [(ids, image_inputs) for ids in token_rows]
    return rows


def left_padded(rows: list[tuple[list[int], dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """One forward's inputs: ids left padded, positions counted from each row's first real
    token (as unpadded), image inputs stacked row by row."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, _) in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    stacked = {key: torch.cat([inputs[key] for _, inputs in rows]) for key in rows[0][1]}
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **stacked}


@torch.inference_mode()
def full_prefill_yes_no(backend: HFBackend, images: Sequence[Image.Image], questions: list[str],
                        batch_size: int) -> list[list[tuple[float, float]]]:
    """Per image, (p_yes, p_no) of every question, as HFBackend.score_yes_no returns them."""
    rows = encoded_rows(backend, images, questions)
    pad_id = chat.pad_token_id(backend.tokenizer)
    flat: list[tuple[float, float]] = []
    for start in range(0, len(rows), batch_size):
        inputs = backend._on_device(left_padded(rows[start:start + batch_size], pad_id))
        logits = backend.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
        flat += backend._yes_no(logits)
    return [flat[i:i + len(questions)] for i in range(0, len(flat), len(questions))]


def prefix_flop_limit(processor, image: Image.Image, questions: list[str]) -> dict:
    """The most prefix reuse can save on the language model for one image's questions: tokens
    a full prefill per question runs over tokens reuse runs (the shared prefix once, then each
    question's own tokens). Linear-layer FLOPs scale with tokens; the vision tower, which the
    baseline also runs per question, is left out, so the real limit is a little higher."""
    _, token_rows = chat.encode_shared_image_prompts(processor, image, questions)
    prefix = shared_prefix_length(token_rows)
    suffix = sum(len(row) - prefix for row in token_rows) / len(token_rows)
    n = len(token_rows)
    return {"prefix_tokens": prefix, "mean_question_tokens": round(suffix, 1), "questions_per_image": n,
            "flop_limit": round(n * (prefix + suffix) / (prefix + n * suffix), 2)}


@torch.inference_mode()
def generate_n(backend: HFBackend, items: list[Prompt], n: int, params: SamplingParams) -> int:
    """n sampled answers per prompt from one generate call over all prompts (full vocabulary,
    no top-k, as the backend samples); returns the tokens generated, eos included."""
    inputs = chat.encode_prompts(backend.processor, [item.image for item in items], [item.text for item in items])
    output = backend.model.generate(
        **backend._on_device(inputs), do_sample=params.temperature > 0, num_return_sequences=n,
        temperature=params.temperature or None, top_p=params.top_p, top_k=0,
        max_new_tokens=params.max_new_tokens, pad_token_id=chat.pad_token_id(backend.tokenizer),
    )
    return sum(answer_length(row, backend.stop_ids) for row in output[:, inputs["input_ids"].shape[1]:].tolist())


def answer_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Generated tokens up to and including the first stop token (generate pads after it)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def synchronous_vllm(path: str, model_cfg: ModelConfig):
    """The vllm backend on one synchronous vllm.LLM.generate call per backend call (what it ran
    before the async engine), with the same engine arguments: the reference the async engine
    must answer as (tests/test_backend_vllm.py) and be faster than (bench_vllm_overlap)."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    from engine.backends.vllm import VLLMBackend

    class SynchronousVLLM(VLLMBackend):
        async def _start_engine(self, args):
            return LLM.from_engine_args(EngineArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineArgs)}))

        def _generate(self, requests, params):
            return self.engine.generate(requests, params, use_tqdm=False) if requests else []

        def close(self):
            self.engine.llm_engine.engine_core.shutdown()
            self._stop_loop()

    return SynchronousVLLM(path, model_cfg)
