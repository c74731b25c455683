import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from engine.seeds import SEED_LIMIT, derive_seed


def test_seed_is_a_stable_hash():
    # Independent recomputation: 4-byte big-endian length + UTF-8 bytes per field, BLAKE2b-64.
    fields = [b"0", b"1", b"scene-0-00001", b"3", b"sample"]
    key = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    digest = hashlib.blake2b(key, digest_size=8, person=b"rlaifv-seed-v1").digest()
    expected = int.from_bytes(digest, "big") % 2**31
    # 763418620 was computed once; it must never change, or re-runs stop reproducing answers.
    assert derive_seed(0, 1, "scene-0-00001", 3) == expected == 763418620


def test_same_seed_in_another_process():
    # hash() would differ between processes (PYTHONHASHSEED); the derived seed must not.
    code = "from engine.seeds import derive_seed; print(derive_seed(7, 2, 'x', 4, 'split-1'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1], env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."})
    assert int(out.stdout) == derive_seed(7, 2, "x", 4, "split-1")


def test_every_input_changes_the_seed():
    base = derive_seed(0, 0, "a", 0)
    variants = [derive_seed(1, 0, "a", 0), derive_seed(0, 1, "a", 0), derive_seed(0, 0, "b", 0),
                derive_seed(0, 0, "a", 1), derive_seed(0, 0, "a", 0, "split-0")]
    assert len({base, *variants}) == 6
    assert all(0 <= s < SEED_LIMIT == 2**31 for s in [base, *variants])


def test_field_boundaries_are_unambiguous():
    # With a plain separator these two would encode to the same bytes.
    assert derive_seed(0, 0, "a\x1f1", 2) != derive_seed(0, 0, "a", 1, "2")
    assert derive_seed(1, 12, "a", 0) != derive_seed(11, 2, "a", 0)


def test_non_integer_numbers_are_refused():
    with pytest.raises(TypeError):
        derive_seed(0.5, 0, "a", 0)
    with pytest.raises(TypeError):
        derive_seed(0, 0, 3, 0)
