"""A trained DeepSpeed engine -> a Hugging Face model directory the next iteration loads.

The directory holds the trained weights under exactly the key names of the init model's
safetensors (the tiny LLaVA's vision keys are renamed for vLLM; whatever the init had is
kept, and a mismatch is an error rather than a model vLLM cannot load), the config, and the
init model's processor / tokenizer / chat-template files copied unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from engine.storage import filesystem

# Written by save_pretrained from the trained model; everything else comes from the init dir.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")
_MODEL_FILES = ("config.json", "generation_config.json")
# A training run's exports under its output directory: the trained model, and PPO's critic.
MODEL_DIR, CRITIC_DIR = "model", "critic"


def full_state_dict(ds_engine) -> dict[str, torch.Tensor] | None:
    """The complete weights on rank 0 (None elsewhere). Collective: every rank must call it.
    ZeRO-3 partitions the parameters, so they are gathered layer by layer with the engine's
    consolidation (the config must set stage3_gather_16bit_weights_on_model_save); at stages
    0-2 every rank holds them whole."""
    if ds_engine.zero_optimization_partition_weights():
        return ds_engine._zero3_consolidated_16bit_state_dict()
    if dist.get_rank() != 0:
        return None
    return {key: tensor.detach().cpu() for key, tensor in ds_engine.module.state_dict().items()}


def safetensors_keys(model_dir: str | Path) -> set[str]:
    """Tensor names of a model directory's safetensors (single file or sharded)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    keys: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            keys.update(f.keys())
    return keys


def save_model_dir(model, state_dict: dict[str, torch.Tensor], init_dir: str, local_dir: str | Path) -> None:
    """Write weights + config with save_pretrained, check the key layout against the init
    model, and copy the init model's other files (processor, tokenizer, chat template)."""
    local_dir = Path(local_dir)
    model.save_pretrained(local_dir, state_dict=state_dict, safe_serialization=True)
    saved, expected = safetensors_keys(local_dir), safetensors_keys(init_dir)
    if saved != expected:
        raise RuntimeError(
            f"exported weights do not have the init model's key layout: {len(saved - expected)} new key(s) "
            f"(e.g. {sorted(saved - expected)[:2]}), {len(expected - saved)} missing (e.g. {sorted(expected - saved)[:2]})"
        )
    for path in Path(init_dir).iterdir():
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name not in _MODEL_FILES:
            shutil.copy2(path, local_dir / path.name)


def is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def publish_dir(local_dir: str | Path, url: str) -> None:
    """Put a finished local directory at `url` (local path or fsspec URL), replacing what was
    there. Locally it is a rename, so the directory appears complete or not at all."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if is_local(fs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local_dir), path)
    else:
        fs.put(str(local_dir), path, recursive=True)


def export_model(ds_engine, init_dir: str, out_url: str) -> None:
    """Collective: gather the weights, then rank 0 writes the model directory to out_url."""
    export_parts(ds_engine, {"": (init_dir, out_url)})


def export_parts(ds_engine, parts: dict[str, tuple[str, str]]) -> None:
    """Collective: gather the weights once, then rank 0 writes each named submodule of the
    trained module ("" the whole of it) as a model directory: {name: (the directory it was
    loaded from, the URL to write)}. PPO's module exports its policy and its critic apart."""
    state_dict = full_state_dict(ds_engine)
    if dist.get_rank() == 0:
        for name, (init_dir, out_url) in parts.items():
            prefix = f"{name}." if name else ""
            weights = {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}
            _publish_model_dir(ds_engine.module.get_submodule(name), weights, init_dir, out_url)
    dist.barrier()


def _publish_model_dir(model, state_dict: dict[str, torch.Tensor], init_dir: str, out_url: str) -> None:
    fs, path = filesystem(out_url)
    local_parent = Path(path).parent if is_local(fs) else Path(tempfile.gettempdir())
    local_parent.mkdir(parents=True, exist_ok=True)
    staging = local_parent / f".{Path(path).name}.tmp-{uuid.uuid4().hex}"
    try:
        save_model_dir(model, state_dict, init_dir, staging)
        publish_dir(staging, out_url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
