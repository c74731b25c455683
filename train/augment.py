"""Image augmentation for SFT (jobs/sft.py, [sft]) that keeps the answer true where it can.

RLHF-V's finding: a random crop removes objects the text still names, which teaches the model
to mention what it cannot see. So nothing is on by default, and each augmentation says what it
does to the text:
- hflip mirrors the image and swaps "left" and "right" in the question and answer (whole words,
  any case), so "the circle at the top left" stays true;
- brightness_contrast scales brightness and contrast, never hue or saturation: colour words
  stay true;
- crop keeps a random window of at least crop_min_scale of each side, resized back; it changes
  nothing in the text and may make it false (kept for the ablation).
Draws come from a generator seeded per (run seed, step, example), so a resumed run sees the
same images.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from engine.config import SftConfig

_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_MIRROR = {"left": "right", "right": "left"}


def swap_sides(text: str) -> str:
    """`text` with left and right exchanged, each keeping its capitalisation."""
    def mirrored(match: re.Match) -> str:
        word = match[0]
        other = _MIRROR[word.lower()]
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _SIDES.sub(mirrored, text)


def augment_example(image: Image.Image, question: str, answer: str, cfg: SftConfig,
                    rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """The example after each augmentation of cfg.augment, each applied with
    cfg.augment_probability, in the order listed."""
    for name in cfg.augment:
        if rng.random() >= cfg.augment_probability:
            continue
        if name == "hflip":
            image, question, answer = ImageOps.mirror(image), swap_sides(question), swap_sides(answer)
        elif name == "brightness_contrast":
            low, high = 1 - cfg.jitter, 1 + cfg.jitter
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(low, high))
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(low, high))
        elif name == "crop":
            image = random_crop(image, cfg.crop_min_scale, rng)
    return image, question, answer


def random_crop(image: Image.Image, min_scale: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    scale = rng.uniform(min_scale, 1.0)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h)).resize((width, height), Image.BILINEAR)
