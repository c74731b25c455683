"""Validate: every input row either passes with its image bytes in hand, or is diverted with
a named reason. Never raises on a row.

Reasons: unreadable_row, missing_id, empty_prompt, prompt_too_long, image_placeholder, and the
image reasons of engine.images.REASONS (a file missing at `image_uri` is missing_image, its URI
in the detail with any credentials removed).
Batches are pyarrow Tables in and flight tables (engine.flight.FLIGHT_SCHEMA) out: the input
columns, `image` filled from `image_uri` where only the URI was given, and `reject_stage`,
`reject_reason`, `reject_detail` (null on good rows). Good rows keep their bytes as read:
the image is decoded only to check it, never re-encoded.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from engine.config import ValidateConfig
from engine.flight import divert, is_live, to_rows, to_table
from engine.images import ImageRejected, decode_image
from engine.instruction_io import load_image_bytes
from engine.metrics import StageMetrics
from engine.stages.base import RunContext

STAGE = "validate"
# Text the processors of the supported families reserve for the image: a prompt holding one
# would make the processor place (or miscount) image tokens, so such a row is diverted.
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|image|>",
                      "<fake_token_around_image>", "<global-img>")


def check_row(row: dict, cfg: ValidateConfig) -> None:
    """Divert the row in place if it is unusable; fill `image` from `image_uri` if needed.
    Cheap checks come first, so a bad prompt never costs an image read."""
    prompt = row.get("prompt") or ""
    if row.get("read_error"):
        return divert(row, STAGE, "unreadable_row", row["read_error"])
    if not row.get("id"):
        return divert(row, STAGE, "missing_id", "the row has no id")
    if not prompt.strip():
        return divert(row, STAGE, "empty_prompt", "the prompt is empty or only whitespace")
    if len(prompt) > cfg.max_prompt_chars:
        return divert(row, STAGE, "prompt_too_long", f"{len(prompt)} chars > max_prompt_chars {cfg.max_prompt_chars}")
    placeholders = [text for text in IMAGE_PLACEHOLDERS if text in prompt]
    if placeholders:
        return divert(row, STAGE, "image_placeholder",
                      f"the prompt holds {placeholders[0]!r}, which the model's processor reserves for the image")
    if not row.get("image") and row.get("image_uri"):
        try:
            row["image"] = load_image_bytes(row["image_uri"])
        except OSError as exc:  # FileNotFoundError included; the message names the URI
            return divert(row, STAGE, "missing_image", str(exc))
    try:
        decode_image(row.get("image"), cfg.max_image_bytes, cfg.max_image_pixels)
    except ImageRejected as exc:
        return divert(row, STAGE, exc.reason, exc.detail)


def validate_batch(batch: pa.Table, cfg: ValidateConfig, context: RunContext | None = None) -> pa.Table:
    """Instruction rows (INSTRUCTION_SCHEMA) -> flight rows, same order, bad ones diverted.
    A plain function for map_batches (a task, no actor); with a context it also counts rows
    and rejects on the dashboard, as the model stages do."""
    rows = to_rows(batch)
    for row in rows:
        check_row(row, cfg)
    if context is not None:
        n_live = sum(is_live(row) for row in rows)
        _metrics(context.run_name, context.iteration).add(rows_in=len(rows), rows_out=n_live,
                                                          rejects=len(rows) - n_live)
        context.report(STAGE, len(rows))
    return to_table(rows)


@cache
def _metrics(run_name: str, iteration: int) -> StageMetrics:
    """One set of counters per worker process (a task's process runs many batches)."""
    return StageMetrics(STAGE, run_name, iteration)
