"""What every model stage shares: the run context, the stage spec the pipeline maps over, and
the ModelStage base (backends loaded once per actor, flight-row conversion, per-stage timing
and metrics, batches in flight). A subclass implements `process(live_rows)` only."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import pyarrow as pa
from PIL import Image

from engine.flight import divert, is_live, timed, to_rows, to_table
from engine.images import rgb
from engine.metrics import StageMetrics

MAX_ERROR_CHARS = 500

# A not-yet-loaded backend; called once inside the stage's actor (engine.backends.BackendFactory,
# or any zero-argument callable, e.g. a test's fake).
LoadBackend = Callable[[], Any]


@dataclass(frozen=True)
class RunContext:
    """What every stage of one pass shares: it names the metrics, derives the seeds and says
    where tiny models are cached."""

    run_name: str
    seed: int
    iteration: int
    cache_dir: str
    # The pass's progress tally (engine.progress.board), when someone is watching.
    progress: Any = None

    def report(self, stage: str, rows: int) -> None:
        """Count `rows` instructions through `stage` on the tally, without waiting for it."""
        if self.progress is not None and rows:
            self.progress.add.remote(stage, rows)


@dataclass(frozen=True)
class StageSpec:
    """One step of a pass: its name (metrics, timing columns, summary rows), its class, the
    model roles whose backends it holds (first = the one its GPUs are sized for) and the
    config section it reads (which holds its `resources`)."""

    name: str
    stage_class: type
    models: tuple[str, ...]
    section: str


class ModelStage:
    """A callable class for `Dataset.map_batches(..., batch_format="pyarrow")`, built with
    `stage_class(cfg=<its config section>, context=RunContext, backends={role: LoadBackend},
    batches_in_flight=n)`.

    Ray Data calls the async `__call__`, which runs `run_batch` on a worker thread, at most
    `batches_in_flight` batches at once (engine.backends.batches_in_flight: more than one only
    for backends whose concurrent calls share one engine, so the next batch's requests start
    while the previous batch's last answers decode; the actor's Ray max_concurrency must allow
    as many, engine.pipeline.actor_pool). `run_batch` is the same work, synchronous."""

    name: ClassVar[str] = ""
    # Whether process() reads the rows' image bytes; a stage that does not never converts them.
    reads_images: ClassVar[bool] = True
    # The kind of backend each of its roles is built as (engine.backends.BACKEND_TABLES).
    backend_kind: ClassVar[str] = "generate"

    def __init__(self, *, cfg: Any, context: RunContext, backends: Mapping[str, LoadBackend],
                 batches_in_flight: int = 1):
        self.cfg = cfg
        self.context = context
        # Loaded here, in the actor, once: never at import time. Equal loaders load one model.
        loaded: dict[LoadBackend, Any] = {}
        self.backends: dict[str, Any] = {}
        for role, load in backends.items():
            if load not in loaded:
                loaded[load] = load()
            self.backends[role] = loaded[load]
        self.metrics = StageMetrics(self.name, context.run_name, context.iteration)
        self._in_flight = asyncio.Semaphore(batches_in_flight)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise ValueError on settings of the stage's config section that its constructor
        would refuse; preflight calls it before any actor starts (engine.config_check)."""

    @property
    def backend(self):
        """The stage's one model (stages that hold a single role)."""
        (backend,) = self.backends.values()
        return backend

    async def __call__(self, batch: pa.Table) -> pa.Table:
        async with self._in_flight:
            return await asyncio.to_thread(self.run_batch, batch)

    def run_batch(self, batch: pa.Table) -> pa.Table:
        rows = to_rows(batch, images=self.reads_images)
        live = [row for row in rows if is_live(row)]
        self.metrics.add(rows_in=len(live))
        with timed(rows, self.name):
            if live:
                self.process_guarded(live)
        n_out = sum(is_live(row) for row in live)
        self.metrics.add(rows_out=n_out, rejects=len(live) - n_out)
        self.context.report(self.name, len(rows))
        return to_table(rows, images=batch.column("image"))  # no model stage changes an image

    def process_guarded(self, rows: list[dict]) -> None:
        """process(rows), and when it raises on a row-level problem (a prompt the processor
        refuses, one over the model's context...), the same on each half of the batch, down to
        the single rows it fails on, which are diverted with the error: one bad row never
        ends the pass. Out-of-memory and interrupts stay fatal."""
        snapshot = [dict(row) for row in rows]
        try:
            self.process(rows)
            return
        except Exception as exc:  # noqa: BLE001 - any error but the fatal ones is the rows' to carry
            if is_fatal(exc):
                raise
            error = exc
        for row, before in zip(rows, snapshot):  # undo what the failed call wrote
            row.clear()
            row.update(before)
        if len(rows) == 1:
            message = " ".join(f"{type(error).__name__}: {error}".split())
            divert(rows[0], self.name, "backend_error", message[:MAX_ERROR_CHARS])
            return
        middle = len(rows) // 2
        self.process_guarded(rows[:middle])
        self.process_guarded(rows[middle:])

    def process(self, rows: list[dict]) -> None:
        raise NotImplementedError


def is_fatal(exc: Exception) -> bool:
    """Out of memory (host or accelerator): no smaller batch would fix the model, so the pass
    stops, named in one line by the job."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def row_image(row: dict) -> Image.Image | None:
    """The validated image of a row (validation already rejected undecodable bytes)."""
    if row.get("image") is None:
        return None
    return rgb(Image.open(io.BytesIO(row["image"])))
