"""Hostile inputs against jobs/generate.py: every row-level problem is diverted with its reason
while the good rows of the same input reach the output (one pass over one mixed input), and
every input- or config-level problem ends the job with status 1 and one line before Ray
starts."""

from __future__ import annotations

import io
import json
import struct
import zlib
from base64 import b64encode
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from engine.schemas import REJECT_SCHEMA, PAIR_SCHEMA, instruction_stats_schema
from engine.storage import read_parquet_dir
from jobs.generate import main as generate

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "configs" / "smoke.toml")
GOOD_SCENES = 3
# The policy's context is cut to 200 tokens so that an ordinary prompt can be too long for it.
CONTEXT_TOKENS = 200


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bomb_header_png() -> bytes:
    """A valid 8x8 PNG whose header claims 100000x100000 pixels (CRC fixed): nothing decodes it."""
    png = encoded(Image.new("RGB", (8, 8)), "PNG")
    ihdr = bytearray(png[12:29])  # chunk type + data
    ihdr[4:12] = struct.pack(">II", 100_000, 100_000)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def b64(data: bytes) -> str:
    return b64encode(data).decode()


# id -> (stage, reason) of each row-level case whose id the reader can read.
DIVERTED = {
    "bad-context": ("sample", "prompt_too_long_for_model"),
    "bad-placeholder": ("validate", "image_placeholder"),
    "bad-prompt-number": ("validate", "unreadable_row"),
    "bad-objects-string": ("validate", "unreadable_row"),
    "bad-surrogate": ("validate", "unreadable_row"),
    "bad-corrupt-image": ("validate", "undecodable_image"),
    "bad-truncated-image": ("validate", "truncated_image"),
    "bad-bomb-header": ("validate", "image_too_many_pixels"),
    "bad-missing-file": ("validate", "missing_image"),
    "bad-unreachable-uri": ("validate", "missing_image"),
}
GOOD_IMAGES = ("good-cmyk", "good-16-bit", "good-animated-gif")


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory) -> Path:
    """A directory of two JSONL files: good rows and one of every row-level problem, and a
    binary file named .jsonl."""
    folder = tmp_path_factory.mktemp("fuzz") / "input"
    folder.mkdir()
    scenes = pq.read_table(REPO / "data" / "smoke" / "instructions.parquet").to_pylist()[:GOOD_SCENES]
    png = encoded(Image.new("RGB", (24, 24), (200, 30, 30)), "PNG")
    frames = [Image.new("P", (24, 24), colour) for colour in (1, 2, 3)]
    sixteen_bit = Image.fromarray((np.arange(576, dtype=np.uint16) * 100).reshape(24, 24))
    rows = [{"id": scene["id"], "prompt": scene["prompt"], "image": b64(scene["image"])} for scene in scenes] + [
        {"id": 42, "prompt": "Describe the image.", "image": b64(png)},  # an integer id is read as "42"
        {"id": "good-cmyk", "prompt": "Describe the image.",
         "image": b64(encoded(Image.new("CMYK", (24, 24), (0, 128, 255, 0)), "JPEG"))},
        {"id": "good-16-bit", "prompt": "Describe the image.", "image": b64(encoded(sixteen_bit, "PNG"))},
        {"id": "good-animated-gif", "prompt": "Describe the image.",
         "image": b64(encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50))},
        {"id": "bad-context", "prompt": "Describe the red circle. " * 60, "image": b64(png)},
        {"id": "bad-placeholder", "prompt": "Describe <image> here.", "image": b64(png)},
        {"id": "bad-prompt-number", "prompt": 5, "image": b64(png)},
        {"id": "bad-objects-string", "prompt": "Describe the image.", "image": b64(png), "objects": "circle"},
        {"id": "bad-corrupt-image", "prompt": "Describe the image.", "image": b64(b"\x89PNG\r\n\x1a\n" + bytes(64))},
        {"id": "bad-truncated-image", "prompt": "Describe the image.", "image": b64(png[: len(png) // 2])},
        {"id": "bad-bomb-header", "prompt": "Describe the image.", "image": b64(bomb_header_png())},
        {"id": "bad-missing-file", "prompt": "Describe the image.", "image_uri": str(folder.parent / "nope.png")},
        {"id": "bad-unreachable-uri", "prompt": "Describe the image.", "image_uri": "http://127.0.0.1:9/scene.png"},
    ]
    lines = [json.dumps(row).encode() for row in rows] + [
        b'{"id": "bad-surrogate", "prompt": "\\ud800 Describe the image."}',
        b'{"id": "bad-cut", "prompt": "Desc',  # its id cannot be read: the reader names file and line
        b'{"id": "bad-utf8", "prompt": "\xff\xfe"}',  # the same
    ]
    (folder / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "binary.jsonl").write_bytes(png)
    return folder


def job_args(input_path: Path, model_cache: str, out_dir: Path, *extra: str) -> list[str]:
    settings = [f"input.path={input_path}", "input.format=jsonl", f"models.cache_dir={model_cache}", "sample.n=3",
                "sample.max_new_tokens=12", f"models.policy.max_model_len={CONTEXT_TOKENS}", *extra]
    return ["--config", SMOKE, "--out", str(out_dir), *[arg for s in settings for arg in ("--set", s)]]


@pytest.fixture(scope="module")
def mixed_pass(ray_local, model_cache, mixed_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-out")
    result = CliRunner().invoke(generate, job_args(mixed_input, model_cache, out))
    assert result.exit_code == 0, result.output
    rejects = {r["instruction_id"]: r for r in read_parquet_dir(str(out / "rejects"), REJECT_SCHEMA).to_pylist()
               if r["answer_index"] == -1}
    stats = read_parquet_dir(str(out / "rows"), instruction_stats_schema(("sample", "split", "score", "pair")))
    return out, rejects, {row["instruction_id"]: row for row in stats.to_pylist()}


def good_ids() -> set[str]:
    scenes = pq.read_table(REPO / "data" / "smoke" / "instructions.parquet", columns=["id"])
    return {*scenes["id"].to_pylist()[:GOOD_SCENES], "42", *GOOD_IMAGES}


def test_the_good_rows_reach_the_output(mixed_pass):
    out, rejects, stats = mixed_pass
    good = good_ids()
    assert good <= set(stats) and not good & set(rejects)
    assert all(stats[i]["reject_reason"] is None and stats[i]["n_answers"] == 3 for i in good)
    pairs = read_parquet_dir(str(out / "pairs"), PAIR_SCHEMA)
    assert pairs.num_rows > 0 and set(pairs["instruction_id"].to_pylist()) <= good


@pytest.mark.parametrize("instruction_id", DIVERTED)
def test_each_bad_row_is_diverted_with_its_reason(mixed_pass, instruction_id):
    _, rejects, stats = mixed_pass
    reject = rejects[instruction_id]
    assert (reject["stage"], reject["reason"]) == DIVERTED[instruction_id] and reject["detail"]
    assert stats[instruction_id]["reject_reason"] == reject["reason"]


def test_the_reject_details_say_what_was_wrong(mixed_pass):
    _, rejects, _ = mixed_pass
    detail = {key: reject["detail"] for key, reject in rejects.items()}
    assert f"+ sample.max_new_tokens 12 > max_model_len {CONTEXT_TOKENS}" in detail["bad-context"]
    assert "field 'prompt' is int, expected str" in detail["bad-prompt-number"]
    assert "field 'objects' is str, expected list" in detail["bad-objects-string"]
    assert "lone surrogate" in detail["bad-surrogate"]
    assert "nope.png" in detail["bad-missing-file"] and "127.0.0.1:9" in detail["bad-unreachable-uri"]


def test_unreadable_lines_and_a_binary_file_are_diverted_by_file_and_line(mixed_pass):
    _, rejects, _ = mixed_pass
    n_lines = GOOD_SCENES + 1 + len(GOOD_IMAGES) + len(DIVERTED) + 2  # 1: id 42; the last 2: cut, not UTF-8
    unreadable = {key: reject["detail"] for key, reject in rejects.items() if key.startswith("mixed.jsonl:")}
    assert unreadable.keys() == {f"mixed.jsonl:{n_lines - 1}", f"mixed.jsonl:{n_lines}"}
    assert f"line {n_lines - 1} is not JSON" in unreadable[f"mixed.jsonl:{n_lines - 1}"]
    assert f"line {n_lines} is not UTF-8 text" in unreadable[f"mixed.jsonl:{n_lines}"]
    binary = [reject for key, reject in rejects.items() if key.startswith("binary.jsonl:")]
    assert binary and all(reject["reason"] == "unreadable_row" for reject in binary)


# ------------------------------------------------------------------ exit status: one line, no Ray


@pytest.fixture
def no_ray(monkeypatch):
    import engine.ray_runtime

    def init_ray(*args, **kwargs):
        raise AssertionError("Ray started before the job refused")

    monkeypatch.setattr(engine.ray_runtime, "init_ray", init_ray)


def refused(args: list[str]) -> str:
    result = CliRunner().invoke(generate, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("setting, message", [
    ("sample.n=0", "sample.n = 0 is out of range: must be >= 2"),
    ("sample.n=1", "sample.n = 1 is out of range: must be >= 2"),
    ("sample.n=-1", "sample.n = -1 is out of range: must be >= 2"),
    ("validate.max_image_pixels=-1", "validate.max_image_pixels = -1 is out of range: must be >= 1"),
    ("pair.resources.batch_size=0", "pair.resources.batch_size = 0 is out of range: must be >= 1"),
    ("score.resources.min_actors=0", "score.resources.min_actors = 0 is out of range: must be >= 1"),
])
def test_a_bad_config_value_is_refused(setting, message, mixed_input, model_cache, tmp_path, no_ray):
    assert message in refused(job_args(mixed_input, model_cache, tmp_path / "out", setting))
    assert not (tmp_path / "out").exists()


def test_repeated_ids_are_refused_naming_them(model_cache, tmp_path, no_ray):
    path = tmp_path / "repeats.jsonl"
    rows = [{"id": "a", "prompt": "Describe."}, {"id": "b", "prompt": "Describe."}, {"id": "a", "prompt": "Again."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert "repeats instruction ids ('a' x2; 1 repeated in all)" in refused(job_args(path, model_cache, tmp_path / "out"))


def test_an_out_dir_of_another_pass_is_refused(mixed_pass, mixed_input, model_cache, no_ray):
    out, _, _ = mixed_pass
    line = refused(job_args(mixed_input, model_cache, out, "run.seed=1"))
    assert f"{out} holds another generation pass's outputs (it differs in run.seed)" in line
    assert "differs in iteration" in refused([*job_args(mixed_input, model_cache, out), "--iteration", "1"])


def test_an_out_dir_of_outputs_without_a_start_marker_is_refused(mixed_input, model_cache, tmp_path, no_ray):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "part-00000.parquet").write_bytes(b"stale")
    assert "holds generation outputs (pairs) without the start marker" in refused(
        job_args(mixed_input, model_cache, tmp_path))


def test_a_start_marker_over_no_outputs_gives_way_to_the_corrected_command(tmp_path):
    from engine.config import load_config
    from engine.generation_dir import START_MARKER, claim_output_dir, pass_settings
    from engine.pipeline import STAGES

    def settings(*extra):
        return pass_settings(load_config(SMOKE, list(extra)), 0, load_config(SMOKE).models.policy, STAGES)

    claim_output_dir(str(tmp_path), settings("run.seed=1"))  # a pass that failed before writing anything
    claim_output_dir(str(tmp_path), settings("run.seed=2"))
    assert json.loads((tmp_path / START_MARKER).read_text())["run"]["seed"] == 2
