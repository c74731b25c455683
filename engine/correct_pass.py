"""jobs/correct.py's work: read a generation pass's claims/, the input's images for the
instructions named there, and write AI corrections (engine.ai_corrections) and the answers
not corrected, with their reasons. No model runs: the pass already asked the labeler."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from engine.ai_corrections import correction_tables
from engine.config import Config
from engine.errors import PreflightError
from engine.inputs import rows_with_ids
from engine.instruction_io import CORRECTIONS, rejects_beside, write_rows
from engine.schemas import CLAIMS_SCHEMA
from engine.storage import join, list_parquet, read_parquet_dir, write_parquet_atomic


def scored_claims(generation_dir: str) -> pa.Table:
    """Every scored answer of the pass, refused in one line when there is none to correct."""
    if not list_parquet(join(generation_dir, "claims")):
        raise PreflightError(f"{generation_dir} holds no claims/ shards: run a generation pass there first")
    claims = read_parquet_dir(join(generation_dir, "claims"), CLAIMS_SCHEMA)
    if claims.num_rows and pc.all(pc.is_null(claims["quotes"])).as_py():
        raise PreflightError(f"the pass in {generation_dir} ran without split.quote_sentences = true, so no claim says "
                             "which sentence it comes from; run it again with that setting")
    return claims


def instruction_images(cfg: Config, wanted: set[str]) -> dict[str, tuple[bytes | None, str | None]]:
    """(image bytes, image_uri) of each wanted instruction of cfg.input, the others left unread."""
    found: dict[str, tuple[bytes | None, str | None]] = {}
    for table in rows_with_ids(cfg.input, wanted):
        for row in table.select(["id", "image", "image_uri"]).to_pylist():
            found[row["id"]] = (row["image"], row["image_uri"])
    return found


def run_correct(cfg: Config, generation_dir: str, out: str) -> dict:
    """Write the corrections to `out` and the diverted answers beside it; return the counts."""
    claims = scored_claims(generation_dir)
    images = instruction_images(cfg, set(claims["instruction_id"].to_pylist()))
    corrections, diverted = correction_tables(claims, images)
    write_rows(corrections, out, CORRECTIONS)
    rejects_url = rejects_beside(out)
    write_parquet_atomic(diverted, rejects_url)
    reasons = ", ".join(f"{reason} {n}" for reason, n in Counter(diverted["reason"].to_pylist()).most_common())
    return {"corrections": corrections.num_rows, "diverted": diverted.num_rows, "rejects": rejects_url,
            "reasons": reasons or "none"}
