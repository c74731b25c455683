"""Yes/no scoring of Q questions per image: prefix reuse vs two full-prefill baselines.

Prefix reuse (engine.backends.hf.HFBackend.score_yes_no) computes the image and chat header
once per image and runs the questions' own tokens as one batch on top. Baselines: the strong
one, a batched full prefill (bench.baselines.full_prefill_yes_no: --baseline-batch rows of
any images per padded forward, each image preprocessed once), and the naive one, one full
forward per question with its own preprocessing (score_yes_no_per_question). All are timed
in this run on the same images and questions, best of --repeats; each ratio = that baseline's
time / prefix time. The FLOP limit is what reuse could save at most for these shapes.

    python -m bench.bench_yes_no_prefix                       # tiny LLaVA on CPU
    python -m bench.bench_yes_no_prefix --model /models/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import click
import numpy as np

from bench.baselines import full_prefill_yes_no, prefix_flop_limit
from bench.inputs import claim_questions, noise_images
from bench.timing import best_seconds
from engine.backends.base import ImageQuestions
from engine.backends.hf import HFBackend
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path


@click.command()
@click.option("--model", default="tiny:llava", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--images", "n_images", default=4, show_default=True)
@click.option("--questions", "n_questions", default=16, show_default=True, help="Questions per image.")
@click.option("--batch-size", default=16, show_default=True, help="Questions per forward on the shared prefix.")
@click.option("--baseline-batch", default=64, show_default=True, help="Rows per forward of the batched full prefill.")
@click.option("--image-size", default=336, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def main(model, cache_dir, device, dtype, n_images, n_questions, batch_size, baseline_batch, image_size, repeats):
    backend = HFBackend(resolve_model_path(model, cache_dir), ModelConfig(path=model, dtype=dtype, batch_size=batch_size),
                        device=device)
    pictures, asked = noise_images(n_images, image_size), claim_questions(n_questions)
    items = [ImageQuestions(picture, asked) for picture in pictures]
    methods = {
        "per_question": lambda: backend.score_yes_no_per_question(items),
        "full_prefill": lambda: full_prefill_yes_no(backend, pictures, asked, baseline_batch),
        "prefix": lambda: backend.score_yes_no(items),
    }
    results = {name: np.array(fn()) for name, fn in methods.items()}  # warm-up, and the agreement check
    gap = max(float(np.abs(results["prefix"] - results[name]).max()) for name in ("per_question", "full_prefill"))
    timings = {name: best_seconds(fn, repeats, device) for name, fn in methods.items()}
    scored = n_images * n_questions
    print(f"model={model} device={device} dtype={dtype} images={n_images} questions/image={n_questions} "
          f"baseline_batch={baseline_batch}")
    print(f"{'method':<40}{'seconds':>9}{'questions/s':>13}{'ratio vs per-q':>16}{'ratio vs batched':>18}")
    labels = {"per_question": "full forward per question", "full_prefill": f"batched full prefill ({baseline_batch}/forward)",
              "prefix": "shared prefix, batched questions"}
    for name, label in labels.items():
        t = timings[name]
        print(f"{label:<40}{t:>9.3f}{scored / t:>13.1f}{timings['per_question'] / t:>16.2f}{timings['full_prefill'] / t:>18.2f}")
    limit = prefix_flop_limit(backend.processor, pictures[0], asked)
    print(f"max |p_prefix - p_baseline| = {gap:.2e}; FLOP limit of reuse = {limit['flop_limit']:.2f}x "
          f"({limit['prefix_tokens']} prefix tokens, {limit['mean_question_tokens']} question tokens)")
    backend.close()


if __name__ == "__main__":
    main()
