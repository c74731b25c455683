"""Synthetic scenes: coloured shapes at known places on a 3x3 grid, with their ground truth.

Deterministic from a seed (byte-identical PNGs and labels), they are the embedded default's
input and the ground truth for hallucination evaluation. The world is engine.vocabulary.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import click
import pyarrow as pa
from PIL import Image, ImageDraw

from engine.instruction_io import write_instructions
from engine.schemas import INSTRUCTION_SCHEMA
from engine.vocabulary import COLOURS, POSITIONS, SHAPES

DESCRIBE = "Describe the image in detail."
INSTRUCTION_KINDS = ("describe", "present", "absent", "list", "count")
# Below this a shape is a couple of pixels and no longer shows what it is.
MIN_SIZE = 12


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


Scene = tuple[SceneObject, ...]


def make_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """Objects at distinct places, listed in reading order (top left to bottom right)."""
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(POSITIONS)}, "
                         f"got min_objects={min_objects}, max_objects={max_objects}")
    count = rng.randint(min_objects, max_objects)
    places = sorted(rng.sample(list(POSITIONS), count), key=lambda p: POSITIONS[p][::-1])
    return tuple(SceneObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), p) for p in places)


def _star(cx: float, cy: float, outer: float) -> list[tuple[float, float]]:
    inner = outer * 0.5
    return [(cx + (outer if k % 2 == 0 else inner) * math.sin(k * math.pi / 5),
             cy - (outer if k % 2 == 0 else inner) * math.cos(k * math.pi / 5)) for k in range(10)]


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, cell: float) -> None:
    col, row = POSITIONS[obj.position]
    cx, cy, r = (col + 0.5) * cell, (row + 0.5) * cell, cell * 0.36
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif obj.shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, size: int = 96) -> bytes:
    """PNG bytes; identical for identical scenes (no metadata, fixed compression)."""
    if size < MIN_SIZE:
        raise ValueError(f"image size {size} is below the minimum {MIN_SIZE}")
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw(draw, obj, size / 3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def describe(scene: Scene) -> str:
    """The ground-truth description in the scene grammar: one sentence per object."""
    return " ".join(f"There is a {o.name} at the {o.position}." for o in scene)


def instruction_for(kind: str, scene: Scene, rng: random.Random) -> str:
    """The prompt of one kind for a scene; the yes/no kinds draw their object from rng."""
    if kind == "describe":
        return DESCRIBE
    if kind == "present":
        return f"Is there a {rng.choice(scene).name} in the image?"
    if kind == "absent":
        present = {o.name for o in scene}
        absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
        return f"Is there a {rng.choice(absent)} in the image?"
    if kind == "list":
        return "What objects are in the image?"
    if kind == "count":
        return "How many shapes are there in the image?"
    raise ValueError(f"unknown instruction kind {kind!r}; known: {INSTRUCTION_KINDS}")


def make_instructions(n: int, seed: int, kinds: tuple[str, ...] = ("describe",), size: int = 96) -> pa.Table:
    """n scenes as instruction rows (INSTRUCTION_SCHEMA) with their ground truth: the objects and
    the scene grammar's description as the one reference; kinds cycle over the rows."""
    unknown = [k for k in kinds if k not in INSTRUCTION_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty selection of {INSTRUCTION_KINDS}, got {tuple(kinds)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = make_scene(rng)
        rows.append({
            "id": f"scene-{seed}-{i:05d}",
            "prompt": instruction_for(kinds[i % len(kinds)], scene, rng),
            "image": render(scene, size),
            "image_uri": None,
            "objects": [o.name for o in scene],
            "references": [describe(scene)],
        })
    return pa.Table.from_pylist(rows, schema=INSTRUCTION_SCHEMA)


@click.command()
@click.option("--n", type=int, required=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--size", type=int, default=96, show_default=True, help="Image side in pixels.")
@click.option("--kinds", default="describe", show_default=True,
              help=f"Comma-separated instruction kinds, cycled: {', '.join(INSTRUCTION_KINDS)}.")
@click.option("--out", required=True, help="Output .parquet or .jsonl (local path or fsspec URL).")
def main(n: int, seed: int, size: int, kinds: str, out: str) -> None:
    """Write a synthetic scene instruction dataset."""
    try:
        table = make_instructions(n, seed, tuple(k.strip() for k in kinds.split(",")), size)
        write_instructions(table, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {n} scenes to {out}")


if __name__ == "__main__":
    main()
