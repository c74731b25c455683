"""The toy policy's supervised examples: scene descriptions and yes/no existence questions.

Descriptions are noisy: some misname one object, so the policy learns to hallucinate at about
that rate when it samples, while the yes/no answers it learns are clean, the gap between
generating and discriminating that RLAIF-V's self-feedback exploits.

Absent objects are half near misses (a present object with its colour or its shape changed),
the mistakes a describing model makes, so the yes/no skill covers the claims the labeler
will be asked about; the other half are any absent object. Questions are worded exactly as the
labeler is asked the grammar splitter's questions, and as engine.evaluation probes.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace

from PIL import Image

from engine.config import ScoreConfig
from engine.scenes import DESCRIBE, Scene, describe, make_scene, render
from toyworld.grammar import existence_question
from engine.vocabulary import COLOURS, SHAPES

QUESTION_SUFFIX = ScoreConfig().question_suffix
ANSWERS = {True: "Yes", False: "No"}
BARE_SHAPE_SHARE = 0.1
ALL_OBJECTS = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)


@dataclass(frozen=True)
class Example:
    png: bytes  # engine.scenes.render's PNG: what an SFT file (engine.schemas.SFT_SCHEMA) carries
    prompt: str
    response: str

    @property
    def image(self) -> Image.Image:
        """The scene as the engine sees it: the PNG decoded."""
        return Image.open(io.BytesIO(self.png)).convert("RGB")


def near_misses(scene: Scene) -> list[str]:
    """Absent objects one attribute away from a present one."""
    present = {o.name for o in scene}
    close = {f"{c} {o.shape}" for o in scene for c in COLOURS} | {f"{o.colour} {s}" for o in scene for s in SHAPES}
    return sorted(close - present)


def absent_object(scene: Scene, rng: random.Random) -> str:
    """A near miss half of the time (when there is one), else any absent object."""
    close = near_misses(scene)
    if close and rng.random() < 0.5:
        return rng.choice(close)
    present = {o.name for o in scene}
    return rng.choice([name for name in ALL_OBJECTS if name not in present])


def asked_object(scene: Scene, present: bool, rng: random.Random) -> str:
    """A coloured shape, or one time in ten a bare shape ("a circle": any circle counts, as
    engine.hallucination reads it), that the scene has or lacks."""
    if rng.random() < BARE_SHAPE_SHARE:
        shapes = {o.shape for o in scene}
        return rng.choice(sorted(shapes) if present else [s for s in SHAPES if s not in shapes])
    return rng.choice(scene).name if present else absent_object(scene, rng)


def yes_no_example(scene: Scene, png: bytes, rng: random.Random) -> Example:
    present = rng.random() < 0.5
    name = asked_object(scene, present, rng)
    return Example(png, existence_question(name) + QUESTION_SUFFIX, ANSWERS[present])


def noisy_description(scene: Scene, rng: random.Random, noise: float) -> str:
    """The scene's description; with probability `noise` one object is misnamed, its colour or
    shape changed (a near miss), as web captions name things an image does not show."""
    if rng.random() >= noise:
        return describe(scene)
    k = rng.randrange(len(scene))
    obj = scene[k]
    if rng.random() < 0.5:
        obj = replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
    else:
        obj = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    return describe(scene[:k] + (obj,) + scene[k + 1:])


def examples(rng: random.Random, count: int, describe_share: float, max_objects: int, noise: float) -> list[Example]:
    """`count` examples on fresh scenes of 1 to max_objects objects; each is a description
    (misnamed with probability `noise`) with probability describe_share, else a yes/no question."""
    out = []
    for _ in range(count):
        scene = make_scene(rng, max_objects=max_objects)
        png = render(scene)
        if rng.random() < describe_share:
            out.append(Example(png, DESCRIBE, noisy_description(scene, rng, noise)))
        else:
            out.append(yes_no_example(scene, png, rng))
    return out
