"""Stages as data: stages take their backends from outside, and the stage list alone decides
what the pass runs, times, summarises and sizes (a dummy stage shows up everywhere)."""

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from fixtures_models import noise_image, noise_png

from engine.backends.base import Completion
from engine.config import BonConfig, ConfigError, SampleConfig, ScoreConfig, SplitConfig, load_config
from engine.flight import to_table
from engine.pipeline import STAGES, generate_pairs, map_stages, run_context, stage_names, validated_instructions
from engine.schemas import instruction_stats_schema
from engine.stages.base import ModelStage, RunContext, StageSpec
from engine.stages.bon import BonStage
from engine.stages.sample import SampleStage
from engine.stages.score import ScoreStage
from engine.stages.split import SplitStage
from engine.storage import read_parquet_dir

REPO = Path(__file__).resolve().parent.parent
CONTEXT = RunContext(run_name="test", seed=3, iteration=1, cache_dir="unused")


class FakePolicy:
    """Answers "answer <seed>" of length 2 and log-prob -seed/1000 per answer; a prompt is one
    token per word, and 600 tokens is the context."""

    max_model_len = 600

    def prompt_tokens(self, item):
        return len(item.text.split())

    def sample(self, items, seeds, params):
        return [[Completion(f"answer {s}", 2, s) for s in row] for row in seeds]

    def logprobs(self, items, responses):
        return [(-int(r.split()[1]) / 1000, 2) for r in responses]


def test_a_stage_runs_on_an_injected_backend():
    stage = SampleStage(cfg=SampleConfig(n=3), context=CONTEXT, backends={"policy": FakePolicy})
    out = stage.run_batch(to_table([{"id": "a", "prompt": "Describe."}, {"id": "b", "prompt": "x", "reject_reason": "bad"}]))
    live, diverted = out.to_pylist()
    assert live["answers"] == [f"answer {s}" for s in stage.answer_seeds("a")]
    assert len(set(live["answer_seeds"])) == 3 and diverted["answers"] is None
    assert [item["stage"] for item in live["stage_seconds"]] == ["sample"]


def test_a_stage_hands_the_image_bytes_on_unchanged_and_one_that_reads_none_never_converts_them():
    image = b"\x89PNG not decoded here"
    batch = to_table([{"id": "a", "prompt": "Describe.", "image": image, "answers": ["x"]}])
    split = SplitStage(cfg=SplitConfig(), context=CONTEXT, backends={"splitter": FakePolicy})
    seen = []
    split.process = lambda rows: seen.extend(rows)
    out = asyncio.run(split(batch))  # the async entry Ray Data calls
    assert "image" not in seen[0] and out.schema == batch.schema and out["image"].to_pylist() == [image]


def test_a_prompt_that_leaves_no_room_for_an_answer_is_diverted_with_its_counts():
    stage = SampleStage(cfg=SampleConfig(n=2, max_new_tokens=550), context=CONTEXT, backends={"policy": FakePolicy})
    fits, too_long = "word " * 50, "word " * 51
    out = stage.run_batch(to_table([{"id": "a", "prompt": fits}, {"id": "b", "prompt": too_long}])).to_pylist()
    assert len(out[0]["answers"]) == 2 and out[1]["answers"] is None
    assert (out[1]["reject_stage"], out[1]["reject_reason"]) == ("sample", "prompt_too_long_for_model")
    assert out[1]["reject_detail"] == ("51 prompt tokens (image included) + sample.max_new_tokens 550 "
                                       "> max_model_len 600")


def test_equal_backend_loaders_load_one_model():
    loads = []

    def load():
        loads.append(1)
        return FakePolicy()

    stage = BonStage(cfg=BonConfig(n=2), context=CONTEXT, backends={"policy": load, "reference": load})
    assert len(loads) == 1 and stage.backends["policy"] is stage.backends["reference"]
    (row,) = stage.run_batch(to_table([{"id": "a", "prompt": "Describe."}])).to_pylist()
    assert row["rewards"] == [0.0, 0.0] and row["best_answer"] == 0  # same model: every log-ratio is 0


