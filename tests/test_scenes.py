"""Synthetic scenes: deterministic, and the labels match the drawing."""

import io
import random
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from engine.scenes import DESCRIBE, describe, make_instructions, make_scene, render
from engine.schemas import INSTRUCTION_SCHEMA
from engine.vocabulary import COLOURS, POSITIONS, SHAPES

REPO = Path(__file__).resolve().parent.parent


def test_same_seed_same_bytes_and_labels():
    a, b = make_instructions(12, seed=5), make_instructions(12, seed=5)
    assert a.equals(b) and a.schema == INSTRUCTION_SCHEMA
    assert not a.equals(make_instructions(12, seed=6))


def test_labels_match_the_drawing():
    rng = random.Random(0)
    size = 96
    for _ in range(40):
        scene = make_scene(rng)
        pixels = Image.open(io.BytesIO(render(scene, size))).convert("RGB")
        at = {o.position: o for o in scene}
        for place, (col, row) in POSITIONS.items():
            centre = (int((col + 0.5) * size / 3), int((row + 0.5) * size / 3))
            expected = COLOURS[at[place].colour] if place in at else (255, 255, 255)
            assert pixels.getpixel(centre) == expected, (place, scene)


def test_every_shape_and_colour_is_drawn():
    rng = random.Random(1)
    seen = {(o.colour, o.shape) for _ in range(300) for o in make_scene(rng)}
    assert {s for _, s in seen} == set(SHAPES) and {c for c, _ in seen} == set(COLOURS)


def test_description_mentions_exactly_the_objects():
    scene = make_scene(random.Random(2), min_objects=3, max_objects=3)
    text = describe(scene)
    assert text.count("There is a") == 3
    for obj in scene:
        assert f"a {obj.colour} {obj.shape} at the {obj.position}." in text


def test_instruction_kinds():
    table = make_instructions(5, seed=0, kinds=("describe", "present", "absent", "list", "count"))
    prompts = table["prompt"].to_pylist()
    objects = table["objects"].to_pylist()
    assert prompts[0] == DESCRIBE
    assert any(o in prompts[1] for o in objects[1])          # asks about a present object
    assert not any(o + " " in prompts[2] for o in objects[2])  # asks about an absent one


def test_shipped_data_equals_a_fresh_generation():
    assert pq.read_table(REPO / "data/smoke/instructions.parquet").equals(make_instructions(16, seed=0))
    assert pq.read_table(REPO / "data/smoke/heldout.parquet").equals(make_instructions(32, seed=1))
