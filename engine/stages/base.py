"""What every model stage shares: the run context, the stage spec the pipeline maps over, and
the ModelStage base (backends loaded once per actor, flight-row conversion, per-stage timing
and metrics). A subclass implements `process(live_rows)` only."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import pyarrow as pa
from PIL import Image

from engine.flight import is_live, timed, to_rows, to_table
from engine.images import rgb
from engine.metrics import StageMetrics

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
    `stage_class(cfg=<its config section>, context=RunContext, backends={role: LoadBackend})`."""

    name: ClassVar[str] = ""
    # Whether process() reads the rows' image bytes; a stage that does not never converts them.
    reads_images: ClassVar[bool] = True

    def __init__(self, *, cfg: Any, context: RunContext, backends: Mapping[str, LoadBackend]):
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

    @property
    def backend(self):
        """The stage's one model (stages that hold a single role)."""
        (backend,) = self.backends.values()
        return backend

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = to_rows(batch, images=self.reads_images)
        live = [row for row in rows if is_live(row)]
        self.metrics.add(rows_in=len(live))
        with timed(rows, self.name):
            if live:
                self.process(live)
        self.metrics.add(rows_out=sum(is_live(row) for row in live))
        return to_table(rows, images=batch.column("image"))  # no model stage changes an image

    def process(self, rows: list[dict]) -> None:
        raise NotImplementedError


def row_image(row: dict) -> Image.Image | None:
    """The validated image of a row (validation already rejected undecodable bytes)."""
    if row.get("image") is None:
        return None
    return rgb(Image.open(io.BytesIO(row["image"])))