class FakeLabeler:
    """p_yes = the question's word count / 100, p_no = 0.5; records the items of every call."""

    def __init__(self):
        self.calls = []

    def score_yes_no(self, items):
        self.calls.append(items)
        return [[(len(q.split()) / 100, 0.5) for q in item.questions] for item in items]


def test_scoring_asks_once_per_batch_and_rows_with_nothing_to_ask_keep_their_shape():
    stage = ScoreStage(cfg=ScoreConfig(question_suffix=" ok?"), context=CONTEXT, backends={"labeler": FakeLabeler})
    rows = [{"id": "a", "image": noise_png(1), "questions": [["one two", "one"], None, []]},
            {"id": "b", "image": b"never decoded", "questions": [None, []]},  # asks nothing: no image read
            {"id": "c", "image": noise_png(2), "questions": [["one two three"], ["a b c d"]]}]
    stage.process(rows)
    (items,) = stage.backend.calls
    assert [item.questions for item in items] == [["one two ok?", "one ok?"], ["one two three ok?", "a b c d ok?"]]
    assert [item.image.tobytes() for item in items] == [noise_image(1).tobytes(), noise_image(2).tobytes()]
    assert [(row["p_yes"], row["p_no"]) for row in rows] == [
        ([[0.03, 0.02], None, []], [[0.5, 0.5], None, []]),
        ([None, []], [None, []]),
        ([[0.04], [0.05]], [[0.5], [0.5]]),
    ]
    stage.process([{"id": "d", "image": b"never decoded", "questions": [None]}])
    assert stage.backend.calls[1] == []  # an empty call, which every backend answers with []


class CountingStage(ModelStage):
    """A model-free stage: counts the characters of each prompt into `answer_tokens`."""

    name = "count"

    def process(self, rows):
        for row in rows:
            row["answer_tokens"] = [len(row["prompt"])]


class EchoStage(CountingStage):
    name = "echo"


DUMMY_STAGES = (StageSpec("count", CountingStage, models=(), section="sample"),
                StageSpec("echo", EchoStage, models=(), section="pair"))


def _config(*extra):
    return load_config(REPO / "configs" / "smoke.toml", ["input.limit=3", "sample.resources.num_cpus=0.5",
                                                         "pair.resources.num_cpus=0.5", *extra])


def test_the_stage_list_decides_timing_columns_summary_and_pool_check(ray_local, tmp_path):
    # pytest imports this file under a name Ray's workers cannot import: ship its classes by value.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert stage_names(STAGES) == ("sample", "split", "score", "pair")
    summary = generate_pairs(_config(), 0, str(tmp_path), stages=DUMMY_STAGES)
    assert list(summary["stages"]) == ["count", "echo"] and summary["instructions"] == 3
    stats = read_parquet_dir(f"{tmp_path}/rows", instruction_stats_schema(("count", "echo")))
    assert [name for name in stats.column_names if name.startswith("seconds_")] == ["seconds_count", "seconds_echo"]
    assert pa.compute.min(stats["seconds_echo"]).as_py() > 0
    with pytest.raises(ConfigError, match="count 50.*echo 0.5"):
        generate_pairs(_config("sample.resources.min_actors=100"), 0, str(tmp_path / "too-big"), stages=DUMMY_STAGES)


class FakeSplitter:
    """One claim for an answer that mentions a circle, none otherwise."""

    def generate_json(self, prompts, schema, params, seeds):
        claim = '{"fact": "There is a circle.", "question": "Is there a circle?"}'
        return [f'{{"claims": [{claim if "circle" in p.split("Answer:")[-1] else ""}]}}' for p in prompts]


