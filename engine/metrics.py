"""Engine and training metrics exported as Ray custom metrics, so throughput shows on the Ray
dashboard and in Grafana (cluster/grafana/rlaifv-dashboard.json).

Every metric is tagged (stage, iteration, run); rates (rows/s, tokens/s, pairs/s) are Prometheus
`rate()` over the counters. Ray's Prometheus export prefixes each name with `ray_` and counters
also get `_total` (see `prometheus_name`; tests/test_metrics_export.py checks it against a real
Ray head). Outside a Ray worker or driver (plain unit tests) recording is a no-op.
"""

from __future__ import annotations

from functools import cache

COUNTERS: dict[str, str] = {
    "rows_in": "instruction rows entering a stage",
    "rows_out": "instruction rows a stage passed on alive (not diverted)",
    "rejects": "rows or answers a stage diverted to rejects/",
    "answers": "answers sampled",
    "tokens": "tokens generated or scored",
    "claims": "claims split from answers",
    "no_claims": "answers diverted because the splitter found no claim in them",
    "questions": "yes/no questions scored",
    "pairs": "preference pairs made",
}
TAG_KEYS = ("stage", "iteration", "run")

TRAIN_STAGE = "train"
# Training gauge -> (key of the trainer's per-step metrics dict, description). The trainer's
# values are already averaged over the global batch of every worker, so rank 0 records them.
TRAIN_GAUGES: dict[str, tuple[str, str]] = {
    "train_loss": ("loss", "DPO/DDPO loss of the last optimizer step"),
    "train_reward_accuracy": ("rewards/accuracies", "share of pairs whose chosen reward beats the rejected one"),
    "train_reward_margin": ("rewards/margins", "mean implicit reward of chosen minus rejected"),
    "train_learning_rate": ("learning_rate", "learning rate of the last optimizer step"),
    "train_step_seconds": ("step_seconds", "wall time of the last optimizer step"),
    # PPO (jobs/ppo.py), under TRL's metric names; a DPO step carries none of them.
    "train_ppo_scores": ("objective/scores", "PPO: mean summed reward-model score of the round's answers"),
    "train_ppo_kl": ("objective/kl", "PPO: mean summed log pi - log pi_ref of the round's answers"),
    "train_ppo_policy_clipfrac": ("policy/clipfrac", "PPO: share of answer tokens whose ratio was clipped"),
    "train_ppo_value_loss": ("loss/value_avg", "PPO: clipped value loss of the last optimizer step"),
}
TRAIN_COUNTERS: dict[str, str] = {"train_steps": "optimizer steps done (rate() = steps/s)"}

# Ray Data's own per-operator gauges (ray.data._internal.stats exports each OpRuntimeMetrics
# actor field as `data_<field>`, tagged dataset and operator = "MapBatches(<Stage>)..."), by
# Prometheus name: the dashboard's actors-per-pool panels read them next to the engine's rates.
RAY_DATA_GAUGES: dict[str, str] = {
    "ray_data_num_alive_actors": "alive actors of an operator's pool",
    "ray_data_num_pending_actors": "actors asked for and not yet placed (waiting for a node)",
    "ray_data_num_restarting_actors": "actors restarting after their node or process died",
}


def metric_name(name: str) -> str:
    return f"rlaifv_{name}"


def prometheus_name(name: str) -> str:
    """The name a metric has in the Prometheus text Ray exports (what Grafana queries)."""
    suffix = "_total" if name in COUNTERS or name in TRAIN_COUNTERS else ""
    return f"ray_{metric_name(name)}{suffix}"


def prometheus_names() -> set[str]:
    return {prometheus_name(name) for name in (*COUNTERS, *TRAIN_GAUGES, *TRAIN_COUNTERS)}


class StageMetrics:
    def __init__(self, stage: str, run: str, iteration: int):
        import ray
        from ray.util.metrics import Counter

        self._tags = {"stage": stage, "iteration": str(iteration), "run": run}
        self._counters = {}
        if ray.is_initialized():
            self._counters = {
                name: Counter(metric_name(name), description=text, tag_keys=TAG_KEYS)
                for name, text in COUNTERS.items()
            }

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            if name not in COUNTERS:
                raise KeyError(f"unknown metric {name!r}; known: {sorted(COUNTERS)}")
            if value and name in self._counters:
                self._counters[name].inc(value, tags=self._tags)


@cache
def _train_instruments() -> tuple[dict, dict]:
    # Built once per process: a Ray Train worker records every optimizer step.
    from ray.util.metrics import Counter, Gauge

    gauges = {name: Gauge(metric_name(name), description=text, tag_keys=TAG_KEYS)
              for name, (_, text) in TRAIN_GAUGES.items()}
    counters = {name: Counter(metric_name(name), description=text, tag_keys=TAG_KEYS)
                for name, text in TRAIN_COUNTERS.items()}
    return gauges, counters


def record_train_step(metrics: dict, run: str, iteration: int) -> None:
    """Export one optimizer step's metrics (the trainer's per-step dict). Call on rank 0 only:
    every rank holds the same all-reduced values, and one series per run is what a panel wants."""
    import ray

    if not ray.is_initialized():
        return
    gauges, counters = _train_instruments()
    tags = {"stage": TRAIN_STAGE, "iteration": str(iteration), "run": run}
    for name, (key, _) in TRAIN_GAUGES.items():
        if key in metrics:
            gauges[name].set(float(metrics[key]), tags=tags)
    counters["train_steps"].inc(1, tags=tags)
