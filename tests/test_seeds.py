import hashlib

from engine.seeds import SEED_LIMIT, derive_seed


def test_seed_is_a_stable_hash():
    key = "0\x1f1\x1fscene-0-00001\x1f3\x1fsample".encode()
    expected = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % (2**31 - 1)
    assert derive_seed(0, 1, "scene-0-00001", 3) == expected == 1358507606


def test_every_input_changes_the_seed():
    base = derive_seed(0, 0, "a", 0)
    variants = [derive_seed(1, 0, "a", 0), derive_seed(0, 1, "a", 0), derive_seed(0, 0, "b", 0),
                derive_seed(0, 0, "a", 1), derive_seed(0, 0, "a", 0, "split-0")]
    assert len({base, *variants}) == 6
    assert all(0 <= s < SEED_LIMIT for s in variants)
