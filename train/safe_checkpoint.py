"""DeepSpeed checkpoints restored without unpickling arbitrary objects.

DeepSpeed reads every checkpoint file at resume (model states, optimizer and ZeRO partition
states, lr scheduler and client state) through its engine's checkpoint_engine.load, which calls
torch.load(weights_only=False): a file swapped into a shared run directory would run code on
every training worker. Here that load is torch's weights-only unpickler, which builds tensors,
plain containers and numbers, plus the few DeepSpeed classes its ZeRO optimizer pickles.
"""

from __future__ import annotations

import pickle

import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from engine.errors import CheckpointError

# The classes DeepSpeed 0.19's ZeRO 1-3 optimizer states hold besides tensors and plain data
# (ZeRO 0 holds none). Each is rebuilt from plain fields and runs no code of its own: a static
# loss scale (scale, dynamic flag), an int enum, and a dataclass of two ints.
DEEPSPEED_GLOBALS = [LossScaler, ZeroStageEnum, fragment_address]
_ALLOWED = {f"{cls.__module__}.{cls.__qualname__}" for cls in DEEPSPEED_GLOBALS}


def weights_only_load(path: str, map_location=None):
    """checkpoint_engine.load's signature; refuses a file that pickles anything else."""
    try:
        with torch.serialization.safe_globals(DEEPSPEED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # Lists the file's globals without running any of them.
        unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _ALLOWED)
        raise CheckpointError(f"refusing to resume from {path}: it pickles {', '.join(unsafe) or 'objects'} "
                              "beyond tensors and plain data (replaced or corrupted?)") from None


def load_deepspeed_checkpoint(ds_engine, directory: str) -> dict | None:
    """ds_engine.load_checkpoint(directory) with every file read weights-only; the client state."""
    ds_engine.checkpoint_engine.load = weights_only_load
    _, client_state = ds_engine.load_checkpoint(directory)
    return client_state
