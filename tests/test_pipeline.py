"""End to end on local Ray with tiny models: every stage runs through actor pools, the output
validates against the schemas, bad rows land in rejects/ with their reason, and a second run
with the same seed writes identical pairs."""

import io
import json
from base64 import b64encode
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Features
from PIL import Image

from engine.config import load_config
from engine.inputs import InputError
from engine.pipeline import GENERATION_MANIFEST, generate_pairs
from engine.preflight import preflight
from engine.schemas import PAIR_FEATURES, PAIR_SCHEMA, REJECT_SCHEMA, turn_text
from engine.storage import read_json, read_parquet_dir

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"
GOOD_ROWS = 4
# configs/smoke_<family>.toml: smoke.toml with another family's models.
FAMILY_SMOKES = sorted((REPO / "configs").glob("smoke_*.toml"))


def png(size=(24, 24), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory) -> str:
    """A JSONL input: good rows from the shipped scenes plus one row of each bad kind."""
    tmp = tmp_path_factory.mktemp("input")
    shipped = pq.read_table(REPO / "data" / "smoke" / "instructions.parquet").to_pylist()[:GOOD_ROWS]
    rows = [{"id": r["id"], "prompt": r["prompt"], "image": b64encode(r["image"]).decode()} for r in shipped]
    good = png()
    (tmp / "on_disk.png").write_bytes(good)
    rows += [
        {"id": "bad-empty-prompt", "prompt": "   ", "image": b64encode(good).decode()},
        {"id": "bad-long-prompt", "prompt": "word " * 400, "image": b64encode(good).decode()},
        {"id": "bad-undecodable", "prompt": "Describe the image.", "image": b64encode(b"not an image").decode()},
        {"id": "bad-truncated", "prompt": "Describe the image.", "image": b64encode(good[: len(good) // 2]).decode()},
        {"id": "bad-missing-file", "prompt": "Describe the image.", "image_uri": str(tmp / "nope.png")},
        {"id": "bad-oversized", "prompt": "Describe the image.", "image": b64encode(png((400, 400))).decode()},
        {"id": "good-uri", "prompt": "Describe the image.", "image_uri": str(tmp / "on_disk.png")},
        {"id": "bad-placeholder", "prompt": "Describe <image> here.", "image": b64encode(good).decode()},
    ]
    path = tmp / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "bad-cut-line", "prompt": "Desc\n')
    return str(path)


def smoke_config(input_path: str, model_cache: str, *extra: str):
    return load_config(SMOKE, [
        f'input.path="{input_path}"', f'models.cache_dir="{model_cache}"',
        "sample.n=3", "sample.max_new_tokens=12", "validate.max_prompt_chars=1000",
        "validate.max_image_pixels=100000", *extra,
    ])


@pytest.fixture(scope="module")
def first_run(ray_local, model_cache, mixed_input, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gen1"))
    summary = generate_pairs(smoke_config(mixed_input, model_cache), iteration=0, out_dir=out)
    return out, summary


def test_every_stage_ran_and_output_validates(first_run):
    out, summary = first_run
    assert summary["instructions"] == GOOD_ROWS + 9
    assert summary["answers"] == (GOOD_ROWS + 1) * 3
    for stage in ("sample", "split", "score", "pair"):
        assert summary["stages"][stage]["busy_seconds"] > 0, stage
    pairs = read_parquet_dir(f"{out}/pairs", PAIR_SCHEMA)
    # The shards carry datasets' feature metadata: it reads them back as the pair features.
    assert Features.from_arrow_schema(pq.read_schema(f"{out}/pairs/part-00000.parquet")) == PAIR_FEATURES
    assert "trl dpo" in Path(f"{out}/pairs/README.md").read_text()
    assert pairs.num_rows == summary["pairs"] > 0
    for pair in pairs.to_pylist():
        assert pair["chosen_score"] - pair["rejected_score"] >= 1
        assert turn_text(pair["chosen"]).strip() != turn_text(pair["rejected"]).strip()
        assert pair["ref_chosen_logps"] < 0 and pair["ref_rejected_logps"] < 0
    manifest = read_json(f"{out}/{GENERATION_MANIFEST}")
    assert manifest["summary"]["pairs"] == pairs.num_rows


def test_each_bad_input_lands_in_rejects_with_its_reason(first_run):
    out, summary = first_run
    rejects = {r["instruction_id"]: r for r in read_parquet_dir(f"{out}/rejects", REJECT_SCHEMA).to_pylist()
               if r["answer_index"] == -1}
    expected = {
        "bad-empty-prompt": "empty_prompt",
        "bad-long-prompt": "prompt_too_long",
        "bad-undecodable": "undecodable_image",
        "bad-truncated": "truncated_image",
        "bad-missing-file": "missing_image",
        "bad-oversized": "image_too_many_pixels",
        "instructions.jsonl:13": "unreadable_row",
        "bad-placeholder": "image_placeholder",
    }
    assert {k: rejects[k]["reason"] for k in expected} == expected
    assert all(r["stage"] == "validate" and r["detail"] for r in rejects.values())
    assert "nope.png" in rejects["bad-missing-file"]["detail"]
    assert "instructions.jsonl line 13 is not JSON" in rejects["instructions.jsonl:13"]["detail"]
    assert summary["instructions_rejected"] == len(expected)
    assert "good-uri" not in rejects


def test_same_seed_gives_identical_pairs(first_run, model_cache, mixed_input, tmp_path):
    out, _ = first_run
    generate_pairs(smoke_config(mixed_input, model_cache), iteration=0, out_dir=str(tmp_path))
    assert read_parquet_dir(f"{out}/pairs", PAIR_SCHEMA).equals(read_parquet_dir(f"{tmp_path}/pairs", PAIR_SCHEMA))


def test_unreachable_input_fails_before_models_load(ray_local, model_cache, tmp_path):
    with pytest.raises(InputError, match="nope.parquet"):
        generate_pairs(smoke_config(str(tmp_path / "nope.parquet"), model_cache), 0, str(tmp_path / "out"))
    with pytest.raises(InputError, match="not reachable"):
        generate_pairs(smoke_config("nosuchproto://bucket/x.parquet", model_cache), 0, str(tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.parametrize("path", FAMILY_SMOKES, ids=lambda path: path.stem)
def test_a_family_smoke_config_runs_a_generation_pass(path, ray_local, model_cache, tmp_path):
    """A family's smoke config as `make run ARGS="--config ..."` takes it, on its 16 shipped
    instructions: preflight passes, every stage runs the family's models and the pairs (with
    the policy's reference log-probs) validate."""
    cfg = load_config(path, [f'models.cache_dir="{model_cache}"'])
    preflight(cfg)
    summary = generate_pairs(cfg, iteration=0, out_dir=str(tmp_path))
    assert summary["instructions"] == 16 and summary["instructions_rejected"] == 0
    assert summary["answers"] == 16 * cfg.sample.n and summary["claims"] > 0
    for stage in ("sample", "split", "score", "pair"):
        assert summary["stages"][stage]["busy_seconds"] > 0, stage
    pairs = read_parquet_dir(f"{tmp_path}/pairs", PAIR_SCHEMA)
    assert pairs.num_rows == summary["pairs"] > 0
    for pair in pairs.to_pylist():
        assert pair["chosen_score"] - pair["rejected_score"] >= 1
        assert pair["ref_chosen_logps"] < 0 and pair["ref_rejected_logps"] < 0
