"""Best-of-n wall time with the device synchronised around each run, so GPU work a call
queues is charged to that call and not to the next one."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu",
                 deadline: float | None = None) -> float:
    """The fastest of `repeats` runs; past `deadline` (time.monotonic()) it stops after the
    first run, so a slow machine still yields a figure instead of overrunning its budget."""
    best = math.inf
    for attempt in range(repeats):
        if attempt and deadline is not None and time.monotonic() > deadline:
            break
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best
