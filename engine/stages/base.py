"""What every model stage shares: its backend loaded once per actor, flight-row conversion,
per-stage timing and metrics. A subclass implements `process(live_rows)` only."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from engine.backends import make_backend
from engine.config import ModelConfig
from engine.flight import is_live, timed, to_rows, to_table
from engine.metrics import StageMetrics


class ModelStage:
    """A callable class for `Dataset.map_batches(..., batch_format="pyarrow")`."""

    stage: str = ""

    def __init__(self, model_cfg: ModelConfig, cache_dir: str, run_name: str, iteration: int):
        # Loaded here, in the actor, once: never at import time.
        self.backend = make_backend(model_cfg, cache_dir)
        self.iteration = iteration
        self.metrics = StageMetrics(self.stage, run_name, iteration)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = to_rows(batch)
        live = [row for row in rows if is_live(row)]
        self.metrics.add(rows_in=len(live))
        with timed(rows, self.stage):
            if live:
                self.process(live)
        self.metrics.add(rows_out=sum(is_live(row) for row in live))
        return to_table(rows)

    def process(self, rows: list[dict]) -> None:
        raise NotImplementedError


def row_image(row: dict) -> Image.Image | None:
    """The validated image of a row (validation already rejected undecodable bytes)."""
    if row.get("image") is None:
        return None
    return Image.open(io.BytesIO(row["image"])).convert("RGB")
