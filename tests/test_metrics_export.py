"""The engine's and the trainer's custom metrics, as Ray's Prometheus endpoint exports them.

The end-to-end test starts its own Ray head (a subprocess, so it never meets the in-process
Ray of conftest's ray_local fixture), runs a smoke generation against it and reads
/metrics on loopback until the counters show up. Ray's metrics agent is part of ray[default];
without it the endpoint never opens and that test is skipped.
"""

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fixtures_ray import ray_head as start_ray_head

from engine.metrics import TRAIN_GAUGES, prometheus_name
from train.losses import dpo_loss
from train.ppo_losses import ppo_policy_loss, value_loss

ROOT = Path(__file__).resolve().parents[1]
# The modules Ray's metrics agent (ray.dashboard.modules.reporter) imports beyond ray[data].
AGENT_MODULES = ("opencensus", "aiohttp_cors", "opentelemetry.exporter.prometheus")
# What the smoke pipeline counts (it diverts no rows, so no rejects).
PIPELINE_COUNTERS = ("rows_in", "rows_out", "answers", "tokens", "claims", "questions", "pairs")


def _has_metrics_agent() -> bool:
    try:
        return all(importlib.util.find_spec(name) for name in AGENT_MODULES)
    except ModuleNotFoundError:  # a parent package is missing
        return False


@pytest.fixture
def ray_head():
    # Workers report metrics every second (default 10 s): a short wait for /metrics.
    with start_ray_head(env={"RAY_metrics_report_interval_ms": "1000"}) as head:
        yield head


def _scrape(metrics_port: int) -> list:
    """The ray_rlaifv_ samples (name, labels, value): one per metric, worker and tag set."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("ray_rlaifv_")]


def _total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def _wait_for(metrics_port: int, names: set[str], timeout: float = 40) -> list:
    # The agent exports what workers reported at its last flush (every few seconds).
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(metrics_port)
        if names <= {s.name for s in samples} or time.monotonic() > deadline:
            return samples
        time.sleep(1)


@pytest.mark.skipif(not _has_metrics_agent(), reason="Ray's metrics agent needs ray[default] ("
                    + ", ".join(AGENT_MODULES) + "), which is not installed")
def test_smoke_generation_exports_engine_and_training_metrics(ray_head, model_cache, tmp_path):
    metrics_port = ray_head.metrics_port
    env = {**os.environ, **ray_head.env, "RAY_ADDRESS": ray_head.address}
    generate = subprocess.run(
        [sys.executable, "jobs/generate.py", "--set", "input.limit=2", "--set", "sample.n=2",
         "--set", f"run.output_dir={tmp_path}", "--set", f"models.cache_dir={model_cache}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert generate.returncode == 0, generate.stdout[-3000:] + generate.stderr[-3000:]
    # The trainer's call, in a Ray worker on the same head: as rank 0 of Ray Train runs it.
    # One step dict with every training gauge's key (a DPO step and a PPO step each set theirs).
    step = {"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01, "learning_rate": 5e-7,
            "step_seconds": 1.5, "objective/scores": 1.2, "objective/kl": 0.03, "policy/clipfrac": 0.1,
            "loss/value_avg": 0.05}
    train = subprocess.run(
        [sys.executable, "-c",
         "import ray; from engine.metrics import record_train_step; ray.init(); "
         f"ray.get(ray.remote(lambda: record_train_step({step!r}, 'smoke', 0)).remote())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-3000:]

    expected = {prometheus_name(name) for name in (*PIPELINE_COUNTERS, *TRAIN_GAUGES, "train_steps")}
    samples = _wait_for(metrics_port, expected)
    found = {s.name for s in samples}
    assert expected <= found, f"missing {sorted(expected - found)}; got {sorted(found)}"
    assert all(_total(samples, name, run="smoke", iteration="0") > 0 for name in expected), samples
    for stage in ("sample", "split", "score", "pair"):  # both instructions reach every stage
        assert _total(samples, prometheus_name("rows_in"), stage=stage) == 2, stage
    assert _total(samples, prometheus_name("answers"), stage="sample") == 2 * 2
    assert _total(samples, prometheus_name("train_loss"), stage="train") == pytest.approx(0.69)
    assert _total(samples, prometheus_name("train_steps"), stage="train") == 1


def test_trainer_metrics_carry_every_key_the_training_gauges_read():
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    loss, metrics = dpo_loss(chosen, rejected, chosen - 0.5, rejected, beta=0.1)
    # The trainer adds these two to dpo_loss's dict before recording (train/trainer.py).
    available = {"loss", *metrics, "learning_rate", "step_seconds"}
    # PPO's step (train.objectives.PpoObjective.loss): the two losses' metrics and its own.
    values, mask = torch.zeros(1, 2), torch.ones(1, 2)
    _, policy_metrics = ppo_policy_loss(values, values, values, mask, clip=0.2)
    _, value_metrics = value_loss(values, values, values, mask, clip=0.2)
    available |= {*policy_metrics, *value_metrics, "objective/kl", "objective/scores", "objective/entropy",
                  "loss/policy_avg", "loss/value_avg"}
    assert {key for key, _ in TRAIN_GAUGES.values()} <= available


def test_recording_outside_ray_is_a_no_op():
    # In a fresh process: this one may hold conftest's Ray session. Recording must neither
    # fail nor start a Ray session of its own.
    script = ("import ray; from engine.metrics import record_train_step; "
              "record_train_step({'loss': 1.0}, 'run', 0); assert not ray.is_initialized()")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
