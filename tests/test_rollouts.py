"""The reward stage and the rollout pass of a PPO round (engine/stages/reward.py,
engine/rollouts.py) on the tiny LLaVA with a tiny reward model built without training (a new
seeded head): the stage's rewards are score_tokens' on the same answers, one per response
token; the pass writes one rollout per answer with its id and seed, diverts a bad image with
its reason, and a rerun after a kill redoes only the instructions not yet written. Preflight's
reward-model checks are here too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_models import noise_png

from engine.config import ModelConfig, RewardConfig, load_config
from engine.errors import PreflightError
from engine.preflight import check_reward_model, preflight
from engine.reward_layout import HEAD_FILE

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"
GOOD_IDS = ["scene-a", "scene-b", "scene-c"]


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava_dir)


def test_the_reward_stage_gives_score_tokens_rewards_one_per_response_token(reward_model_dir, processor):
    from engine import chat
    from engine.backends.reward import HFRewardBackend
    from engine.flight import to_rows, to_table
    from engine.reward_model import load_reward_model, score_tokens
    from engine.stages.base import RunContext, row_image
    from engine.stages.reward import RewardStage

    model_cfg = ModelConfig(path=reward_model_dir, batch_size=2)
    stage = RewardStage(cfg=RewardConfig(), context=RunContext("t", 0, 0, ""),
                        backends={"reward_model": lambda: HFRewardBackend(reward_model_dir, model_cfg, device="cpu")})
    rows = [
        {"id": "a", "prompt": "Describe the image.", "image": noise_png(0), "answers": ["A red circle.", "Blue."]},
        {"id": "b", "prompt": "What is there?", "image": noise_png(1), "answers": ["Two squares, one green.", ""]},
        {"id": "c", "prompt": "Describe it.", "image": noise_png(2), "answers": ["Gone."],
         "reject_stage": "sample", "reject_reason": "prompt_too_long_for_model", "reject_detail": "x"},
    ]
    out = to_rows(stage.run_batch(to_table(rows)))
    live = rows[:2]
    model, _ = load_reward_model(reward_model_dir)
    images = [row_image(row) for row in live for _ in row["answers"]]
    prompts = [row["prompt"] for row in live for _ in row["answers"]]
    answers = [answer for row in live for answer in row["answers"]]
    expected = iter(score_tokens(model, processor, images, prompts, answers, batch_size=2))
    for row, written in zip(live, out):
        assert len(written["token_rewards"]) == len(row["answers"])
        for answer, rewards in zip(row["answers"], written["token_rewards"]):
            assert rewards == np.float32(next(expected)).tolist()  # as stored: float32
            assert len(rewards) == len(chat.response_token_ids(processor, row["prompt"], answer, True))
    assert out[2]["token_rewards"] is None and out[2]["reject_reason"] == "prompt_too_long_for_model"


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> str:
    """Three good instructions and one whose image does not decode."""
    path = tmp_path_factory.mktemp("input") / "instructions.parquet"
    rows = [{"id": id_, "prompt": "Describe the image.", "image": noise_png(i)} for i, id_ in enumerate(GOOD_IDS)]
    rows.append({"id": "bad-image", "prompt": "Describe the image.", "image": b"not an image"})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def rollout_config(instructions: str, model_cache: str, reward_model_dir: str):
    # Blocks of one instruction: one shard per instruction, so a test can remove one's.
    return load_config(SMOKE, [f'input.path="{instructions}"', f'models.cache_dir="{model_cache}"',
                               f'models.reward_model.path="{reward_model_dir}"', "sample.n=2",
                               "sample.max_new_tokens=8", "sample.resources.batch_size=1",
                               "reward.resources.num_cpus=0.25", "reward.resources.batch_size=1"])


@pytest.fixture(scope="module")
def rollout_run(ray_local, instructions, model_cache, reward_model_dir, tmp_path_factory):
    from engine.rollouts import run_rollouts

    cfg = rollout_config(instructions, model_cache, reward_model_dir)
    out = str(tmp_path_factory.mktemp("rollouts"))
    return cfg, out, run_rollouts(cfg, 1, out, cfg.models.policy)


def test_the_rollout_pass_writes_one_rewarded_row_per_answer(rollout_run, processor):
    from engine import chat
    from engine.rollouts import ROLLOUT_MANIFEST, read_rollouts
    from engine.seeds import derive_seed
    from engine.storage import read_json

    cfg, out, summary = rollout_run
    rollouts = read_rollouts(out).to_pylist()
    assert [r["rollout_id"] for r in rollouts] == [f"{id_}/{j}" for id_ in GOOD_IDS for j in range(2)]
    for r in rollouts:
        j = int(r["rollout_id"].rsplit("/", 1)[1])
        assert r["round"] == 1 and r["instruction_id"] == r["rollout_id"].rsplit("/", 1)[0]
        assert r["answer_seed"] == derive_seed(cfg.run.seed, 1, r["instruction_id"], j)  # the round as iteration
        assert len(r["token_rewards"]) == len(chat.response_token_ids(processor, r["prompt"], r["answer"], True))
        assert r["image"] == noise_png(GOOD_IDS.index(r["instruction_id"]))
    manifest = read_json(f"{out}/{ROLLOUT_MANIFEST}")
    assert manifest["round"] == 1 and manifest["summary"] == summary
    assert summary["instructions"] == 4 and summary["instructions_rejected"] == 1 and summary["rollouts"] == 6
    assert summary["reward_tokens"] == sum(len(r["token_rewards"]) for r in rollouts)
    assert summary["stages"]["sample"]["busy_seconds"] > 0 and summary["stages"]["reward"]["busy_seconds"] > 0


def test_a_bad_image_lands_in_rejects_and_no_instruction_is_lost(rollout_run):
    from engine.rollouts import read_rollouts
    from engine.schemas import REJECT_SCHEMA
    from engine.storage import read_parquet_dir

    _, out, summary = rollout_run
    rejects = read_parquet_dir(f"{out}/rejects", REJECT_SCHEMA).to_pylist()
    assert [(r["instruction_id"], r["stage"], r["reason"], r["iteration"]) for r in rejects] == [
        ("bad-image", "validate", "undecodable_image", 1)]
    written = set(read_rollouts(out)["instruction_id"].to_pylist()) | {r["instruction_id"] for r in rejects}
    assert written == {*GOOD_IDS, "bad-image"}
    assert summary["rejects_by_reason"] == {"undecodable_image": 1}


def test_a_rerun_after_a_kill_redoes_only_the_unwritten_instructions(rollout_run, tmp_path):
    """A kill after scene-b's rollouts but before its stats row (its done mark) and the manifest:
    the rerun redoes scene-b alone and ends with the same rollouts."""
    import shutil

    from engine.rollouts import ROLLOUT_MANIFEST, read_rollouts, run_rollouts
    from engine.writer import shard_key

    cfg, first, _ = rollout_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (out / "rows" / f"part-{shard_key(['scene-b'])}.parquet").unlink()
    (out / ROLLOUT_MANIFEST).unlink()
    kept = {path.name: path.stat().st_mtime_ns for path in (out / "rollouts").iterdir()}
    lines: list[str] = []
    summary = run_rollouts(cfg, 1, str(out), cfg.models.policy, echo=lines.append)
    assert lines[0] == "rollouts, round 1: 1 instructions (3 done before)"
    assert any(line.split()[:2] == ["reward", "1/1"] for line in lines[1:]), lines
    assert summary["instructions_resumed"] == 3 and summary["rollouts"] == 6
    redone = f"part-{shard_key(['scene-b'])}.parquet"
    assert {name: mtime for name, mtime in kept.items() if name != redone} == {
        path.name: path.stat().st_mtime_ns for path in (out / "rollouts").iterdir() if path.name != redone}
    assert read_rollouts(str(out)).equals(read_rollouts(first))


def test_a_rollout_dir_of_another_round_is_refused(rollout_run):
    from engine.generation_dir import OutputDirInUse
    from engine.rollouts import run_rollouts

    cfg, out, _ = rollout_run
    with pytest.raises(OutputDirInUse, match="another rollout pass's outputs .*iteration"):
        run_rollouts(cfg, 2, out, cfg.models.policy)


def test_preflight_refuses_a_job_s_reward_model_in_one_line(reward_model_dir, tiny_llava_dir, tmp_path):
    key = "models.reward_model.path"
    unverified = tmp_path / "smolvlm-rm"
    (unverified / HEAD_FILE).parent.mkdir(parents=True)
    (unverified / HEAD_FILE).write_bytes(b"")
    (unverified / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    cases = {
        "": f"{key} is empty, but this job runs the reward stage",
        tiny_llava_dir: f"has no {HEAD_FILE}: it is not a reward model",
        "tiny:llava": f"has no {HEAD_FILE}",
        str(tmp_path / "nope"): f"has no {HEAD_FILE}",
    }
    for path, message in cases.items():
        with pytest.raises(PreflightError, match=message) as err:
            check_reward_model(key, ModelConfig(path=path))
        assert "\n" not in str(err.value)
    with pytest.raises(PreflightError, match="models.reward_model.backend = 'vllm' is verified for reward models of "
                                             "model type 'llava', 'qwen2_vl' only, not 'smolvlm'"):
        check_reward_model(key, ModelConfig(path=str(unverified), backend="vllm"))
    with pytest.raises(PreflightError, match="backend = 'toy-grammar' cannot serve a reward model"):
        check_reward_model(key, ModelConfig(path=reward_model_dir, backend="toy-grammar"))
    check_reward_model(key, ModelConfig(path=str(unverified)))  # hf serves any family
    check_reward_model(key, ModelConfig(path=reward_model_dir, backend="vllm"))
    cfg = load_config(SMOKE)
    with pytest.raises(PreflightError, match=f"{key} is empty"):
        preflight(cfg, reward_models={key: cfg.models.reward_model})
    preflight(cfg)  # a job without the reward stage needs no reward model
