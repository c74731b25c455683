"""Synthetic inputs the benchmarks share: noise images and claim-style yes/no questions of
the toy world, as the labeler receives them (about 30 tokens each with the tiny tokenizer)."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from engine import vocabulary


def noise_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def claim_questions(count: int) -> list[str]:
    colours, shapes = list(vocabulary.COLOURS), vocabulary.SHAPES
    combos = itertools.product(colours, shapes, vocabulary.POSITIONS)
    return [
        f"Is there a {colour} {shape} in the {position} of the image, next to a "
        f"{colours[(i + 1) % len(colours)]} {shapes[(i + 2) % len(shapes)]}? Please answer yes or no."
        for i, (colour, shape, position) in enumerate(itertools.islice(combos, count))
    ]
