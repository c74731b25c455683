"""The toy policy's architecture: a small LLaVA whose image patches are the scene's grid cells.

engine.tiny_models' LLaVA cuts its 32-pixel image into 4x4 patches that straddle the scene's
3x3 grid; here the image is 48 pixels in 16-pixel patches, one per cell, so a model trained
from scratch for a few CPU minutes can see each cell's shape and colour. It shares the tiny
models' tokenizer and chat template, so the engine's backends and train/ treat it like them.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from engine.tiny_models import CHAT_TEMPLATE, IMAGE_TOKEN, MAX_POSITIONS, build_tokenizer
from engine.vocabulary import POSITIONS

GRID = round(len(POSITIONS) ** 0.5)  # 3 cells a side
PATCH_SIZE = 16
IMAGE_SIZE = GRID * PATCH_SIZE


def build_toy_llava(seed: int, hidden_size: int = 192, layers: int = 3) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised toy LLaVA (from `seed`, leaving the global RNG alone) and its
    processor. Heads are 64 wide, as vLLM's CPU attention needs."""
    tokenizer = build_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            projection_dim=128,
        ),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=GRID * GRID,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            # The scenes' white background maps to 0, so an empty cell's patch is only its
            # position and a shape's colour stands out (CLIP's statistics bury it in white).
            image_mean=[1.0, 1.0, 1.0],
            image_std=[0.5, 0.5, 0.5],
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor
