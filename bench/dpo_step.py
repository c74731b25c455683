"""One DPO optimizer step per ZeRO stage in this process alone (world size 1), through the
trainer's own DeepSpeed config, batch collation and loss, so the figures are the trainer's:
seconds per step and the peak GPU memory a stage needs for one model."""

from __future__ import annotations

import gc
import importlib
import io
import os
import socket
import time
from typing import Callable

import torch
from PIL import Image

from bench.timing import synchronize
from engine.config import TrainConfig
from engine.writer import pair_record
from train.data import collate_pairs
from train.objectives import preference_loss
from train.trainer import _deepspeed_config, _parameter_groups


def init_single_process() -> None:
    """A one-rank process group for DeepSpeed (nccl on a GPU, gloo on CPU)."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    # As train.trainer: skip the shared-memory op's JIT build, only used for inference on CPU.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)  # kept: deepspeed.initialize reads LOCAL_RANK again
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def pair_rows(images: list[Image.Image], prompt: str, chosen: str, rejected: str) -> list[dict]:
    """Pair-shard rows (train.data's columns) with PNG image bytes and constant reference log-probs."""
    rows = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append(pair_record(prompt, buffer.getvalue(), chosen, rejected, pair_id=f"bench-{i}",
                                ref_chosen_logps=-50.0, ref_rejected_logps=-50.0))
    return rows


def step_per_zero_stage(build_model: Callable[[], torch.nn.Module], processor, rows: list[dict],
                        device: torch.device, stages: tuple[int, ...], deadline: float) -> dict:
    """Per ZeRO stage: a fresh model, DeepSpeed-wrapped; one warm-up step, then one timed step.
    Peak memory (GPU only) counts from the fresh model on, initialisation included."""
    import deepspeed

    init_single_process()
    cuda = device.type == "cuda"
    results: dict = {}
    for stage in stages:
        if time.monotonic() > deadline:
            results[f"zero{stage}"] = {"skipped": "over this part's time budget"}
            continue
        t = TrainConfig(zero_stage=stage, micro_batch_size=len(rows), precision="bf16" if cuda else "fp32",
                        gradient_checkpointing=True, max_length=4096)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        engine = None
        try:
            model = build_model()
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
            model.train()
            optimizer = torch.optim.AdamW(_parameter_groups(model, t.weight_decay), lr=1e-6)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_deepspeed_config(t, bf16=cuda))
            dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
            batch = collate_pairs(rows, processor, t.max_length).to(device, dtype)
            seconds = [_timed_step(engine, batch, t, device) for _ in range(2)]
            results[f"zero{stage}"] = {"step_seconds": round(seconds[-1], 3), "first_step_seconds": round(seconds[0], 3),
                                       "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None}
        except Exception as exc:  # noqa: BLE001 -- out of memory above all; the next stage may still fit
            results[f"zero{stage}"] = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]}
        finally:
            if engine is not None:
                engine.destroy()
            engine = model = optimizer = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return results


def _timed_step(engine, batch, t: TrainConfig, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    loss, _ = preference_loss(engine, batch, t)
    engine.backward(loss)
    engine.step()
    synchronize(device)
    return time.perf_counter() - start
