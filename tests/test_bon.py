"""Best-of-N: the reward and argmax by hand, the length bias without 1/T, and the job end to end
on tiny models (a policy and a differently seeded reference) through local Ray."""

import json
import math
from base64 import b64encode
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from engine.bon import BON_CANDIDATE_SCHEMA, best_of, candidate_table, implicit_rewards
from engine.bon_pass import MANIFEST
from engine.schemas import REJECT_SCHEMA
from engine.storage import read_json, read_parquet_dir

REPO = Path(__file__).resolve().parent.parent


def test_reward_and_argmax_by_hand():
    policy, ref, tokens = [-10.0, -12.0, -30.0], [-11.0, -12.0, -27.0], [5, 4, 10]
    # beta 0.5: 0.5 * 1 / 5, 0.5 * 0 / 4, 0.5 * -3 / 10
    rewards = implicit_rewards(policy, ref, tokens, beta=0.5)
    assert rewards == pytest.approx([0.1, 0.0, -0.15])
    assert best_of(rewards) == 0
    assert implicit_rewards(policy, ref, tokens, beta=0.5, length_normalise=False) == pytest.approx([0.5, 0.0, -1.5])


def test_without_normalisation_the_short_answer_wins():
    # Per-token log-ratios below 0 add up with length: short -1 over 2 tokens, long -4 over 20.
    policy, ref, tokens = [-6.0, -44.0], [-5.0, -40.0], [2, 20]
    normalised = implicit_rewards(policy, ref, tokens, beta=0.1)
    assert normalised == pytest.approx([-0.05, -0.02]) and best_of(normalised) == 1
    summed = implicit_rewards(policy, ref, tokens, beta=0.1, length_normalise=False)
    assert summed == pytest.approx([-0.1, -0.4]) and best_of(summed) == 0


def test_ties_go_to_the_first_candidate_and_nan_never_wins():
    assert best_of([0.2, 0.5, 0.5, 0.1]) == 1
    assert best_of([math.nan, -3.0, math.nan]) == 1
    assert best_of([math.nan]) == 0
    with pytest.raises(ValueError):
        best_of([])
    with pytest.raises(ValueError, match=">= 1"):
        implicit_rewards([-1.0], [-1.0], [0], beta=0.1)
    with pytest.raises(ValueError):
        implicit_rewards([-1.0], [], [1], beta=0.1)


def test_candidate_table_flattens_live_rows_only():
    live = {"id": "a", "prompt": "p", "reject_reason": None, "answers": ["x", "y"], "answer_seeds": [7, 8],
            "answer_tokens": [2, 3], "policy_logps": [-1.0, -2.0], "ref_logps": [-1.5, -2.0],
            "rewards": [0.025, 0.0], "best_answer": 0}
    diverted = {"id": "b", "prompt": "p", "reject_reason": "missing_image"}
    table = candidate_table([live, diverted], "pol", "ref")
    assert table.schema.equals(BON_CANDIDATE_SCHEMA)
    assert [(r["instruction_id"], r["candidate"], r["seed"], r["chosen"]) for r in table.to_pylist()] == [
        ("a", 0, 7, True), ("a", 1, 8, False)]


@pytest.fixture(scope="module")
def bon_input(tmp_path_factory) -> str:
    shipped = pq.read_table(REPO / "data" / "smoke" / "instructions.parquet").to_pylist()[:2]
    rows = [{"id": r["id"], "prompt": r["prompt"], "image": b64encode(r["image"]).decode()} for r in shipped]
    rows.append({"id": "bad-image", "prompt": "Describe the image.", "image": b64encode(b"not an image").decode()})
    path = tmp_path_factory.mktemp("bon-input") / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bon_job_end_to_end(ray_local, model_cache, bon_input, tmp_path):
    from jobs.bon import main

    out = str(tmp_path / "bon")
    args = ["--policy", "tiny:llava@1", "--reference", "tiny:llava", "--input", bon_input, "--out", out,
            "--set", f'models.cache_dir="{model_cache}"', "--set", "bon.n=3", "--set", "bon.max_new_tokens=8",
            "--set", "bon.beta=0.5", "--set", "bon.resources.num_cpus=0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "best-of-n" in result.output and "scene-0-00000" in result.output

    files = sorted((tmp_path / "bon" / "candidates").glob("*.parquet"))
    assert files and all(pq.read_schema(f).equals(BON_CANDIDATE_SCHEMA, check_metadata=False) for f in files)
    candidates = read_parquet_dir(f"{out}/candidates", BON_CANDIDATE_SCHEMA).to_pylist()
    assert len(candidates) == 2 * 3
    for instruction in ("scene-0-00000", "scene-0-00001"):
        rows = sorted((r for r in candidates if r["instruction_id"] == instruction), key=lambda r: r["candidate"])
        assert [r["candidate"] for r in rows] == [0, 1, 2] and len({r["seed"] for r in rows}) == 3
        for r in rows:
            assert r["policy_logps"] < 0 and r["ref_logps"] < 0 and r["n_tokens"] >= 1
            assert r["policy_logps"] != r["ref_logps"]  # two different models
            assert r["reward"] == pytest.approx(0.5 * (r["policy_logps"] - r["ref_logps"]) / r["n_tokens"])
        best = max(rows, key=lambda r: r["reward"])
        assert [r["candidate"] for r in rows if r["chosen"]] == [best["candidate"]]
    rejects = read_parquet_dir(f"{out}/rejects", REJECT_SCHEMA).to_pylist()
    assert [(r["instruction_id"], r["reason"]) for r in rejects] == [("bad-image", "undecodable_image")]
    summary = read_json(f"{out}/{MANIFEST}")
    assert summary["instructions"] == 3 and summary["instructions_rejected"] == 1 and summary["candidates"] == 6
    assert summary["length_normalise"] is True and summary["policy"] == "tiny:llava@1"

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already holds Best-of-N output" in again.output
    assert "Traceback" not in again.output
