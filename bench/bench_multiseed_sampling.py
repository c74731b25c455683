"""Multi-seed sampling of n answers per prompt: one batched decode vs two baselines.

The batched path (engine.backends.hf.HFBackend.sample with n seeds) prefills each prompt once
and decodes its n answers as one batch, each row with its own seeded generator. Baselines:
the strong one, one `model.generate(do_sample=True, num_return_sequences=n)` call over all
prompts (bench.baselines.generate_n), and the naive one, the same seeds one call at a time
(prefill + decode per answer). All run in this process on the same prompts, best of
--repeats. generate draws from its own random stream, so its answers (and their lengths)
differ: every ratio is of generated tokens/s, method / baseline. The per-call loop's answers
must equal the batched ones (checked).

    python -m bench.bench_multiseed_sampling                  # tiny LLaVA on CPU
    python -m bench.bench_multiseed_sampling --model /models/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import click
import torch

from bench.baselines import generate_n
from bench.inputs import noise_images
from bench.timing import best_seconds
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
    items = [Prompt(image, "Describe the image in detail.") for image in noise_images(n_prompts, image_size)]
    seeds = [[1000 * i + j for j in range(n)] for i in range(n_prompts)]
    params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)

    def batched():
        return backend.sample(items, seeds, params)

    def sequential():
        return [[backend.sample([item], [[seed]], params)[0][0] for seed in item_seeds] for item, item_seeds in zip(items, seeds)]

    def generate():
        return generate_n(backend, items, n, params)

    torch.manual_seed(0)
    together, alone = batched(), sequential()  # warm-up, and the equality check
    same = sum(a == b for row_a, row_b in zip(together, alone) for a, b in zip(row_a, row_b))
    tokens = sum(c.n_tokens for row in together for c in row)
    counts = {"sequential": tokens, "generate": generate(), "batched": tokens}  # generate: warm-up, its own count
    fns = {"sequential": sequential, "generate": generate, "batched": batched}
    rates = {name: (best_seconds(fn, repeats, device), counts[name]) for name, fn in fns.items()}
    print(f"model={model} device={device} dtype={dtype} prompts={n_prompts} n={n} max_new_tokens={max_new_tokens}")
    print(f"{'method':<44}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'ratio vs per-call':>19}{'ratio vs generate':>19}")
    labels = {"sequential": "one answer per call", "generate": "generate(num_return_sequences=n), all prompts",
              "batched": "n answers in one batch"}
    per_second = {name: count / seconds for name, (seconds, count) in rates.items()}
    for name, label in labels.items():
        seconds, count = rates[name]
        print(f"{label:<44}{seconds:>9.3f}{count:>8}{per_second[name]:>10.1f}"
              f"{per_second[name] / per_second['sequential']:>19.2f}{per_second[name] / per_second['generate']:>19.2f}")
    print(f"answers identical to the per-sample loop: {same}/{n_prompts * n}")
    backend.close()


if __name__ == "__main__":
    main()
