"""jobs/ppo.py: its options under --help, its one-line refusals, the rounds' configs (fast);
two rounds end to end, and the same result after a SIGKILL at any point (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from kill_and_resume import any_file, kill_when, stable

from engine.config import Config, PpoConfig, load_config
from engine.ppo import round_config

REPO = Path(__file__).resolve().parent.parent


def run_job(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/ppo.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_help_documents_every_ppo_and_reward_key():
    result = run_job("--help")
    assert result.returncode == 0, result.stderr
    for field in msgspec.structs.fields(PpoConfig):
        assert f"ppo.{field.name} = " in result.stdout, field.name
    for key in ("reward.resources.batch_size", "models.reward_model.path", "models.reward_model.backend"):
        assert f"{key} = " in result.stdout, key


def test_a_run_without_a_reward_model_is_refused_in_one_line():
    result = run_job("--set", 'models.reward_model.path=""')
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: models.reward_model.path is empty, but this job runs the reward stage")


def test_a_missing_reward_model_is_refused_in_one_line(tmp_path):
    result = run_job("--set", f'models.reward_model.path="{tmp_path / "nowhere"}"')
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "models.reward_model.path" in line and "nowhere" in line


def test_every_round_keeps_the_first_policy_as_reference_and_continues_the_critic():
    cfg = load_config(None, ['models.policy.path="tiny:llava"', 'models.reward_model.path="/rm"'])
    first = round_config(cfg, "tiny:llava", "/rm")
    later = round_config(cfg, "/run/iter_0/checkpoint/model", "/run/iter_0/checkpoint/critic")
    assert first.ppo.reference == later.ppo.reference == "tiny:llava"
    assert later.models.policy.path == "/run/iter_0/checkpoint/model"
    assert later.ppo.critic == "/run/iter_0/checkpoint/critic"
    chosen = round_config(msgspec.structs.replace(cfg, ppo=PpoConfig(reference="/ref")), "/p", "/c")
    assert chosen.ppo.reference == "/ref"
    assert isinstance(chosen, Config)


# ------------------------------------------------------------------ two rounds, crash-resume (slow)

SMOKE = REPO / "configs" / "smoke.toml"
# Four smoke instructions, two answers each, two rounds, a checkpoint every step.
FAST = ["input.limit=4", "sample.n=2", "ppo.rounds=2", "eval.enabled=false", "train.checkpoint_every_steps=1",
        "train.micro_batch_size=2"]


def ppo_overrides(out_dir: Path, cache: str, reward_model: str) -> list[str]:
    return [*FAST, f"run.output_dir={out_dir}", f"models.cache_dir={cache}", f"models.reward_model.path={reward_model}"]


def ppo_args(out_dir: Path, cache: str, reward_model: str) -> list[str]:
    return [sys.executable, "jobs/ppo.py", *[a for o in ppo_overrides(out_dir, cache, reward_model) for a in ("--set", o)]]


def rollouts_of(run_dir: Path, k: int) -> list[dict]:
    from engine.rollouts import read_rollouts

    return read_rollouts(str(run_dir / f"iter_{k}")).to_pylist()


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, ray_local, model_cache, reward_model_dir):
    from engine.ppo import run_ppo

    out = tmp_path_factory.mktemp("ppo")
    cfg = load_config(SMOKE, ppo_overrides(out, model_cache, reward_model_dir))
    return out / cfg.run.name, run_ppo(cfg, echo=lambda text: None)


@pytest.mark.slow
def test_two_rounds_sample_from_the_last_policy_and_continue_the_critic(two_rounds, reward_model_dir):
    run_dir, summaries = two_rounds
    first, second = summaries
    assert first["critic"] == reward_model_dir
    assert second["policy"] == first["train"]["model_dir"] == str(run_dir / "iter_0" / "checkpoint" / "model")
    assert second["critic"] == first["train"]["critic_dir"] == str(run_dir / "iter_0" / "checkpoint" / "critic")
    for k, summary in enumerate(summaries):
        rows = rollouts_of(run_dir, k)
        assert len(rows) == summary["rollouts"]["rollouts"] == 4 * 2 and {row["round"] for row in rows} == {k}
        assert summary["train"]["steps"] == 2 * 8 // 2  # ppo.epochs x rollouts / micro-batch
        for key in ("objective/kl", "objective/scores", "policy/clipfrac", "val/vpred", "loss/value_avg"):
            assert key in summary["train"]["metrics"], key
    # Round 1 sampled from round 0's trained policy: other answers for the same seeds' draws.
    assert [row["answer"] for row in rollouts_of(run_dir, 0)] != [row["answer"] for row in rollouts_of(run_dir, 1)]


KILL_POINTS = {
    "mid-rollouts": lambda it: any_file(it / "rollouts", "*.parquet"),
    "between-rollouts-and-training": lambda it: (it / "rollouts.json").exists(),
    "mid-training": lambda it: any_file(it / "checkpoint" / "ds_checkpoint", "step_*"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_ends_with_the_uninterrupted_runs_rollouts_and_summaries(point, two_rounds, tmp_path,
                                                                                   model_cache, reward_model_dir):
    reference, _ = two_rounds
    run_dir = tmp_path / reference.name
    args = ppo_args(tmp_path, model_cache, reward_model_dir)
    kill_when(lambda: KILL_POINTS[point](run_dir / "iter_0"), args)
    assert not (run_dir / "iter_0" / "summary.json").exists()
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    for k in (0, 1):
        assert rollouts_of(reference, k) == rollouts_of(run_dir, k), k
        summary_a = json.loads((reference / f"iter_{k}" / "summary.json").read_text())
        summary_b = json.loads((run_dir / f"iter_{k}" / "summary.json").read_text())
        assert stable(summary_a) == stable(summary_b), k
