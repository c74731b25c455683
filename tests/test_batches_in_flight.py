"""Consecutive batches overlap in one stage actor when its backend allows it (vLLM), and never
when it does not (hf): the pool Ray Data builds from engine.pipeline.actor_pool runs
ModelStage's async __call__ with engine.backends.batches_in_flight batches at once.

The fake policy proves it without timing assertions: its sample() waits at a two-party
barrier, so with two batches allowed the stage's rows come out alive only if two batches were
in flight together; it records each call's interval and the most calls it ever held at once.
With one batch allowed it waits PATIENCE_S for a partner that must never come, then goes on
alone: a second batch let in during that window would show as two calls held at once.
"""

from __future__ import annotations

import sys
import threading
import time
from functools import partial

import pytest

from engine.backends import batches_in_flight
from engine.backends.base import Completion
from engine.config import ModelConfig, Resources, SampleConfig
from engine.flight import is_live, to_table
from engine.pipeline import actor_pool
from engine.stages.base import RunContext
from engine.stages.sample import SampleStage

CONTEXT = RunContext(run_name="test", seed=3, iteration=1, cache_dir="unused")
ROWS = 4
# Long enough for any loaded machine: reached only when the overlap is broken.
BARRIER_TIMEOUT_S = 120
# How long a call of a one-batch-at-a-time stage waits for a partner before going on alone.
PATIENCE_S = 2.0


class RendezvousPolicy:
    """Answers "<start> <end> <most>": when the call entered and left (monotonic seconds, one
    clock per actor) and the most calls inside sample() at once so far."""

    max_model_len = 600

    def __init__(self, alone_after: float | None = None):
        self.barrier = threading.Barrier(2, timeout=alone_after or BARRIER_TIMEOUT_S)
        self.alone_after = alone_after
        self.lock = threading.Lock()
        self.inside = self.most = 0

    def prompt_tokens(self, item):
        return 1

    def sample(self, items, seeds, params):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        start = time.monotonic()
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            if self.alone_after is None:
                raise
            self.barrier.reset()
        end = time.monotonic()
        with self.lock:
            self.inside -= 1
            most = self.most
        return [[Completion(f"{start} {end} {most}", 1, s) for s in row] for row in seeds]


def _run(ray_local, in_flight: int, rows_per_block: int) -> list[dict]:
    """ROWS one-row batches through a one-actor SampleStage pool. Batches of one block are one
    Ray Data task (overlapped by the stage's async __call__), of several blocks several tasks
    (overlapped by the actor's max_concurrency)."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rows = [{"id": str(i), "prompt": "Describe."} for i in range(ROWS)]
    blocks = [to_table(rows[i:i + rows_per_block]) for i in range(0, ROWS, rows_per_block)]
    ds = ray_local.data.from_arrow(blocks).map_batches(
        SampleStage,
        fn_constructor_kwargs={"cfg": SampleConfig(n=1), "context": CONTEXT,
                               "backends": {"policy": partial(RendezvousPolicy, None if in_flight > 1 else PATIENCE_S)},
                               "batches_in_flight": in_flight},
        **actor_pool(Resources(batch_size=1, num_cpus=0.5), in_flight),
    )
    return ds.take_all()


def _calls(rows: list[dict]) -> list[tuple[float, float, int]]:
    assert all(is_live(row) for row in rows), [row.get("reject_detail") for row in rows]
    start, end, most = zip(*(row["answers"][0].split() for row in rows))
    return list(zip(map(float, start), map(float, end), map(int, most)))


@pytest.mark.parametrize("rows_per_block", [ROWS, 1], ids=["one-task", "task-per-batch"])
def test_two_batches_are_in_flight_at_once_in_one_actor(ray_local, rows_per_block):
    calls = _calls(_run(ray_local, 2, rows_per_block))
    assert len(calls) == ROWS
    # Every call passed the barrier: another call was inside with it.
    for i, (start, end, _) in enumerate(calls):
        assert any(max(start, other_start) < min(end, other_end)
                   for j, (other_start, other_end, _) in enumerate(calls) if j != i)
    assert max(most for _, _, most in calls) == 2  # and never a third


@pytest.mark.parametrize("rows_per_block", [ROWS, 1], ids=["one-task", "task-per-batch"])
def test_a_backend_that_takes_one_batch_at_a_time_never_holds_two(ray_local, rows_per_block):
    calls = _calls(_run(ray_local, 1, rows_per_block))
    assert len(calls) == ROWS and max(most for _, _, most in calls) == 1


def test_vllm_stages_take_two_batches_and_any_other_backend_one():
    vllm, hf = ModelConfig(path="m", backend="vllm"), ModelConfig(path="m", backend="hf")
    assert batches_in_flight([vllm]) == 2
    assert batches_in_flight([vllm, hf]) == 1 and batches_in_flight([hf]) == 1
    assert batches_in_flight([]) == 1  # a model-free stage