@pytest.mark.parametrize("score_claimless", [False, True])
def test_an_answer_without_claims_is_diverted_not_scored(score_claimless):
    cfg = SplitConfig(score_claimless_answers=score_claimless)
    stage = SplitStage(cfg=cfg, context=CONTEXT, backends={"splitter": FakeSplitter})
    row = {"id": "a", "prompt": "Describe.", "answers": ["A red circle.", "The image shows a scene."]}
    (out,) = stage.run_batch(to_table([row])).to_pylist()
    assert out["questions"][0] == ["Is there a circle?"]
    if score_claimless:  # the ablation: scored 0 later, as the old rule did
        assert out["questions"][1] == [] and out["answer_rejects"] == []
    else:
        assert out["questions"][1] is None and out["facts"][1] is None
        assert [(r["answer_index"], r["stage"], r["reason"]) for r in out["answer_rejects"]] == [(1, "split", "no_claims")]


class PickyPolicy(FakePolicy):
    """Refuses any prompt holding "<image>", as a processor does, and counts its calls."""

    def __init__(self):
        self.calls = 0

    def sample(self, items, seeds, params):
        self.calls += 1
        if any("<image>" in item.text for item in items):
            raise ValueError("the prompt holds an image placeholder")
        return super().sample(items, seeds, params)


def test_a_row_the_backend_fails_on_is_diverted_and_its_batch_mates_go_on():
    stage = SampleStage(cfg=SampleConfig(n=2), context=CONTEXT, backends={"policy": PickyPolicy})
    rows = [{"id": f"r{k}", "prompt": "Describe <image>." if k == 5 else "Describe."} for k in range(8)]
    out = stage.run_batch(to_table(rows)).to_pylist()
    assert [row["reject_reason"] for row in out] == [None] * 5 + ["backend_error"] + [None] * 2
    assert out[5]["reject_stage"] == "sample" and "ValueError: the prompt holds" in out[5]["reject_detail"]
    assert out[5]["answers"] is None and all(len(row["answers"]) == 2 for k, row in enumerate(out) if k != 5)
    assert stage.backend.calls == 1 + 2 + 2 + 2  # the batch, then halves down to the bad row: log2(8) levels


class ExhaustedPolicy(FakePolicy):
    def sample(self, items, seeds, params):
        raise MemoryError("out of memory")


def test_out_of_memory_stays_fatal():
    stage = SampleStage(cfg=SampleConfig(n=2), context=CONTEXT, backends={"policy": ExhaustedPolicy})
    with pytest.raises(MemoryError):
        stage.run_batch(to_table([{"id": "a", "prompt": "Describe."}]))


class PidStage(ModelStage):
    """A model-free stage that notes, in a file per call, which actor process made the call and
    how many rows it had."""

    name = "sample"
    reads_images = False
    seen_dir = ""  # set on a subclass per test

    def process(self, rows):
        time.sleep(0.2)  # long enough that the next block finds this actor busy
        (Path(self.seen_dir) / f"{os.getpid()}-{uuid.uuid4().hex}").write_text(str(len(rows)))


def test_a_one_file_input_feeds_every_actor_of_the_first_pool(ray_local, tmp_path):
    """The shipped instructions are one file, read as one block of 16 rows; Ray Data gives a
    block to one actor whole, so the pipeline cuts it into blocks of the pool's batch size,
    and both actors of a pool of two get calls."""
    from ray.data import DataContext

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = _config("input.limit=16", "sample.resources.min_actors=2", "sample.resources.max_actors=2",
                  "sample.resources.batch_size=2")
    stage = type("SeenStage", (PidStage,), {"seen_dir": str(tmp_path)})
    context = run_context(cfg, 0)
    data_context = DataContext.get_current()
    waited, data_context.wait_for_min_actors_s = data_context.wait_for_min_actors_s, 120  # both actors up first
    try:
        ds = map_stages(validated_instructions(cfg, context), [StageSpec("sample", stage, (), "sample")], cfg,
                        context, {})
        rows = ds.take_all()
    finally:
        data_context.wait_for_min_actors_s = waited
    calls = [(path.name.split("-")[0], int(path.read_text())) for path in tmp_path.iterdir()]
    assert len(rows) == 16 and sorted(n for _, n in calls) == [2] * 8
    assert len({pid for pid, _ in calls}) == 2, calls
