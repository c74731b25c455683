"""What a person watching a pass sees: one line per stage that moved, with done/total
instructions, rate and ETA, instead of Ray Data's operator dumps and every worker's library
progress bars (those come back with --verbose)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

# Set in every local worker unless verbose: library progress bars and warnings (model loading,
# tokenizer fallbacks) that say nothing about the pass.
QUIET_WORKER_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def quiet_ray_data() -> None:
    """Ray Data's periodic operator tables and progress bars off in this (driver) process."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # its warning that the bars are off: we know
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def board():
    """A fresh tally of instructions per stage, as a Ray actor the stages report to. It lives on
    the driver's node: placed on a worker node, it would die with that node, and with it the
    pass that a lost node should only slow down."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        def __init__(self):
            self.done: dict[str, int] = {}

        def add(self, stage: str, rows: int) -> None:
            self.done[stage] = self.done.get(stage, 0) + rows

        def counts(self) -> dict[str, int]:
            return dict(self.done)

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ProgressBoard.options(scheduling_strategy=here).remote()


def readable(value):
    """A float to four significant digits, for people; anything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


def progress_line(stage: str, done: int, total: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    eta = f"ETA {format_seconds((total - done) / rate)}" if rate and done < total else ""
    return f"  {stage:<8} {done:>6}/{total:<6} instructions  {rate:6.2f}/s  {eta}".rstrip()


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressPrinter:
    """Prints, every `interval` seconds while a pass runs, a line for each stage whose count
    moved since the last print (and a last one at the end)."""

    def __init__(self, tally, stages: Sequence[str], total: int, echo: Callable[[str], None],
                 interval: float = 10.0):
        self.tally, self.stages, self.total, self.echo, self.interval = tally, tuple(stages), total, echo, interval
        self.start = time.monotonic()
        self.shown: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.print_moved()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.print_moved()

    def print_moved(self) -> None:
        import ray

        if self.tally is None:
            return
        try:
            counts = ray.get(self.tally.counts.remote())
        except ray.exceptions.RayActorError as exc:  # progress is for people: the pass goes on
            self.tally = None
            self.echo(f"  progress lines stop: the tally is gone ({type(exc).__name__})")
            return
        seconds = time.monotonic() - self.start
        for stage in self.stages:
            done = counts.get(stage, 0)
            if done != self.shown.get(stage, 0):
                self.echo(progress_line(stage, done, self.total, seconds))
                self.shown[stage] = done
