"""LLaVA-1.5 models of a given shape with random weights, built from configs (no download):
the processor and config are written to a directory (what HFBackend and vLLM read), the
weights are initialised in place on the target device, in its dtype, never saved."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

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

from engine.tiny_models import CHAT_TEMPLATE, IMAGE_TOKEN, build_tokenizer


@dataclass(frozen=True)
class LlavaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    patch_size: int
    initializer_range: float = 0.02

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def with_layers(self, layers: int) -> "LlavaShape":
        return replace(self, layers=layers)


# Llama-2-7B text model, CLIP ViT-L/14 at 336 px: llava-1.5-7b-hf.
LLAVA_7B = LlavaShape(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32064,
                      vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096,
                      image_size=336, patch_size=14)
# The sizes of engine.tiny_models' tiny:llava (vocab: at least the tiny tokenizer's).
TINY = LlavaShape(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256, vocab=1024,
                  vision_hidden=64, vision_layers=2, vision_heads=2, vision_intermediate=128,
                  image_size=32, patch_size=8, initializer_range=0.1)


def write_config(shape: LlavaShape, out_dir: str | Path) -> LlavaConfig:
    """Config, generation config and processor (the tiny tokenizer) into out_dir."""
    tokenizer = build_tokenizer()
    if len(tokenizer) > shape.vocab:
        raise ValueError(f"vocab {shape.vocab} < the tokenizer's {len(tokenizer)} tokens")
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                                       num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                                       image_size=shape.image_size, patch_size=shape.patch_size,
                                       projection_dim=shape.vision_hidden),
        text_config=LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
                                initializer_range=shape.initializer_range, **special),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=shape.image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    config.architectures = [LlavaForConditionalGeneration.__name__]  # vLLM picks its model class by it
    out = Path(out_dir)
    config.save_pretrained(out)
    GenerationConfig(**special).save_pretrained(out)
    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": shape.image_size},
                                              crop_size={"height": shape.image_size, "width": shape.image_size}),
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(out)
    return config


def build_model(config: LlavaConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LlavaForConditionalGeneration:
    """Random weights initialised directly on `device` in `dtype` (a 7B model in seconds on a GPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_model_config(config.text_config)
    return model


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(shape: LlavaShape) -> dict:
    return {**asdict(shape), "image_tokens": shape.image_tokens}
