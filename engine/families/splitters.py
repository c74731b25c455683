"""The text-only families used as claim splitters: tiny:llama3 (Llama-3-Instruct's tokens and
chat format, <|eot_id|> ending a turn) and tiny:qwen25 (Qwen2.5-Instruct: ChatML, <|im_end|>)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.families.chatml import END_OF_TEXT, build_qwen_tokenizer
from engine.tiny_models import MESSAGE_PARTS, ModelSizes, build_tokenizer, llama_config, seeded_model

LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)
# Llama-3-Instruct: the tokenizer prepends <|begin_of_text|>, a turn ends on <|eot_id|>; no pad.
LLAMA3_TOKEN_ROLES = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    + MESSAGE_PARTS +
    "{%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + text | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def build_llama3(out_dir: str | os.PathLike, seed: int) -> Path:
    out = Path(out_dir)
    tokenizer = build_tokenizer(LLAMA3_SPECIAL_TOKENS, LLAMA3_CHAT_TEMPLATE, LLAMA3_TOKEN_ROLES, prepend_bos=True)
    config = llama_config(tokenizer, ModelSizes(), rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    model = seeded_model(LlamaForCausalLM, config, tokenizer, seed, extra_stops=("<|end_of_text|>",))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_qwen25(out_dir: str | os.PathLike, seed: int) -> Path:
    out = Path(out_dir)
    sizes = ModelSizes()
    tokenizer = build_qwen_tokenizer(QWEN25_SYSTEM, multimodal=False)
    config = llama_config(
        tokenizer, sizes, Qwen2Config,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,  # as the small Qwen2.5 (0.5B-3B)
        bos_token_id=None,
    )
    model = seeded_model(Qwen2ForCausalLM, config, tokenizer, seed, extra_stops=(END_OF_TEXT,))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
