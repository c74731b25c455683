"""Hugging Face hub ids (`llava-hf/llava-1.5-7b-hf`) as local model directories.

Loading (every backend, the trainer) and export all open a model as files on disk: export
reads the init model's safetensors key layout and copies its tokenizer and processor files.
A hub id is therefore turned into its snapshot in the Hugging Face cache once, by
huggingface_hub, which honours HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and HF_TOKEN.
"""

from __future__ import annotations

import re

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+", flags=re.ASCII)
# What loading and export read: safetensors weights (and their index), config, tokenizer,
# processor and chat-template files. Other weight formats and the rest of a repository
# (README, images, .bin/.pt duplicates of the weights) are not downloaded.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(path: str) -> bool:
    return HUB_ID.fullmatch(path) is not None and not path.startswith(".")


def snapshot(repo_id: str) -> str:
    """The local snapshot directory of `repo_id`, downloaded into the HF cache unless there."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=MODEL_FILES)


def is_cached(repo_id: str) -> bool:
    """Whether the HF cache holds a snapshot of `repo_id` (what an offline run can load)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
