"""Validate: every input row either passes with its image bytes in hand, or is diverted with
a named reason (engine.images.REASONS, missing_id,
empty_prompt, prompt_too_long). Never raises on a row."""

from __future__ import annotations

import pyarrow as pa

from engine.config import ValidateConfig
from engine.flight import divert, to_rows, to_table
from engine.images import ImageRejected, decode_image
from engine.instruction_io import load_image_bytes

STAGE = "validate"


def check_row(row: dict, cfg: ValidateConfig) -> None:
    """Divert the row in place if it is unusable; fill `image` from `image_uri` if needed."""
    prompt = row.get("prompt") or ""
    if not row.get("id"):
        return divert(row, STAGE, "missing_id", "the row has no id")
    if not prompt.strip():
        return divert(row, STAGE, "empty_prompt", "the prompt is empty")
    if len(prompt) > cfg.max_prompt_chars:
        return divert(row, STAGE, "prompt_too_long", f"{len(prompt)} chars > max_prompt_chars {cfg.max_prompt_chars}")
    if row.get("image") is None and row.get("image_uri"):
        try:
            row["image"] = load_image_bytes(row["image_uri"])
        except OSError as exc:
            return divert(row, STAGE, "missing_image", f"{row['image_uri']}: {exc}")
    try:
        decode_image(row.get("image"), cfg.max_image_bytes, cfg.max_image_pixels)
    except ImageRejected as exc:
        return divert(row, STAGE, exc.reason, exc.detail)


def validate_batch(batch: pa.Table, cfg: ValidateConfig) -> pa.Table:
    """map_batches function (batch_format="pyarrow"): instruction rows -> flight rows."""
    rows = to_rows(batch)
    for row in rows:
        check_row(row, cfg)
    return to_table(rows)
