"""The token-level reward model through Ray Train + DeepSpeed on CPU with the tiny LLaVA
(train/trainer.py's reward_model objective, jobs/train_rm.py): step 0's loss is the BCE computed
by hand from the initial model and head, the separable toy case of tests/test_reward_model.py is
learned and evaluated on held-out rows with other images, the export reloads and scores one
reward per response token, ZeRO stages and resume agree, and the job runs from both sources.

Every Ray Train run costs minutes on a loaded 2-core box, so all but --help are slow; the same
properties without Ray are in tests/test_reward_model.py's default-suite tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_models import noise_image, noise_png
from test_reward_model import COLOURS, QUESTION, independent_bce, init_with_head, processor, toy_rows  # noqa: F401
from transformers import AutoModelForImageTextToText

from engine import chat
from engine.config import load_config
from engine.reward_model import HEAD_FILE, load_reward_model, score_tokens
from train.export import safetensors_keys
from train.trainer import train_reward_model

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_HELDOUT, STEPS = 12, 4, 10


def config(model_cache: str, *overrides: str):
    return load_config(None, [
        f"models.cache_dir={model_cache}", "train.learning_rate=3e-3", f"train.epochs={STEPS}",
        f"train.micro_batch_size={N_TRAIN}", "train.warmup_ratio=0", *overrides])


@pytest.fixture(scope="module")
def run(ray_local, model_cache, processor, init_with_head, tmp_path_factory):
    rows, heldout = toy_rows(processor, 0, N_TRAIN), toy_rows(processor, 100, N_HELDOUT)
    out = tmp_path_factory.mktemp("rm")
    return train_reward_model(config(model_cache), rows, heldout, init_with_head[0], str(out), resume=False)


@pytest.mark.slow
def test_step_zero_loss_is_the_bce_of_the_initial_model_and_head(run, processor, init_with_head):
    # One step's global batch is every training row.
    expected = independent_bce(init_with_head, processor, toy_rows(processor, 0, N_TRAIN))
    assert run.history[0]["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_the_separable_toy_case_is_learned(run):
    first, last = run.history[0], run.history[-1]
    assert len(run.history) == STEPS
    assert last["loss"] < 0.2 * first["loss"] and last["token_accuracy"] == 1.0
    evaluation = run.evaluation
    assert evaluation["eval/rows"] == N_HELDOUT and evaluation["eval/tokens"] == N_HELDOUT
    assert evaluation["eval/token_accuracy"] == 1.0 and evaluation["eval/auc"] == 1.0
    assert evaluation["eval/loss"] < 0.2 * first["loss"]


@pytest.mark.slow
def test_the_export_reloads_and_scores_one_reward_per_response_token(run, processor, init_with_head):
    model_dir = Path(run.model_dir)
    assert safetensors_keys(model_dir) == safetensors_keys(init_with_head[0]) and (model_dir / HEAD_FILE).exists()
    AutoModelForImageTextToText.from_pretrained(model_dir)  # the backbone loads wherever a policy does
    model, reward_processor = load_reward_model(str(model_dir))
    answers = [f"There is a {colour} circle." for colour in COLOURS] + ["A blue star sits on a red square."]
    images = [noise_image(200 + i) for i in range(len(answers))]
    batched = score_tokens(model, reward_processor, images, [QUESTION] * len(answers), answers, batch_size=3)
    alone = [score_tokens(model, reward_processor, [image], [QUESTION], [answer])[0]
             for image, answer in zip(images, answers)]
    for rewards, single, answer in zip(batched, alone, answers):
        assert len(rewards) == len(chat.response_token_ids(processor, QUESTION, answer, True))
        assert rewards == pytest.approx(single, abs=1e-4)
    colour_rewards = {colour: rewards[3] for colour, rewards in zip(COLOURS, batched)}  # "There is a <colour>"
    assert all((colour_rewards[colour] > 0) == bool(good) for colour, good in COLOURS.items())


@pytest.mark.slow
def test_a_finished_run_is_returned_not_retrained(run, model_cache, processor, init_with_head):
    again = train_reward_model(config(model_cache), toy_rows(processor, 0, N_TRAIN), toy_rows(processor, 100, 0),
                               init_with_head[0], str(Path(run.model_dir).parent))
    assert again == run


def test_train_rm_job_help_lists_every_option():
    result = subprocess.run([sys.executable, "jobs/train_rm.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--set", "--corrections", "--column", "--generation", "--init", "--out", "--fresh",
                   "--max-steps", "rm.heldout_share"):
        assert option in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_every_zero_stage_gives_the_same_run(stage, run, model_cache, processor, init_with_head, tmp_path):
    other = train_reward_model(config(model_cache, f"train.zero_stage={stage}"), toy_rows(processor, 0, N_TRAIN),
                               toy_rows(processor, 100, N_HELDOUT), init_with_head[0], str(tmp_path), resume=False)
    assert [h["loss"] for h in other.history] == pytest.approx([h["loss"] for h in run.history], abs=1e-4)
    assert other.evaluation["eval/auc"] == 1.0


@pytest.mark.slow
def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(run, model_cache, processor, init_with_head,
                                                                       tmp_path):
    rows, heldout = toy_rows(processor, 0, N_TRAIN), toy_rows(processor, 100, N_HELDOUT)
    cfg = config(model_cache)
    stopped = train_reward_model(cfg, rows, heldout, init_with_head[0], str(tmp_path), resume=False, max_steps=4)
    assert stopped.model_dir is None and stopped.evaluation == {}  # evaluated only once training is complete
    resumed = train_reward_model(cfg, rows, heldout, init_with_head[0], str(tmp_path), resume=True)
    assert resumed.started_at_step == 4
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in run.history], abs=1e-5)
    assert resumed.evaluation == pytest.approx(run.evaluation, abs=1e-5)


@pytest.mark.slow
def test_train_rm_job_on_corrections_and_ai_feedback(model_cache, tmp_path):
    """The job from its two sources, a tiny:llava policy getting a new head: label rows written,
    unusable answers diverted, held-out metrics printed."""
    from engine.schemas import CLAIMS_SCHEMA, INSTRUCTION_SCHEMA

    answers = [(f"There is a {c} circle. There is a {d} star.", c, d)
               for c, d in [("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green")] * 3]
    corrections = tmp_path / "corrections.parquet"
    pq.write_table(pa.table({
        "id": [f"c{i}" for i in range(len(answers))], "image": [noise_png(i) for i in range(len(answers))],
        "question": [QUESTION] * len(answers), "rejected": [a for a, _, _ in answers],
        "chosen": [a.replace(f" {d} star", " purple star") for a, _, d in answers]}), corrections)
    instructions = tmp_path / "instructions.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"i{i}", "prompt": QUESTION, "image": noise_png(50 + i)}
                                         for i in range(len(answers))], schema=INSTRUCTION_SCHEMA), instructions)
    generation = tmp_path / "iter_0"
    (generation / "claims").mkdir(parents=True)
    claims = [{"instruction_id": f"i{i}", "iteration": 0, "answer_index": 0, "prompt": QUESTION, "answer": answer,
               "answer_seed": i, "facts": ["f", "f"], "questions": ["q?", "q?"],
               "quotes": [f"There is a {c} circle.", f"There is a {d} star."],
               "p_yes": [0.9 if c in ("blue", "yellow") else 0.1, 0.9 if d in ("blue", "yellow") else 0.1],
               "p_no": [0.1 if c in ("blue", "yellow") else 0.9, 0.1 if d in ("blue", "yellow") else 0.9]}
              for i, (answer, c, d) in enumerate(answers)]
    claims.append({**claims[0], "instruction_id": "i0", "answer_index": 1, "quotes": ["A paraphrase.", "x"]})
    pq.write_table(pa.Table.from_pylist(claims, schema=CLAIMS_SCHEMA), generation / "claims" / "part-0.parquet")
    out = tmp_path / "out"
    command = [sys.executable, "jobs/train_rm.py", "--corrections", str(corrections), "--generation", str(generation),
               "--init", "tiny:llava", "--out", str(out), "--set", f"models.cache_dir={model_cache}",
               "--set", f"input.path={instructions}", "--set", "train.learning_rate=3e-3", "--set", "train.epochs=4",
               "--set", "train.micro_batch_size=8", "--set", "train.zero_stage=3", "--set", "rm.heldout_share=0.25",
               "--set", "ray.num_cpus=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 answer(s) diverted" in result.stdout and "held-out: eval/loss=" in result.stdout
    rows = pq.read_table(out / "rm_rows" / "rows.parquet")
    assert rows.num_rows == 3 * len(answers) and set(rows["source"].to_pylist()) == {
        "correction_original", "correction_corrected", "ai_feedback"}
    rejects = pq.read_table(out / "rejects" / "rm_rows.parquet")
    assert rejects["reason"].to_pylist() == ["quote_not_found"]
    model, _ = load_reward_model(str(out / "model"))
    assert model.score.weight.shape == (1, model.config.get_text_config().hidden_size)
