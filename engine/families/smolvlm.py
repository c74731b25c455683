"""tiny:smolvlm, a SmolVLM(-Instruct), which is the Idefics3 architecture: a SigLIP-style ViT
whose patches are pixel-shuffled (scale_factor) into few tokens per tile, and a Llama LM
(SmolLM2). Every image is resized so its longest edge is `size`, then cut into square tiles of
the tower's input size plus a downscaled whole view, so the number of image tokens follows the
image's aspect ratio; each tile is announced by <fake_token_around_image><row_i_col_j> and the
whole view by <global-img>.

The chat format is SmolVLM's ("<|im_start|>User:<image>...<end_of_utterance>\\nAssistant:")
with one difference: its template writes ": " before an assistant turn that starts with text,
which would put a space before an answer sampled after the generation prompt "Assistant:";
here the answer follows the colon exactly as sampled (as tiny:llava's template does, see
engine.tiny_models), so the scored tokens are the sampled ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from engine.tiny_models import MESSAGE_PARTS, ModelSizes, build_tokenizer, llama_config, seeded_model

IMAGE_TOKEN, FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN = "<image>", "<fake_token_around_image>", "<global-img>"
# The processor names tiles up to 6x6: <row_1_col_1> ... <row_6_col_6>.
GRID_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))
# SmolLM2's first three tokens, then those SmolVLM adds.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    FAKE_IMAGE_TOKEN, IMAGE_TOKEN, "<end_of_utterance>", GLOBAL_IMAGE_TOKEN, *GRID_TOKENS,
)
# SmolVLM ends a turn on <end_of_utterance>; <|im_start|> opens the conversation, <|im_end|> pads.
TOKEN_ROLES = {
    "bos_token": "<|im_start|>",
    "eos_token": "<end_of_utterance>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
    "extra_special_tokens": {"image_token": IMAGE_TOKEN},
}
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    + MESSAGE_PARTS +
    "{{ message['role'] | capitalize }}"
    "{%- if parts[0]['type'] == 'image' or message['role'] == 'assistant' -%}{{ ':' }}"
    "{%- else -%}{{ ': ' }}{%- endif -%}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<end_of_utterance>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
SIZES = ModelSizes()
TILE = SIZES.image_size
# Pixel shuffle: scale_factor^2 neighbouring patches become one token (SmolVLM-256M uses 4).
SCALE_FACTOR = 2
# Longest edges of 3 tiles, as the real ones are resized to 4 tiles of 384 px (1536 px).
LONGEST_EDGE = 3 * TILE


def build(out_dir: str | os.PathLike, seed: int) -> Path:
    out = Path(out_dir)
    tokenizer = build_tokenizer(SPECIAL_TOKENS, CHAT_TEMPLATE, TOKEN_ROLES)
    config = Idefics3Config(
        vision_config={
            "hidden_size": SIZES.vision_hidden,
            "intermediate_size": 2 * SIZES.vision_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TILE,
            "patch_size": SIZES.patch_size,
            "initializer_range": SIZES.initializer_range,
        },
        text_config=llama_config(tokenizer, SIZES).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        scale_factor=SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": LONGEST_EDGE},
            max_image_size={"longest_edge": TILE},
            image_mean=list(IMAGENET_STANDARD_MEAN),
            image_std=list(IMAGENET_STANDARD_STD),
        ),
        tokenizer=tokenizer,
        image_seq_len=SIZES.image_tokens // SCALE_FACTOR**2,
        chat_template=CHAT_TEMPLATE,
    )
    model = seeded_model(Idefics3ForConditionalGeneration, config, tokenizer, seed, extra_stops=("<|im_end|>",))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
