"""Per-answer seeds: a pure function of (run seed, iteration, instruction id, index, purpose),
so any process on any machine, and any re-run after a crash, draws the same answer.

Python's hash() is salted per process, so the seed is a BLAKE2b digest of an unambiguous
encoding of the inputs instead: each field is length-prefixed, so no instruction id (whatever
characters it holds) can make two different inputs encode alike.
"""

from __future__ import annotations

import hashlib
import operator

SEED_LIMIT = 2**31  # seeds lie in [0, 2**31 - 1]: every backend's seed argument takes them
_PERSON = b"rlaifv-seed-v1"  # BLAKE2b personalisation: these digests are seeds of this engine


def _field(value: int | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else str(operator.index(value)).encode()
    return len(data).to_bytes(4, "big") + data


def derive_seed(run_seed: int, iteration: int, instruction_id: str, index: int, purpose: str = "sample") -> int:
    """The seed of draw `index` (e.g. answer j) of one instruction, for one use (`purpose`:
    "sample", "split-0", "pair", ...), in [0, 2**31 - 1]."""
    if not isinstance(instruction_id, str) or not isinstance(purpose, str):
        raise TypeError("instruction_id and purpose must be strings")
    key = b"".join(_field(v) for v in (run_seed, iteration, instruction_id, index, purpose))
    digest = hashlib.blake2b(key, digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % SEED_LIMIT
