"""Held-out metrics as lines for people: rounded, saying so when a CHAIR of 0 only means the
model named no object at all, and when caption scores are missing for want of references."""

from __future__ import annotations

from typing import Sequence

from engine.captions import CAPTION_KEYS
from engine.progress import readable

NO_MENTIONS = "(no objects mentioned: CHAIR is 0 because nothing was named, not because it was right)"


def shown(key: str, value) -> str:
    return "(no references)" if key in CAPTION_KEYS and value is None else readable(value)


def format_metrics(metrics: dict, keys: Sequence[str] | None = None) -> list[str]:
    lines = [f"  {key:<28} {shown(key, metrics[key])}" for key in keys or metrics if key in metrics]
    if metrics.get("mentions") == 0:
        lines.append(f"  {NO_MENTIONS}")
    return lines
