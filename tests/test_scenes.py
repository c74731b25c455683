"""Synthetic scenes: deterministic, and the labels match the drawing."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from engine.scenes import (DESCRIBE, MIN_SIZE, SceneObject, describe, main, make_instructions, make_scene,
                           render)
from engine.schemas import INSTRUCTION_SCHEMA
from engine.vocabulary import COLOURS, POSITIONS, SHAPES

REPO = Path(__file__).resolve().parent.parent
WHITE = (255, 255, 255)


def pixels(scene, size):
    return Image.open(io.BytesIO(render(scene, size))).convert("RGB")


def cell_box(place, size):
    col, row = POSITIONS[place]
    cell = size / 3
    return (round(col * cell), round(row * cell), round((col + 1) * cell), round((row + 1) * cell))


def cell_centre(place, size):
    col, row = POSITIONS[place]
    return int((col + 0.5) * size / 3), int((row + 0.5) * size / 3)


def test_same_seed_same_bytes_and_labels():
    a, b = make_instructions(12, seed=5), make_instructions(12, seed=5)
    assert a.equals(b) and a.schema == INSTRUCTION_SCHEMA
    assert a["id"].to_pylist()[:2] == ["scene-5-00000", "scene-5-00001"]
    # the one reference is the scene grammar's description of the listed objects
    for objects, (reference,) in zip(a["objects"].to_pylist(), a["references"].to_pylist()):
        assert [f"{c} {s}" for c, s in re.findall(r"There is a (\w+) (\w+) at", reference)] == objects
    other = make_instructions(12, seed=6)
    assert other["image"].to_pylist() != a["image"].to_pylist()
    assert other["objects"].to_pylist() != a["objects"].to_pylist()


@pytest.mark.parametrize("size", [MIN_SIZE, 96])
def test_every_shape_fills_its_cell_centre_everywhere(size):
    for shape in SHAPES:
        for place in POSITIONS:
            image = pixels((SceneObject("purple", shape, place),), size)
            assert image.getpixel(cell_centre(place, size)) == COLOURS["purple"], (shape, place)


def test_labels_match_the_drawing_and_empty_cells_are_white():
    rng = random.Random(0)
    size = 96
    for _ in range(40):
        scene = make_scene(rng)
        image = pixels(scene, size)
        at = {o.position: o for o in scene}
        for place in POSITIONS:
            if place in at:
                assert image.getpixel(cell_centre(place, size)) == COLOURS[at[place].colour], (place, scene)
            else:
                assert image.crop(cell_box(place, size)).getcolors() == [((size // 3) ** 2, WHITE)], (place, scene)


def test_scene_places_are_distinct_and_in_reading_order():
    rng = random.Random(3)
    for _ in range(50):
        places = [o.position for o in make_scene(rng, 1, 9)]
        assert places == sorted(set(places), key=lambda p: POSITIONS[p][::-1])


def test_every_shape_and_colour_is_drawn():
    rng = random.Random(1)
    seen = {(o.colour, o.shape) for _ in range(300) for o in make_scene(rng)}
    assert {s for _, s in seen} == set(SHAPES) and {c for c, _ in seen} == set(COLOURS)


def test_description_mentions_exactly_the_objects():
    rng = random.Random(2)
    sentence = re.compile(r"There is a (\w+) (\w+) at the ([a-z ]+)\.")
    for _ in range(20):
        scene = make_scene(rng)
        text = describe(scene)
        said = sentence.findall(text)
        assert " ".join(f"There is a {c} {s} at the {p}." for c, s, p in said) == text
        assert said == [(o.colour, o.shape, o.position) for o in scene]
    assert describe((SceneObject("red", "circle", "top left"), SceneObject("blue", "square", "center"))) == (
        "There is a red circle at the top left. There is a blue square at the center.")


def test_instruction_kinds():
    table = make_instructions(5, seed=0, kinds=("describe", "present", "absent", "list", "count"))
    prompts = table["prompt"].to_pylist()
    objects = table["objects"].to_pylist()
    asked = [re.fullmatch(r"Is there a (\w+ \w+) in the image\?", p) for p in prompts[1:3]]
    assert prompts[0] == DESCRIBE
    assert asked[0] and asked[0][1] in objects[1]
    assert asked[1] and asked[1][1] not in objects[2]
    assert prompts[3:] == ["What objects are in the image?", "How many shapes are there in the image?"]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="kinds"):
        make_instructions(2, seed=0, kinds=("describe", "sing"))
    with pytest.raises(ValueError, match="max_objects"):
        make_scene(random.Random(0), 2, 10)
    with pytest.raises(ValueError, match="size"):
        render((), size=MIN_SIZE - 1)


def test_shipped_data_equals_a_fresh_generation(tmp_path):
    for n, seed, name in ((16, 0, "instructions.parquet"), (32, 1, "heldout.parquet")):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["--n", n, "--seed", seed, "--out", str(out)])
        assert result.exit_code == 0, result.output
        fresh, shipped = pq.read_table(out), pq.read_table(REPO / "data" / "smoke" / name)
        assert shipped.num_rows == n and fresh.equals(shipped)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--n", "2", "--kinds", "sing", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 1 and "kinds" in result.output and result.exception.__class__ is SystemExit
