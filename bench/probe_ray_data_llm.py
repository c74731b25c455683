"""Ray Data LLM with an image model, against the project's VLLMBackend (docs/serving.md).

Image + prompt rows go through `ray.data.llm.build_processor(vLLMEngineProcessorConfig)`:
sampled answers with per-row seeds, and yes/no scoring (one greedy token with
`logprob_token_ids` = the yes/no ids). The same inputs then go through `VLLMBackend.sample`
and `VLLMBackend.score_yes_no`; the script prints whether the texts are equal per seed and
the largest yes/no probability difference.

How the rows carry the image (`--input`):
- tokens (default): `tokenized_prompt` (engine.chat's ids, image placeholder unexpanded, as the
  backend sends them) and `multimodal_data` {"image": PIL image}; Ray Data LLM's chat-template,
  tokenize and detokenize stages are off.
- template: engine.chat's user message (an image part without data) and `multimodal_data`,
  through Ray Data LLM's chat-template and tokenize stages.
- messages: OpenAI-style `messages` with the image inline as a PNG data URL, through its
  `prepare_multimodal_stage`, chat-template and tokenize stages.
Sampling and scoring rows share one processor (one engine start): every row's
`sampling_params` has the same keys, since rows with different keys cannot share a batch.

Slow (one Ray Data LLM engine start and one backend engine start, minutes on two cores);
not part of the test suite.

    python -m bench.probe_ray_data_llm
    python -m bench.probe_ray_data_llm --input messages --skip-backend
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import time

import click
import numpy as np
from PIL import Image

from engine import chat
from engine.backends.base import ImageQuestions, Prompt, SamplingParams, yes_no_token_ids
from engine.config import ModelConfig, RayConfig
from engine.schemas import user_turn
from engine.tiny_models import IMAGE_TOKEN, resolve_model_path

QUESTIONS = [
    "Is there a red circle in the image? Please answer yes or no.",
    "Is it blue?",
    "Are there two green squares in the top left? Please answer yes or no.",
]
SAMPLE_SEEDS = [5, 6, 5]
SAMPLE_PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def inputs() -> tuple[Prompt, list[ImageQuestions]]:
    return (Prompt(noise_image(7), "Describe the image in detail."),
            [ImageQuestions(noise_image(3), QUESTIONS), ImageQuestions(noise_image(9, (96, 64)), QUESTIONS[1:])])


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the engine sees the same pixels
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ray_rows(processor, kind: str, yes_no: list[int]) -> list[dict]:
    """One row per request: the sampled answers first, then every (image, question)."""
    sample, score = inputs()
    requests = [("sample", i, sample.image, sample.text,
                 {"temperature": SAMPLE_PARAMS.temperature, "top_p": SAMPLE_PARAMS.top_p,
                  "max_tokens": SAMPLE_PARAMS.max_new_tokens, "seed": seed}) for i, seed in enumerate(SAMPLE_SEEDS)]
    requests += [("score", i, item.image, question, {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1, "seed": 0})
                 for i, item in enumerate(score) for question in item.questions]
    rows = []
    for n, (task, item, image, text, params) in enumerate(requests):
        # The same keys on every row: yes/no log-probs are asked of the sampled rows too.
        row = {"n": n, "task": task, "item": item, "sampling_params": {**params, "logprob_token_ids": yes_no}}
        if kind == "tokens":
            row |= {"tokenized_prompt": chat.prompt_token_ids(processor, text, True),
                    "multimodal_data": {"image": image}}
        elif kind == "template":
            row |= {"messages": user_turn(text, True), "multimodal_data": {"image": image}}
        else:
            content = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": text}]
            row["messages"] = [{"role": "user", "content": content}]
        rows.append(row)
    return rows


def alias_chat_utils(row: dict) -> dict:
    """Ray 2.60's prepare_multimodal stage imports vllm.entrypoints.chat_utils, which vLLM 0.32
    moved to vllm.renderers.chat_utils (same parse_chat_messages_async). Run as the processor's
    preprocess, which Ray Data fuses into the stage's worker, it makes the old name import."""
    import sys

    import vllm.renderers.chat_utils

    sys.modules.setdefault("vllm.entrypoints.chat_utils", vllm.renderers.chat_utils)
    return row


