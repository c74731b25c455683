"""The Qwen tokenizer pieces shared by tiny:qwen2vl and tiny:qwen25: the ChatML special tokens,
their roles and the ChatML chat-template format."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from engine.tiny_models import MESSAGE_PARTS, build_tokenizer

# As in the Qwen2 vocabulary (which the text-only Qwen2.5 shares): end of text, the turn
# markers and the vision markers.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
# The instruct models end a turn (and generation) on <|im_end|>; <|endoftext|> pads. No bos.
TOKEN_ROLES = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
END_OF_TEXT = "<|endoftext|>"


def chat_template(default_system: str) -> str:
    """ChatML: "<|im_start|>{role}\\n{content}<|im_end|>\\n" per turn, opened by a system turn
    with `default_system` unless the conversation has one; an image part is written as
    <|vision_start|><|image_pad|><|vision_end|> where it stands in the content, as Qwen2-VL's."""
    return (
        "{%- for message in messages -%}"
        "{%- if loop.first and message['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}"
        "{%- endif -%}"
        + MESSAGE_PARTS +
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- for part in parts -%}"
        "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def build_qwen_tokenizer(default_system: str, multimodal: bool) -> PreTrainedTokenizerFast:
    roles = dict(TOKEN_ROLES)
    if multimodal:
        roles["extra_special_tokens"] = {"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN}
    return build_tokenizer(SPECIAL_TOKENS, chat_template(default_system), roles)
