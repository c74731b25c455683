"""tiny:llava-next, a LLaVA-NeXT (1.6, Vicuna chat format): any-resolution tiling. An image is
resized to the best-fitting grid pinpoint and cut into tiles of the tower's input size, plus a
downscaled whole view; every tile row ends in a learned image-newline embedding, so the number
of image tokens depends on the image's size and aspect ratio."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

from engine.tiny_models import (
    ModelSizes,
    build_tokenizer,
    llava_config_fields,
    llava_processor_fields,
    rename_vision_keys_for_vllm,
    seeded_model,
)

SIZES = ModelSizes()
TILE = SIZES.image_size
# (height, width) canvases of 1x2, 2x1 and 2x2 tiles, as the real 336 px ones are of 336 px tiles.
GRID_PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]


def build(out_dir: str | os.PathLike, seed: int) -> Path:
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlavaNextConfig(**llava_config_fields(tokenizer, SIZES), image_grid_pinpoints=GRID_PINPOINTS)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": TILE},
            crop_size={"height": TILE, "width": TILE},
            image_grid_pinpoints=GRID_PINPOINTS,
            image_mean=list(SIZES.image_mean),
            image_std=list(SIZES.image_std),
        ),
        tokenizer=tokenizer,
        **llava_processor_fields(SIZES),
    )
    model = seeded_model(LlavaNextForConditionalGeneration, config, tokenizer, seed)
    model.save_pretrained(out)
    rename_vision_keys_for_vllm(out / "model.safetensors")
    processor.save_pretrained(out)
    return out
