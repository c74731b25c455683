"""Multi-seed sampling of n answers per prompt: one batched decode vs a per-sample loop.

The batched path (engine.backends.hf.HFBackend.sample with n seeds) prefills the prompt once
and decodes the n answers as one batch, each row with its own seeded generator. The baseline
samples the same seeds one call at a time (prefill + decode per answer). Both run in this
process on the same prompts and seeds, best of --repeats; ratio = baseline time / batched
time. The answers must be identical (checked), so both generate the same number of tokens.

    python -m bench.bench_multiseed_sampling                  # tiny LLaVA on CPU
    python -m bench.bench_multiseed_sampling --model /models/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import timeit

import click
import numpy as np
from PIL import Image

from engine.backends.base import Prompt, SamplingParams
from engine.backends.hf import HFBackend
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path


@click.command()
@click.option("--model", default="tiny:llava", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--prompts", "n_prompts", default=2, show_default=True)
@click.option("--n", default=10, show_default=True, help="Answers (seeds) per prompt.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--image-size", default=336, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def main(model, cache_dir, device, dtype, n_prompts, n, max_new_tokens, temperature, image_size, repeats):
    backend = HFBackend(resolve_model_path(model, cache_dir), ModelConfig(path=model, dtype=dtype), device=device)
    rng = np.random.default_rng(0)
    items = [
        Prompt(Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)), "Describe the image in detail.")
        for _ in range(n_prompts)
    ]
    seeds = [[1000 * i + j for j in range(n)] for i in range(n_prompts)]
    params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)

    def batched():
        return backend.sample(items, seeds, params)

    def sequential():
        return [[backend.sample([item], [[seed]], params)[0][0] for seed in item_seeds] for item, item_seeds in zip(items, seeds)]

    together, alone = batched(), sequential()  # warm-up, and the equality check
    same = sum(a == b for row_a, row_b in zip(together, alone) for a, b in zip(row_a, row_b))
    tokens = sum(c.n_tokens for row in together for c in row)
    timings = {name: min(timeit.repeat(fn, number=1, repeat=repeats)) for name, fn in (("sequential", sequential), ("batched", batched))}
    print(f"model={model} device={device} dtype={dtype} prompts={n_prompts} n={n} max_new_tokens={max_new_tokens}")
    print(f"{'method':<30}{'seconds':>10}{'tokens/s':>12}{'ratio':>8}")
    for name, label in (("sequential", "one answer per call"), ("batched", "n answers in one batch")):
        print(f"{label:<30}{timings[name]:>10.3f}{tokens / timings[name]:>12.1f}{timings['sequential'] / timings[name]:>8.2f}")
    print(f"answers identical to the per-sample loop: {same}/{n_prompts * n}; tokens generated: {tokens}")
    backend.close()


if __name__ == "__main__":
    main()