def run_ray_data_llm(path: str, kind: str, max_model_len: int, yes_no: tuple[list[int], list[int]],
                     alias: bool) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoProcessor

    from engine.ray_runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=256))
    rows = ray_rows(AutoProcessor.from_pretrained(path), kind, yes_no[0] + yes_no[1])
    config = vLLMEngineProcessorConfig(
        model_source=path,
        # The backend's engine arguments (engine.backends.vllm.engine_args) on CPU.
        engine_kwargs={"dtype": "float32", "max_model_len": max_model_len, "enable_prefix_caching": True,
                       "enforce_eager": True, "seed": 0, "limit_mm_per_prompt": {"image": 1},
                       "disable_log_stats": True},
        batch_size=len(rows),
        concurrency=1,
        placement_group_config={"bundles": [{"CPU": 1}]},  # else it asks for a GPU
        log_engine_metrics=False,  # on: vLLM's Ray stat logger imports ray.serve (not installed)
        chat_template_stage=kind != "tokens",
        tokenize_stage=kind != "tokens",
        detokenize_stage=False,
        prepare_multimodal_stage=kind == "messages" and {"enabled": True, "chat_template_content_format": "openai"},
    )
    processor = build_processor(
        config,
        preprocess=alias_chat_utils if alias else None,
        postprocess=lambda row: {"n": row["n"], "task": row["task"], "item": row["item"],
                                 "text": row["generated_text"], "logprobs": json.dumps(_first_logprobs(row)),
                                 "prompt_ids": json.dumps([int(t) for t in row["prompt_token_ids"]]),
                                 "llm_s": row["time_taken_llm"]},
    )
    start = time.perf_counter()
    out = sorted(processor(ray.data.from_items(rows)).take_all(), key=lambda row: row["n"])
    seconds = time.perf_counter() - start
    ray.shutdown()
    samples = [row["text"] for row in out if row["task"] == "sample"]
    scores = [_yes_no(json.loads(row["logprobs"]), yes_no) for row in out if row["task"] == "score"]
    # vLLM hands back the prompt with the image placeholder expanded: collapse it to compare.
    image_id = chat.tokenizer_of(AutoProcessor.from_pretrained(path)).convert_tokens_to_ids(IMAGE_TOKEN)
    firsts = {task: _collapse(next(json.loads(row["prompt_ids"]) for row in out if row["task"] == task), image_id)
              for task in ("sample", "score")}
    # seconds: the whole pipeline, engine start included; requests_s: the longest request in the engine.
    return {"seconds": round(seconds, 1), "requests_s": round(max(row["llm_s"] for row in out), 1),
            "sample": samples, "yes_no": scores, "first_prompt_ids": firsts}


def _collapse(ids: list[int], repeated: int) -> list[int]:
    return [t for i, t in enumerate(ids) if not (t == repeated and i and ids[i - 1] == repeated)]


def _first_logprobs(row: dict) -> dict:
    """{token id: log-prob} of the first generated token (Arrow may hand the dict back as pairs)."""
    first = row["logprobs"][0]
    items = first.items() if isinstance(first, dict) else first
    return {str(token): (entry or {}).get("logprob") for token, entry in items if entry is not None}


def _yes_no(logprobs: dict, yes_no: tuple[list[int], list[int]]) -> tuple[float, float]:
    return tuple(sum(math.exp(logprobs[str(token)]) for token in ids) for ids in yes_no)


def run_backend(path: str, max_model_len: int) -> dict:
    from engine.backends.vllm import VLLMBackend

    started = time.perf_counter()
    backend = VLLMBackend(path, ModelConfig(path=path, backend="vllm", max_model_len=max_model_len))
    start_s = time.perf_counter() - started
    try:
        sample, score = inputs()
        firsts = {"sample": chat.prompt_token_ids(backend.processor, sample.text, True),
                  "score": chat.prompt_token_ids(backend.processor, score[0].questions[0], True)}
        start = time.perf_counter()
        samples = [c.text for c in backend.sample([sample], [SAMPLE_SEEDS], SAMPLE_PARAMS)[0]]
        scores = [pair for row in backend.score_yes_no(score) for pair in row]
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    return {"engine_start_s": round(start_s, 1), "seconds": round(seconds, 1), "sample": samples, "yes_no": scores,
            "first_prompt_ids": firsts}


@click.command()
@click.option("--model", default="tiny:llava", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--input", "kind", type=click.Choice(["tokens", "template", "messages"]), default="tokens",
              show_default=True,
              help="Token ids + multimodal_data; chat messages + multimodal_data through Ray Data LLM's "
                   "chat-template and tokenize stages; or messages with the image inline, through its "
                   "prepare_multimodal stage too.")
@click.option("--alias-chat-utils", "alias", is_flag=True,
              help="With --input messages: make vllm.entrypoints.chat_utils import (see alias_chat_utils).")
@click.option("--skip-backend", is_flag=True, help="Run Ray Data LLM only.")
@click.option("--max-model-len", default=512, show_default=True)
@click.option("--out", default=None, help="Also write the results here as JSON.")
def main(model, cache_dir, kind, alias, skip_backend, max_model_len, out):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    path = resolve_model_path(model, cache_dir)
    from transformers import AutoProcessor

    yes_no = yes_no_token_ids(chat.tokenizer_of(AutoProcessor.from_pretrained(path)))
    results = {"input": kind}
    try:
        results["ray_data_llm"] = run_ray_data_llm(path, kind, max_model_len, yes_no, alias)
    except Exception as exc:  # the finding is the error: its innermost "...Error: message" line
        lines = [line.strip() for line in str(exc).splitlines()]
        errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)] or lines[-1:]
        results["ray_data_llm"] = {"error": errors[0][:300]}
    if not skip_backend:
        results["backend"] = run_backend(path, max_model_len)
    ray_side, ours = results["ray_data_llm"], results.get("backend")
    if ours and "error" not in ray_side:
        results["same_prompt_ids"] = ray_side["first_prompt_ids"] == ours["first_prompt_ids"]
        results["same_texts_per_seed"] = ray_side["sample"] == ours["sample"]
        results["max_yes_no_diff"] = max(abs(a - b) for r, o in zip(ray_side["yes_no"], ours["yes_no"], strict=True)
                                         for a, b in zip(r, o))
    print(json.dumps(results, indent=1))
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
