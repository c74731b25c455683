"""tiny:qwen2vl, a Qwen2-VL: a ViT whose patches of any image size (within min/max pixels) are
merged 2x2 into a variable number of <|image_pad|> tokens between <|vision_start|> and
<|vision_end|>, and a Qwen2 LM with multimodal rotary positions (mrope_section: temporal,
height and width share the rotary frequencies)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from engine.families.chatml import END_OF_TEXT, IMAGE_TOKEN, VIDEO_TOKEN, build_qwen_tokenizer
from engine.tiny_models import MAX_POSITIONS, ModelSizes, seeded_model

DEFAULT_SYSTEM = "You are a helpful assistant."
PATCH, MERGE, TEMPORAL = 8, 2, 2
# Image sides become multiples of PATCH * MERGE = 16 px, between 2x2 and 4x4 merged tokens.
MIN_PIXELS, MAX_PIXELS = (2 * PATCH * MERGE) ** 2, (4 * PATCH * MERGE) ** 2
# Rotary pairs per axis (temporal, height, width), summing to head_dim / 2 = 32, in Qwen2-VL's 2:3:3.
MROPE_SECTION = [8, 12, 12]


def build(out_dir: str | os.PathLike, seed: int) -> Path:
    out = Path(out_dir)
    sizes = ModelSizes()
    tokenizer = build_qwen_tokenizer(DEFAULT_SYSTEM, multimodal=True)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": sizes.vision_hidden,
            "hidden_size": sizes.text_hidden,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "initializer_range": sizes.initializer_range,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.text_hidden,
            "intermediate_size": 2 * sizes.text_hidden,
            "num_hidden_layers": sizes.text_layers,
            "num_attention_heads": sizes.text_hidden // 64,
            "num_key_value_heads": 1,
            "max_position_embeddings": MAX_POSITIONS,
            "initializer_range": sizes.initializer_range,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION},
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=ids(IMAGE_TOKEN),
        video_token_id=ids(VIDEO_TOKEN),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,  # as the small Qwen2-VL-2B
    )
    vision = {"patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": TEMPORAL}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, **vision),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**vision),  # the processor requires one; the engine sends no video
        chat_template=tokenizer.chat_template,
    )
    model = seeded_model(Qwen2VLForConditionalGeneration, config, tokenizer, seed, extra_stops=(END_OF_TEXT,))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
