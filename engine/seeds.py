"""Per-answer seeds: a pure function of (run seed, iteration, instruction id, index, purpose),
so any process on any machine, and any re-run after a crash, draws the same answer."""

from __future__ import annotations

import hashlib

SEED_LIMIT = 2**31 - 1  # fits every backend's seed argument (vLLM, torch.Generator)


def derive_seed(run_seed: int, iteration: int, instruction_id: str, index: int, purpose: str = "sample") -> int:
    key = f"{run_seed}\x1f{iteration}\x1f{instruction_id}\x1f{index}\x1f{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % SEED_LIMIT
