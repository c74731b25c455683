"""The toy world (issue 8): the toy policy script draws its data from the seed, trains through
the SFT job deterministically and its output loads in the engine; the grammar splitter emits
the claim JSON the split stage parses; the ablation switches change what the sample and score
stages ask of their backends; configs/toyworld.toml runs."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from engine.backends import make_backend
from engine.backends.base import Completion, ImageQuestions, Prompt, SamplingParams
from engine.claims import ClaimsUnparseable, claims_json_schema, parse_claims, splitter_prompt
from engine.config import ModelConfig, SampleConfig, ScoreConfig, ValidateConfig, load_config
from engine.instruction_io import CORRECTIONS, read_rows
from engine.preflight import check_model_path
from engine.scenes import DESCRIBE, SceneObject, describe
from engine.schemas import CLAIMS_SCHEMA
from engine.stages.base import RunContext
from engine.stages.sample import SampleStage
from engine.stages.score import ScoreStage
from engine.storage import read_parquet_dir
from toyworld.sft_data import examples, noisy_description
from toyworld.splitter import SceneGrammarSplitter
from toyworld.train_policy import train_policy, write_phase_examples
from train.data import BatchPlan
from train.sft_data import read_sft_examples
from train.trainer import read_result

REPO = Path(__file__).resolve().parent.parent
TOYWORLD = REPO / "configs" / "toyworld.toml"
GRAMMAR = ModelConfig(path="scene-grammar", backend="toy-grammar")
SCENE = (SceneObject("red", "circle", "top left"), SceneObject("orange", "star", "center"))


def split(answer: str, max_claims: int = 16) -> list:
    splitter = SceneGrammarSplitter(GRAMMAR.path, GRAMMAR)
    schema = claims_json_schema(max_claims, 64)
    (text,) = splitter.generate_json([splitter_prompt(DESCRIBE, answer)], schema, SamplingParams(), [0])
    return parse_claims(text, max_claims)


def test_grammar_splitter_claims_every_object_mention():
    claims = split(describe(SCENE))
    assert [(c.fact, c.question) for c in claims] == [
        ("There is a red circle in the image.", "Is there a red circle in the image?"),
        ("There is an orange star in the image.", "Is there an orange star in the image?"),
    ]
    # A last sentence cut off by the token limit still counts, up to what it names.
    assert [c.question for c in split(describe(SCENE) + " There is a blue square at the")][-1] == (
        "Is there a blue square in the image?")
    assert split("") == []


@pytest.mark.parametrize("answer", ["There square at the top.", "There is a red circle at the top left.Answer",
                                    "Two blue squares and a circle.", "There is aNo"])
def test_grammar_splitter_diverts_sentences_outside_the_grammar(answer):
    """Read as bare objects, broken sentences would be easier claims than grammatical ones."""
    with pytest.raises(ClaimsUnparseable, match="not in the scene grammar"):
        split(describe(SCENE) + " " + answer)
    assert len(split(describe(SCENE), max_claims=1)) == 1


def test_the_grammar_splitter_is_the_backend_named_toy_grammar():
    check_model_path("models.splitter.path", GRAMMAR)  # a label: preflight checks no path
    assert isinstance(make_backend(GRAMMAR, cache_dir="unused"), SceneGrammarSplitter)


def test_noisy_descriptions_misname_one_object():
    rng = random.Random(0)
    noisy = [noisy_description(SCENE, rng, noise=1.0) for _ in range(20)]
    assert all(text != describe(SCENE) and len(text.split()) == len(describe(SCENE).split()) for text in noisy)
    assert noisy_description(SCENE, rng, noise=0.0) == describe(SCENE)
    batch = examples(random.Random(0), 8, describe_share=0.5, max_objects=2, noise=0.5)
    assert {e.response for e in batch if e.prompt != DESCRIBE} <= {"Yes", "No"}


def _digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_toy_phase_examples_are_the_seeds_draws_in_training_order(tmp_path):
    spec = (3, 2, 0.5, 0.5)
    urls = [str(tmp_path / f"{name}.parquet") for name in "abc"]
    for url, seed in zip(urls, (0, 0, 1)):
        write_phase_examples(random.Random(seed), 1, spec, 4, url)
    assert Path(urls[0]).read_bytes() == Path(urls[1]).read_bytes() != Path(urls[2]).read_bytes()
    rows, rejects = read_sft_examples(urls[0], ValidateConfig())
    rng = random.Random(0)
    drawn = [example for _ in range(3) for example in examples(rng, 4, 0.5, 2, 0.5)]
    assert rejects.num_rows == 0
    assert rows["example_id"].to_pylist() == sorted(rows["example_id"].to_pylist())  # the plan's order
    assert rows["image"].to_pylist() == [example.png for example in drawn]
    assert rows["answer"].to_pylist() == [example.response for example in drawn]
    plan = BatchPlan(rows.num_rows, 4, 1, 1, 1, seed=0, shuffle=False)
    assert [plan.micro_batches(step, 0) for step in range(3)] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9, 10, 11]]]


@pytest.mark.slow
def test_toy_policy_script_trains_through_the_sft_job_deterministically(ray_local, tmp_path):
    tiny = ((2, 1, 0.5, 0.0), (2, 4, 0.5, 0.5))
    first = train_policy(0, tmp_path / "a", phases=tiny, batch_size=4, work=tmp_path / "work")
    second = train_policy(0, tmp_path / "b", phases=tiny, batch_size=4)
    assert _digest(first) == _digest(second)
    for phase in range(2):  # each phase is an SFT job's run: its result marks it complete
        assert read_result(str(tmp_path / "work" / f"phase-{phase}")).steps == 2
    backend = make_backend(ModelConfig(path=str(first)), cache_dir="unused")
    image = examples(random.Random(0), 1, 1.0, 1, 0.0)[0].image
    (answers,) = backend.sample([Prompt(image, DESCRIBE)], [[1, 2]], SamplingParams(max_new_tokens=4))
    assert len(answers) == 2
    (((p_yes, p_no),),) = backend.score_yes_no(
        [ImageQuestions(image, ["Is there a red circle in the image? Please answer yes or no."])])
    assert 0 < p_yes + p_no <= 1


class _RecordingBackend:
    """Stands in for a model: records what a stage asks, answers with fixed values."""

    max_model_len = 10_000

    def __init__(self):
        self.calls = []

    def prompt_tokens(self, item):
        return len(item.text.split())

    def sample(self, items, seeds, params):
        self.calls.append((params.temperature, seeds))
        return [[Completion(f"t{params.temperature} s{s}", 1, s) for s in row] for row in seeds]

    def score_yes_no(self, items):
        self.calls.append([item.questions for item in items])
        return [[(0.6, 0.4)] * len(item.questions) for item in items]


def _stage(stage_class, cfg):
    context = RunContext(run_name="run", seed=0, iteration=0, cache_dir="unused")
    return stage_class(cfg=cfg, context=context, backends={"policy": _RecordingBackend})


def test_confounded_sampling_decodes_answers_at_their_own_temperature():
    cfg = SampleConfig(n=5, confounded_temperatures=[0.5, 1.5])
    stage = _stage(SampleStage, cfg)
    row = {"id": "x", "prompt": DESCRIBE, "image": None}
    stage.process([row])
    seeds = stage.answer_seeds("x")
    assert stage.backend.calls == [(0.5, [seeds[0::2]]), (1.5, [seeds[1::2]])]
    assert row["answers"] == [f"t{[0.5, 1.5][j % 2]} s{s}" for j, s in enumerate(seeds)]
    deconfounded = _stage(SampleStage, SampleConfig(n=3, temperature=0.7))
    deconfounded.process([dict(row)])
    assert [t for t, _ in deconfounded.backend.calls] == [0.7]


def test_whole_answer_scoring_asks_one_question_per_answer():
    stage = _stage(ScoreStage, ScoreConfig(divide_and_conquer=False, whole_answer_question="Right? {answer}"))
    row = {"answers": ["A red circle.", "Nothing.", "Cut off"], "questions": [["q1", "q2"], [], None], "image": None}
    stage.process([row])
    assert stage.backend.calls == [[["Right? A red circle. Please answer yes or no.",
                                     "Right? Nothing. Please answer yes or no."]]]
    assert row["questions"] == [["Right? A red circle."], ["Right? Nothing."], None]
    assert row["p_yes"] == [[0.6], [0.6], None]


def test_toyworld_config_loads_with_the_committed_policy():
    cfg = load_config(TOYWORLD)
    assert cfg.models.policy.path == cfg.models.labeler.path == "models/toy-policy"
    assert cfg.models.splitter.backend == "toy-grammar"
    assert (REPO / cfg.models.policy.path / "model.safetensors").is_file()
    assert cfg.eval.enabled and (REPO / cfg.eval.heldout_path).is_file() and (REPO / cfg.input.path).is_file()


def toyworld_config(tmp_path, model_cache, *extra):
    """configs/toyworld.toml cut down to a few rows and short answers."""
    return load_config(TOYWORLD, [
        f'run.output_dir="{tmp_path}"', f'models.cache_dir="{model_cache}"', "input.limit=3", "sample.n=3",
        "sample.max_new_tokens=24", "eval.limit=3", "eval.max_new_tokens=24", *extra])


def test_toyworld_generation_pass_splits_with_the_grammar_and_its_claims_make_ai_corrections(
        ray_local, tmp_path, model_cache):
    from engine.correct_pass import run_correct
    from engine.pipeline import generate_pairs
    from engine.sentences import sentence_spans

    cfg = toyworld_config(tmp_path, model_cache, "split.quote_sentences=true")
    summary = generate_pairs(cfg, 0, str(tmp_path / "iter_0"))
    assert summary["instructions"] == 3 and summary["answers_parsed"] == 9
    assert summary["claims"] > 0

    out = str(tmp_path / "corrections.parquet")
    counts = run_correct(cfg, str(tmp_path / "iter_0"), out)
    assert counts["corrections"] > 0 and counts["corrections"] + counts["diverted"] == 9  # none lost
    claims = {(r["instruction_id"], r["answer_index"]): r
              for r in read_parquet_dir(str(tmp_path / "iter_0" / "claims"), CLAIMS_SCHEMA).to_pylist()}
    for row in read_rows(out, CORRECTIONS).to_pylist():
        instruction_id, _, answer_index = row["id"].rsplit("-", 2)
        scored = claims[(instruction_id, int(answer_index))]
        rejected = {q for q, yes, no in zip(scored["quotes"], scored["p_yes"], scored["p_no"]) if yes <= no}
        kept = [row["rejected"][a:b] for a, b in sentence_spans(row["rejected"]) if row["rejected"][a:b] not in rejected]
        assert rejected and [row["chosen"][a:b] for a, b in sentence_spans(row["chosen"])] == kept


@pytest.mark.slow
def test_toyworld_runs_one_iteration_end_to_end(ray_local, tmp_path, model_cache):
    from toyworld.run import acceptance, format_table, run_seed, seed_config

    cfg = seed_config(toyworld_config(tmp_path, model_cache, "run.iterations=1", "train.epochs=1"), 0)
    metrics, _ = run_seed(cfg, echo=lambda _: None)
    assert len(metrics) == 2 and all(0 <= m["chair_s"] <= 1 for m in metrics)
    assert "CHAIR_s" in format_table({0: metrics}) and "chair_s_relative_cut" in acceptance({0: metrics})


def test_the_plot_has_fixed_zero_based_axes_and_the_setup_in_its_title(tmp_path):
    from toyworld.plot import draw, plot_metrics

    metrics = {key: 0.5 for key in ("chair_s", "chair_i", "probe_accuracy", "grammatical", "coverage")}
    per_seed = {seed: [{**metrics, "mean_words": 20.0 + seed}, {**metrics, "chair_s": 0.4, "mean_words": 21.0}]
                for seed in (0, 1)}
    fig = draw(per_seed, "toyworld: seeds 0,1\nheld-out: 200 scenes")
    shown = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.axison}
    assert shown["CHAIR_s (responses with a hallucination)"].get_ylim() == (0, 1)  # not zoomed onto 0.4-0.5
    assert shown["mean description length (words)"].get_ylim()[0] == 0
    assert "lower is better" in shown["CHAIR_s (responses with a hallucination)"].get_title()
    assert "held-out: 200 scenes" in fig._suptitle.get_text()
    assert plot_metrics(per_seed, tmp_path / "plot.png", "t").stat().st_size > 0


def test_experiment_steps_report_done_total_figures_and_an_eta_from_the_steps_that_ran(monkeypatch):
    from toyworld import experiments

    now = [0.0]
    monkeypatch.setattr(experiments.time, "monotonic", lambda: now[0])

    def work(seconds):
        def run():
            now[0] += seconds
            return {"chair_s": 0.5, "chair_i": 0.25, "cider": 1.0, "bleu_4": 0.125}
        return run

    lines: list[str] = []
    clock = experiments.StepClock(4, lines.append)
    clock.step("seed 0, toy policy", work(0.1))  # reused: not counted in the rate
    clock.step("seed 0, SFT", work(120))
    clock.step("seed 0, SFT + crop", work(60))
    assert lines[1] == "[1/4] seed 0, toy policy: CHAIR_s 0.500  CHAIR_i 0.250  CIDEr 1.000  BLEU-4 0.125  (reused)"
    assert lines[3].endswith("(2 min 00 s, ETA 4 min 00 s)") and lines[5].endswith("(1 min 00 s, ETA 1 min 30 s)")
    assert lines[4] == "[3/4] seed 0, SFT + crop ..."


def test_experiment_plot_has_zero_based_axes_and_says_which_way_is_better(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from toyworld.experiments import METRICS, plot

    rows = [{"arm": arm, **{key: value for key, _ in METRICS for key, value in ((key, 0.4), (f"{key}_sd", 0.05))}}
            for arm in ("toy policy", "DPO on corrections")]
    shown = {}
    monkeypatch.setattr(pyplot, "close", lambda fig=None: shown.setdefault("fig", fig))  # keep the figure
    assert plot(rows, tmp_path / "exp.png", "t").stat().st_size > 0
    axes = shown["fig"].axes
    assert [ax.get_xlim()[0] for ax in axes] == [0] * len(METRICS)
    assert [ax.get_xlim()[1] for ax in axes[:2]] == [1, 1]  # CHAIR rates on their whole 0-1 range
    assert "lower is better" in axes[0].get_title() and "higher is better" in axes[2].get_title()
    assert [label.get_text() for label in axes[0].get_yticklabels()] == ["toy policy", "DPO on corrections"]


@pytest.mark.slow
def test_experiments_run_every_arm_and_a_rerun_reuses_them(ray_local, tmp_path, model_cache):
    from toyworld.experiments import ARMS, format_markdown, run_experiments, summary_rows

    cfg = toyworld_config(tmp_path, model_cache, "train.epochs=1", "eval.limit=4")
    results = run_experiments(cfg, [0], "abcd", n_examples=8, echo=lambda _: None)
    assert list(results) == ["toy policy", *(title for _, title, _, _ in ARMS)]
    assert all(0 <= per_seed[0]["chair_s"] <= 1 for per_seed in results.values())
    lines: list[str] = []
    again = run_experiments(cfg, [0], "abcd", n_examples=8, echo=lines.append)
    assert again == results and not [line for line in lines if "evaluating" in line or "generation" in line]
    assert lines[-1].startswith("[11/11] seed 0, AI corrections + DDPO: CHAIR_s") and lines[-1].endswith("(reused)")
    assert "± 0.000" in format_markdown(summary_rows(results))


def test_ppo_comparison_rows_share_the_toy_policy_and_its_plot_is_zero_based_by_round(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from toyworld.experiments import METRICS
    from toyworld.ppo_comparison import plot, round_results

    def metrics(value):
        return {key: value for key, _ in METRICS}

    results = {"PPO, token rewards": {0: [metrics(0.4), metrics(0.3), metrics(0.2)],
                                      1: [metrics(0.4), metrics(0.5), metrics(0.1)]},
               "RLAIF-V DPO": {0: [metrics(0.4), metrics(0.35), metrics(0.25)],
                               1: [metrics(0.4), metrics(0.3), metrics(0.2)]}}
    rows = round_results(results)
    assert list(rows) == ["toy policy", "PPO, token rewards, round 1", "PPO, token rewards, round 2",
                          "RLAIF-V DPO, round 1", "RLAIF-V DPO, round 2"]
    assert rows["PPO, token rewards, round 1"] == {0: metrics(0.3), 1: metrics(0.5)}
    shown = {}
    monkeypatch.setattr(pyplot, "close", lambda fig=None: shown.setdefault("fig", fig))
    assert plot(results, tmp_path / "ppo.png", "t").stat().st_size > 0
    axes = shown["fig"].axes
    assert [ax.get_ylim()[0] for ax in axes] == [0] * len(METRICS)
    assert [ax.get_ylim()[1] for ax in axes[:2]] == [1, 1]
    assert [tick.get_text() for tick in axes[0].get_xticklabels()] == ["0", "1", "2"]
