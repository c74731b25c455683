"""CHAIR and yes/no probing metrics against hand-computed values, and the shipped vocabulary."""

import json

import pytest

from engine import hallucination as hal
from engine.chair_words import plural
from engine.vocabulary import COLOURS, PLURALS, SHAPES


@pytest.fixture(scope="module")
def coco():
    return hal.load_vocabulary(["coco"])


@pytest.fixture(scope="module")
def scenes():
    return hal.load_vocabulary(["scenes"])


def _extract_as_expected(cases, coco) -> tuple[list, list]:
    """Each case's mentions and hallucinations, checked against its expected ones."""
    mentions, hallucinations = [], []
    for text, truth, want_mentions, want_hallucinated in cases:
        found = hal.extract_mentions(text, coco)
        assert found == want_mentions, text
        assert hal.hallucinated(found, hal.ground_truth_set(truth, coco)) == want_hallucinated, text
        mentions.append(found)
        hallucinations.append(want_hallucinated)
    return mentions, hallucinations


def test_shipped_vocabulary_covers_coco_and_the_scene_world(coco, scenes):
    assert len(coco.objects) == 80
    assert {"person", "dining table", "hair drier", "teddy bear", "hot dog"} <= coco.objects
    assert scenes.objects == {f"{c} {s}" for c in COLOURS for s in SHAPES} | set(SHAPES)
    for shape, plural in PLURALS.items():
        assert scenes.canonical(plural) == shape
        assert all(scenes.canonical(f"{c} {plural}") == f"{c} {shape}" for c in COLOURS)
    # Both groups load together: no surface form names two objects.
    assert hal.load_vocabulary(["scenes", "coco"]).objects == coco.objects | scenes.objects


def test_mentions_by_longest_match_with_synonyms_and_plurals(coco):
    text = "Two puppies and a man sit by a hot-dog stand; the dog's owner holds a Teddy Bear."
    assert hal.extract_mentions(text, coco) == ["dog", "person", "hot dog", "dog", "teddy bear"]
    assert hal.extract_mentions("People, mice and a pair of scissors.", coco) == ["person", "mouse", "scissors"]
    assert hal.extract_mentions("", coco) == []


def test_chair_on_hand_written_descriptions(coco):
    cases = [  # (description, ground truth, mentions, hallucinated)
        ("A man walks two dogs. The dogs chase a cat.", ["person", "dog"],
         ["person", "dog", "dog", "cat"], ["cat"]),
        ("People sit on a sofa next to a table.", ["person", "couch", "dining table"],
         ["person", "couch", "dining table"], []),
        # a hallucinated object named twice counts twice
        ("A plane flies over a boat and another boat.", ["airplane"], ["airplane", "boat", "boat"], ["boat", "boat"]),
        ("A quiet, empty scene.", ["bench"], [], []),  # no objects at all
    ]
    mentions, hallucinations = _extract_as_expected(cases, coco)
    result = hal.chair(mentions, hallucinations)
    assert result == {"chair_s": 2 / 4, "chair_i": 3 / 10, "responses": 4, "responses_hallucinated": 2,
                      "mentions": 10, "mentions_hallucinated": 3}
    listed = [hal.listed_objects(truth, coco) for _, truth, _, _ in cases]
    assert hal.coverage(mentions, listed) == pytest.approx(6 / 7)


def test_chair_reads_the_original_compound_words_first(coco):
    cases = [  # (description, ground truth, mentions, hallucinated)
        # age word + animal: the animal, not a person
        ("A baby elephant walks behind two adult elephants.", ["elephant"],
         ["elephant", "elephant"], []),
        # passenger + vehicle: the vehicle ("jet" is an airplane), not a person
        ("A passenger train passes under passenger jets.", ["train"],
         ["train", "airplane"], ["airplane"]),
        # fixed compounds; "train track" names no COCO object and hides its "train"
        ("A teddy bear, hot dogs and a stop sign by the train tracks.", ["teddy bear", "hot dog", "stop sign"],
         ["teddy bear", "hot dog", "stop sign"], []),
        # "toilet seat" is a toilet, and a seat beside a toilet is no chair
        ("The toilet seat is up and a seat stands beside the toilets.", ["toilet"],
         ["toilet", "toilet"], []),
        # a plain person synonym still counts as a person, a seat without a toilet as a chair
        ("A baby sleeps on a seat.", ["chair"], ["person", "chair"], ["person"]),
        # plurals of every kind; "baby animal" names nothing
        ("Babies feed baby animals near the motor bikes.", ["person"], ["person", "motorcycle"], ["motorcycle"]),
    ]
    mentions, hallucinations = _extract_as_expected(cases, coco)
    # 3 of 6 responses hallucinate; 3 of 13 mentions are hallucinated
    assert hal.chair(mentions, hallucinations) == {"chair_s": 3 / 6, "chair_i": 3 / 13, "responses": 6,
                                                   "responses_hallucinated": 3, "mentions": 13,
                                                   "mentions_hallucinated": 3}


