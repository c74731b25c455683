"""Toy-world corrections: every wrong sentence is corrected from the scene's ground truth, the
right ones are kept verbatim, and the edits say where."""

import random

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from engine import hallucination as hal
from engine.scenes import SceneObject, describe, make_scene
from engine.schemas import CORRECTION_SCHEMA
from toyworld.corrections import correct, main
from train.data import read_correction_table
from toyworld.sft_data import noisy_description

SCENE = (SceneObject("red", "circle", "top left"), SceneObject("blue", "star", "center"))
CIRCLE, STAR = (describe((o,)) for o in SCENE)


def chair_s(text: str, scene) -> float:
    vocab = hal.load_vocabulary(["scenes"])
    mentions = hal.extract_mentions(text, vocab)
    return hal.chair([mentions], [hal.hallucinated(mentions, hal.ground_truth_set([o.name for o in scene], vocab))])["chair_s"]


def check_edits(rejected: str, chosen: str, edits: list[dict]) -> None:
    """Outside the edits the two texts are the same characters."""
    r = c = 0
    for edit in edits:
        assert rejected[r:edit["rejected_start"]] == chosen[c:edit["chosen_start"]]
        r, c = edit["rejected_end"], edit["chosen_end"]
    assert rejected[r:] == chosen[c:]


@pytest.mark.parametrize("rejected, chosen", [
    # right: nothing to correct
    (f"{CIRCLE} {STAR}", f"{CIRCLE} {STAR}"),
    # an absent object at the star's place: the star, which nothing describes yet
    (f"{CIRCLE} There is a green square at the center.", f"{CIRCLE} {STAR}"),
    # a present object at the wrong place: its place
    ("There is a blue star at the top right.", STAR),
    # an absent object when every object is described: removed, with the space before it
    (f"{CIRCLE} {STAR} There is a green cross at the bottom.", f"{CIRCLE} {STAR}"),
    # ... or after it, when it is the first sentence
    (f"There is a green cross at the top. {CIRCLE}  {STAR}", f"{CIRCLE}  {STAR}"),
    # outside the grammar: rewritten when it names an absent object, kept when it names none
    (f"A yellow diamond is here. {CIRCLE}", f"{STAR} {CIRCLE}"),
    (f"{CIRCLE} There is a blue st", f"{CIRCLE} There is a blue st"),
    (f"I see a red circle. {STAR}", f"I see a red circle. {STAR}"),
])
def test_wrong_sentences_are_corrected_and_right_ones_kept(rejected, chosen):
    corrected, edits = correct(rejected, SCENE)
    assert corrected == chosen and chair_s(corrected, SCENE) == 0
    assert bool(edits) == (rejected != chosen)
    check_edits(rejected, corrected, edits)


def test_noisy_descriptions_of_random_scenes_are_all_corrected():
    rng = random.Random(0)
    for _ in range(300):
        scene = make_scene(rng)
        other = make_scene(rng)
        sentences = noisy_description(scene, rng, noise=0.7).split(". ")
        sentences.insert(rng.randrange(len(sentences) + 1), describe(other[:1]).rstrip("."))
        rejected = ". ".join(s.rstrip(".") for s in sentences) + "."
        corrected, edits = correct(rejected, scene)
        assert chair_s(corrected, scene) == 0 and corrected.strip()
        right = [s + "." for s in rejected[:-1].split(". ") if SceneObject(*_parts(s)) in scene]
        assert all(s in corrected for s in right)  # right sentences are kept verbatim
        check_edits(rejected, corrected, edits)


def _parts(sentence: str) -> tuple[str, str, str]:
    words = sentence.removeprefix("There is a ").split(" at the ")
    colour, shape = words[0].split(" ", 1)
    return colour, shape, words[1]


def test_toy_policy_corrections_are_seeded_and_readable_for_training(tmp_path):
    """The toy policy (hf backend) describes 6 seeded scenes; each description is a correction
    row, CHAIR_s 0 after correction, or diverted with its reason; a rerun writes the same rows."""
    outs = [tmp_path / f"{k}.parquet" for k in range(2)]
    for out in outs:
        result = CliRunner().invoke(main, ["--n", "6", "--seed", "3", "--out", str(out)])
        assert result.exit_code == 0, result.output
    table, again = (read_correction_table(str(out)) for out in outs)
    assert table.equals(again) and table.schema == CORRECTION_SCHEMA
    rejects = pq.read_table(tmp_path / "0.rejects.parquet")
    assert table.num_rows + rejects.num_rows == 6
    assert set(rejects["reason"].to_pylist()) <= {"nothing_to_correct", "empty_answer"}
    rng = random.Random(3)
    scenes = {f"correction-3-{i:05d}": make_scene(rng) for i in range(6)}
    for row in table.to_pylist():
        assert chair_s(row["chosen"], scenes[row["id"]]) == 0 and row["edits"]
        check_edits(row["rejected"], row["chosen"], row["edits"])
