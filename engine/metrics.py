"""Per-stage counters exported as Ray custom metrics, so throughput shows on the Ray dashboard.

Each counter is tagged (stage, iteration, run); rates (rows/s, tokens/s, pairs/s) are Prometheus
`rate()` over them. Outside a Ray worker or driver (plain unit tests) recording is a no-op.
"""

from __future__ import annotations

COUNTERS: dict[str, str] = {
    "rows_in": "instruction rows entering a stage",
    "rows_out": "instruction rows a stage passed on alive (not diverted)",
    "rejects": "rows or answers a stage diverted to rejects/",
    "answers": "answers sampled",
    "tokens": "tokens generated or scored",
    "claims": "claims split from answers",
    "questions": "yes/no questions scored",
    "pairs": "preference pairs made",
}
TAG_KEYS = ("stage", "iteration", "run")


def metric_name(counter: str) -> str:
    return f"rlaifv_{counter}"


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
