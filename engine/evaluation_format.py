"""Held-out metrics as lines for people: rounded, and saying so when a CHAIR of 0 only means
the model named no object at all."""

from __future__ import annotations

from typing import Sequence

from engine.progress import readable

NO_MENTIONS = "(no objects mentioned: CHAIR is 0 because nothing was named, not because it was right)"


def format_metrics(metrics: dict, keys: Sequence[str] | None = None) -> list[str]:
    lines = [f"  {key:<28} {readable(metrics[key])}" for key in keys or metrics if key in metrics]
    if metrics.get("mentions") == 0:
        lines.append(f"  {NO_MENTIONS}")
    return lines
