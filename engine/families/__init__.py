"""The model families the engine is tested on, built at tiny size as `tiny:<name>`.

FAMILIES is the one list of them: each row names the builder (by dotted path, so nothing heavy
is imported until a model is built), the backends that serve it and whether it takes images.
engine.tiny_models resolves the names, engine.config_check refuses a family on a backend or in
a role it cannot serve, and the README's families table mirrors it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Family:
    builder: str  # "module:function", called as function(out_dir, seed) -> out_dir
    multimodal: bool
    # Backends that cannot serve the family, each with the reason preflight gives.
    refused: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "llava": Family("engine.tiny_models:build_tiny_mllm", multimodal=True),
    "llm": Family("engine.tiny_models:build_tiny_llm", multimodal=False),
    "qwen2vl": Family("engine.families.qwen2vl:build", multimodal=True),
    "llava-next": Family("engine.families.llava_next:build", multimodal=True),
    "smolvlm": Family("engine.families.smolvlm:build", multimodal=True),
    "llama3": Family("engine.families.splitters:build_llama3", multimodal=False),
    "qwen25": Family("engine.families.splitters:build_qwen25", multimodal=False),
}


TINY_PREFIX = "tiny:"


def parse_tiny_name(path: str) -> tuple[str, int]:
    """(family, seed) of "tiny:<family>[@<seed>]"; ValueError naming the known ones otherwise."""
    match = re.fullmatch(r"tiny:([\w-]+?)(?:@(\d+))?", path, flags=re.ASCII)
    if match is None or match[1] not in FAMILIES:
        known = ", ".join(f"{TINY_PREFIX}{name}[@<seed>]" for name in FAMILIES)
        raise ValueError(f"unknown tiny model {path!r}; known: {known}")
    return match[1], int(match[2] or 0)


def build(name: str, out_dir: str | os.PathLike, seed: int) -> Path:
    """Build family `name` from `seed` into out_dir."""
    module, _, function = FAMILIES[name].builder.partition(":")
    return getattr(importlib.import_module(module), function)(out_dir, seed)


def source_files() -> list[Path]:
    """The family modules, whose code shapes the built models (engine.tiny_models hashes them)."""
    return sorted(Path(__file__).parent.glob("*.py"))
