"""jobs/ppo.py: its options under --help, its one-line refusals, the rounds' configs (fast);
two rounds end to end, and the same result after a SIGKILL at any point (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

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
