"""Yes/no scoring of Q questions per image: prefix reuse vs one full forward per question.

Prefix reuse (engine.backends.hf.HFBackend.score_yes_no) computes the image and chat header
once per image and runs the questions' own tokens as one batch on top; the baseline runs one
full forward per question (score_yes_no_per_question). Both are timed in this run, on the same
images and questions, best of --repeats; ratio = baseline time / prefix time.

    python -m bench.bench_yes_no_prefix                       # tiny LLaVA on CPU
    python -m bench.bench_yes_no_prefix --model /models/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import itertools
import timeit

import click
import numpy as np
from PIL import Image

from engine import vocabulary
from engine.backends.hf import HFBackend
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path


def questions(count: int) -> list[str]:
    """Claim-style questions of the synthetic world, as the labeler receives them."""
    combos = itertools.product(vocabulary.COLOURS, vocabulary.SHAPES, vocabulary.POSITIONS)
    return [
        f"Is there a {colour} {shape} in the {position} of the image? Please answer yes or no."
        for colour, shape, position in itertools.islice(combos, count)
    ]


def images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


@click.command()
@click.option("--model", default="tiny:llava", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--images", "n_images", default=4, show_default=True)
@click.option("--questions", "n_questions", default=16, show_default=True, help="Questions per image.")
@click.option("--batch-size", default=16, show_default=True, help="Questions per forward on the shared prefix.")
@click.option("--image-size", default=336, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def main(model, cache_dir, device, dtype, n_images, n_questions, batch_size, image_size, repeats):
    backend = HFBackend(resolve_model_path(model, cache_dir), ModelConfig(path=model, dtype=dtype, batch_size=batch_size),
                        device=device)
    pictures, asked = images(n_images, image_size), questions(n_questions)

    def prefix():
        return [backend.score_yes_no(picture, asked) for picture in pictures]

    def baseline():
        return [backend.score_yes_no_per_question(picture, asked) for picture in pictures]

    shared, full = prefix(), baseline()  # warm-up, and the agreement check
    gap = float(np.abs(np.array(shared) - np.array(full)).max())
    timings = {name: min(timeit.repeat(fn, number=1, repeat=repeats)) for name, fn in (("baseline", baseline), ("prefix", prefix))}
    scored = n_images * n_questions
    print(f"model={model} device={device} dtype={dtype} images={n_images} questions/image={n_questions}")
    print(f"{'method':<32}{'seconds':>10}{'questions/s':>14}{'ratio':>8}")
    for name, label in (("baseline", "full forward per question"), ("prefix", "shared prefix, batched questions")):
        print(f"{label:<32}{timings[name]:>10.3f}{scored / timings[name]:>14.1f}{timings['baseline'] / timings[name]:>8.2f}")
    print(f"max |p_prefix - p_full| = {gap:.2e}")
    backend.close()


if __name__ == "__main__":
    main()
