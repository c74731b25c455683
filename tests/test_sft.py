"""SFT (jobs/sft.py): augmentations that keep the answer true, reading and diverting examples,
the answer-only NLL against transformers' own loss, and a training run whose loss falls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_models import noise_image, noise_png
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from engine.config import SftConfig, ValidateConfig, load_config
from engine.instruction_io import SFT_EXAMPLES, write_rows
from engine.schemas import SFT_SCHEMA
from train.augment import augment_example, random_crop, swap_sides
from train.objectives import SftObjective
from train.sft_data import collate_sft, read_sft_examples

REPO = Path(__file__).resolve().parent.parent
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]


def test_swap_sides_exchanges_whole_words_keeping_case():
    assert swap_sides("A circle at the top left, Right of a star. LEFT!") == "A circle at the top right, Left of a star. RIGHT!"
    assert swap_sides("leftover brightness") == "leftover brightness"


def test_hflip_mirrors_the_image_and_the_text():
    image = noise_image(0)
    cfg = SftConfig(augment=["hflip"], augment_probability=1.0)
    flipped, question, answer = augment_example(image, "What is on the left?", "A star on the left.", cfg,
                                                np.random.default_rng(0))
    assert np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    assert (question, answer) == ("What is on the right?", "A star on the right.")


def test_brightness_contrast_keeps_every_pixels_dominant_colour():
    image = Image.new("RGB", (8, 8), (200, 40, 30))
    cfg = SftConfig(augment=["brightness_contrast"], augment_probability=1.0, jitter=0.3)
    out, question, answer = augment_example(image, "q", "A red square.", cfg, np.random.default_rng(3))
    pixels = np.asarray(out).reshape(-1, 3)
    assert (pixels.argmax(axis=1) == 0).all() and (question, answer) == ("q", "A red square.")


def test_crop_keeps_the_size_and_draws_repeat_with_the_seed():
    image = noise_image(1, size=(40, 30))
    a, b = (random_crop(image, 0.5, np.random.default_rng([7, 1, 2])) for _ in range(2))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_no_augmentation_by_default_and_probability_zero_changes_nothing():
    assert SftConfig().augment == []
    image = noise_image(2)
    cfg = SftConfig(augment=["hflip", "crop", "brightness_contrast"], augment_probability=0.0)
    out = augment_example(image, "left?", "left.", cfg, np.random.default_rng(0))
    assert out == (image, "left?", "left.")


def test_read_sft_examples_diverts_bad_rows_with_reasons(tmp_path):
    rows = [
        {"id": "ok", "image": noise_png(0), "question": "What is it?", "answer": "A red circle."},
        {"id": None, "image": noise_png(1), "question": "What is it?", "answer": "A blue star."},
        {"id": "empty", "image": noise_png(2), "question": "What is it?", "answer": "  "},
        {"id": "no-image", "image": None, "question": "What is it?", "answer": "A square."},
        {"id": "bad-image", "image": b"not a png", "question": "What is it?", "answer": "A square."},
    ]
    url = str(tmp_path / "sft.jsonl")
    write_rows(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), url, SFT_EXAMPLES)
    examples, rejects = read_sft_examples(url, ValidateConfig())
    assert examples["example_id"].to_pylist() == ["ok", "example-00000001"]
    assert examples["image"][0].as_py() == noise_png(0)
    reasons = dict(zip(rejects["instruction_id"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons["empty"] == "empty_text" and reasons["no-image"] == "missing_image"
    assert reasons["bad-image"] not in ("empty_text", "missing_image") and len(reasons) == 3


def sft_rows(n: int) -> list[dict]:
    return [{"example_id": f"ex-{i}", "image": noise_png(i), "question": "Describe the image.",
             "answer": f"There is a {COLOURS[i % 8]} circle at the top left."} for i in range(n)]


def test_the_loss_is_transformers_own_nll_over_the_answer_tokens(tiny_llava_dir):
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    objective = SftObjective(load_config(None), processor, sft_rows(3), torch.device("cpu"),
                             torch.float32, seed=0)
    batch = objective.batch([0, 1, 2], step=0)
    with torch.no_grad():
        loss, metrics = objective.loss(model, batch)
        labels = batch.model_inputs["input_ids"].masked_fill(batch.response_mask == 0, -100)
        expected = model(**batch.model_inputs, labels=labels).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 <= metrics["mean_token_accuracy"].item() <= 1
    # Only the answer and its end-of-turn token are learned: far fewer tokens than the sequence.
    assert 0 < int(batch.response_mask.sum()) < int(batch.model_inputs["attention_mask"].sum()) / 2


def test_collate_sft_draws_augmentations_from_each_rows_seed(tiny_llava_dir):
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    rows, cfg = sft_rows(2), SftConfig(augment=["crop"], augment_probability=1.0)
    plain = collate_sft(rows, processor, 512)
    first, again = (collate_sft(rows, processor, 512, cfg, [(0, 5, 0), (0, 5, 1)]) for _ in range(2))
    other = collate_sft(rows, processor, 512, cfg, [(0, 6, 0), (0, 6, 1)])
    pixels = [batch.model_inputs["pixel_values"] for batch in (plain, first, again, other)]
    assert torch.equal(pixels[1], pixels[2]) and not torch.equal(pixels[0], pixels[1])
    assert not torch.equal(pixels[1], pixels[3])
    assert torch.equal(first.model_inputs["input_ids"], plain.model_inputs["input_ids"])  # crop leaves the text


def test_sft_job_loss_starts_at_the_models_nll_and_falls(model_cache, tiny_llava_dir, tmp_path):
    data = tmp_path / "sft.parquet"
    rows = sft_rows(8)
    pq.write_table(pa.table({"id": [r["example_id"] for r in rows], "image": [r["image"] for r in rows],
                             "question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]}), data)
    out = tmp_path / "out"
    command = [sys.executable, "jobs/sft.py", "--data", str(data), "--init", "tiny:llava", "--out", str(out),
               "--set", f"models.cache_dir={model_cache}", "--set", "train.learning_rate=1e-3",
               "--set", "train.epochs=6", "--set", "train.micro_batch_size=8", "--set", "train.warmup_ratio=0",
               "--set", "ray.num_cpus=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trained 6 steps on 8 examples; model written to {out / 'model'}" in result.stdout
    history = [dict(item.split("=") for item in line.split()) for line in result.stdout.splitlines()
               if line.startswith("loss=")]
    losses = [float(h["loss"]) for h in history]
    # Step 0's loss is the initial model's NLL over every answer token (one global batch of all 8).
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    objective = SftObjective(load_config(None), processor, rows, torch.device("cpu"),
                             torch.float32, seed=0)
    batch = objective.batch(list(range(8)), step=0)
    with torch.no_grad():
        labels = batch.model_inputs["input_ids"].masked_fill(batch.response_mask == 0, -100)
        expected = model(**batch.model_inputs, labels=labels).loss.item()
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < 0.8 * losses[0]
    trained = AutoModelForImageTextToText.from_pretrained(out / "model")
    assert trained.config.model_type == model.config.model_type