def test_the_original_synonym_table_and_renamed_phrases(coco):
    table = json.loads((hal.VOCABULARY_PATH.parent / "coco_chair.json").read_text())["synonyms"]
    assert len(table) == 80 and {line[0] for line in table} == coco.objects
    assert all(coco.canonical(word) == line[0] for line in table for word in line)
    text = "A man in a bow tie holds wine glasses by the stove top oven."
    assert hal.extract_mentions(text, coco) == ["person", "tie", "wine glass", "oven"]
    # as in the original, only the word "toilet" uncounts a seat, not its synonyms
    assert hal.extract_mentions("A seat by the urinal.", coco) == ["chair", "toilet"]


def test_plurals_of_listed_words_and_phrases():
    irregular = {"man": "men", "sheep": "sheep"}
    words = ("bench", "pony", "toy", "dog", "man", "sheep", "wine glass", "baby elephant")
    assert [plural(w, irregular) for w in words] == [
        "benches", "ponies", "toys", "dogs", "men", "sheep", "wine glasses", "baby elephants"]


def test_chair_without_any_mention_or_response():
    assert hal.chair([[], []], [[], []]) == {"chair_s": 0.0, "chair_i": 0.0, "responses": 2,
                                            "responses_hallucinated": 0, "mentions": 0, "mentions_hallucinated": 0}
    assert hal.chair([], [])["chair_s"] == 0.0
    with pytest.raises(ValueError):
        hal.chair([[]], [])


def test_scene_objects_are_colour_and_shape_and_imply_the_bare_shape(scenes):
    truth = hal.ground_truth_set(["red circle", "Blue Stars"], scenes)
    assert truth == {"red circle", "circle", "blue star", "star"}
    text = "A red circle, two blue stars and a circle beside an orange disc. The star is orange."
    found = hal.extract_mentions(text, scenes)
    assert found == ["red circle", "blue star", "circle", "orange circle", "star"]
    assert hal.hallucinated(found, truth) == ["orange circle"]
    # Read with COCO's words too, the colour "orange" becomes the fruit.
    both = hal.load_vocabulary(["scenes", "coco"])
    assert hal.extract_mentions(text, both)[-2:] == ["star", "orange"]


def test_groups_follow_the_ground_truth_and_unknown_objects_stay_present(scenes):
    assert hal.groups_for([["red star"], ["green cross"]]) == ("scenes",)
    assert hal.groups_for([["puppies"], []]) == ("coco",)
    assert hal.groups_for([["red star", "dog"]]) == ("scenes", "coco")
    assert hal.groups_for([["unicorn"]]) == ("scenes", "coco")
    assert hal.ground_truth_set(["Unicorn", "red star"], scenes) == {"unicorn", "red star", "star"}


def test_vocabulary_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        hal.load_vocabulary(["nope"])
    with pytest.raises(ValueError, match="non-empty"):
        hal.load_vocabulary([])
    clash = {"groups": {"a": {"objects": {"bat": ["bat"]}, "implies": {}},
                        "b": {"objects": {"animal": ["bat", "bats"]}, "implies": {}}}}
    path = tmp_path / "clash.json"
    path.write_text(json.dumps(clash))
    with pytest.raises(ValueError, match="'bat' names both"):
        hal.load_vocabulary(["a", "b"], path)


def test_probe_metrics_by_hand():
    truths = [True, True, False, False, False]
    answers = [True, False, False, True, False]
    # correct 3/5; answered "no" 3, of which truly absent 2; truly absent 3
    assert hal.probe_metrics(truths, answers) == pytest.approx(
        {"probes": 5, "accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.4})
    agree = hal.probe_metrics([True, False], [True, True])
    assert agree == {"probes": 2, "accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 1.0}
    assert hal.probe_metrics([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        hal.probe_metrics([True], [])


def test_answer_is_yes_only_when_p_yes_is_larger():
    assert hal.says_yes(0.3, 0.1)
    assert not hal.says_yes(0.2, 0.21) and not hal.says_yes(0.5, 0.5)  # a tie is "no", as for claims
