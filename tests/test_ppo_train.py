"""PPO's training side (train/ppo_data.py, train/objectives.py's PpoObjective, train_ppo): the
batches put each rollout's token rewards on its response tokens; prepare()'s advantages and
returns are an independent computation with train/ppo_losses on log-probs and values taken
from plain transformers models; "sequence" rewards reach the objective as the whole reward on
the last token; one optimizer step moves the policy and the critic; and through Ray Train the
exports reload and a resumed run ends where an uninterrupted one does.

The models: the tiny LLaVA as the policy, a perturbed copy of it as the reference (so the KL
term is not zero), and the tiny LLaVA with a seeded head as the reward model / critic.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from fixtures_models import noise_image, noise_png
from safetensors.torch import load_file
from test_export import one_rank  # noqa: F401  (the one-rank process group prepare() gathers in)
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from engine import chat
from engine.config import load_config
from engine.reward_model import HEAD_FILE, load_reward_model, score_tokens
from engine.schemas import ROLLOUT_SCHEMA
from train.data import BatchPlan, PairDataError
from train.objectives import _ADVANTAGES, _OLD_LOGPS, _OLD_VALUES, _REF_LOGPS, _RETURNS, PpoObjective
from train.ppo_data import check_rollouts, collate_rollouts
from train.ppo_losses import gae, shaped_rewards, whiten

QUESTION = "Describe the image."
ANSWERS = ["There is a red circle.", "A blue star sits on a green square at the top left.", "Yes.",
           "Two yellow triangles.", "There is a red circle and a blue star.", "No."]


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def reference_dir(tiny_llava_dir, processor, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("reference") / "model"
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rollouts(reward_model_dir) -> pa.Table:
    """One round's rollouts rewarded by the reward model, as the reward stage writes them."""
    model, rm_processor = load_reward_model(reward_model_dir)
    images = [noise_image(i) for i in range(len(ANSWERS))]
    rewards = score_tokens(model, rm_processor, images, [QUESTION] * len(ANSWERS), ANSWERS)
    return pa.Table.from_pylist([
        {"rollout_id": f"i{i // 2}/{i % 2}", "instruction_id": f"i{i // 2}", "round": 0, "image": noise_png(i),
         "prompt": QUESTION, "answer": answer, "answer_seed": i, "token_rewards": token_rewards}
        for i, (answer, token_rewards) in enumerate(zip(ANSWERS, rewards))], schema=ROLLOUT_SCHEMA)


def config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir, *overrides: str):
    return load_config(None, [
        f"models.cache_dir={model_cache}", f"models.policy.path={tiny_llava_dir}",
        f"models.reward_model.path={reward_model_dir}", f"ppo.reference={reference_dir}", "train.micro_batch_size=2",
        "train.gradient_accumulation_steps=3", "train.warmup_ratio=0", "train.learning_rate=1e-3",
        "ppo.beta_kl=0.1", "ppo.gamma=0.9", "ppo.lam=0.8", *overrides])


def test_collating_puts_each_token_reward_on_its_response_token(processor, rollouts):
    rows = rollouts.to_pylist()
    batch = collate_rollouts(rows, processor, max_length=2048)
    input_ids = batch.model_inputs["input_ids"]
    for i, row in enumerate(rows):
        n = int(batch.mask[i].sum())
        assert input_ids[i, batch.positions[i, :n]].tolist() == chat.response_token_ids(processor, QUESTION,
                                                                                       row["answer"], True)
        assert batch.token_rewards[i, :n].tolist() == pytest.approx(row["token_rewards"])
        assert not batch.token_rewards[i, n:].any()
    # A cut answer keeps the rewards of its kept tokens.
    longest = max(range(len(rows)), key=lambda i: len(rows[i]["token_rewards"]))
    full = len(rows[longest]["token_rewards"])
    cut = collate_rollouts([rows[longest]], processor, max_length=int(batch.positions[longest, full - 1]) - 2)
    assert cut.n_truncated == 1 and int(cut.mask.sum()) == full - 3
    assert cut.token_rewards[0].tolist() == pytest.approx(rows[longest]["token_rewards"][: full - 3])


def test_rewards_for_other_tokens_and_repeated_or_mixed_rollouts_are_refused(processor, rollouts):
    rows = rollouts.to_pylist()
    wrong = {**rows[2], "token_rewards": rows[2]["token_rewards"] + [0.0]}
    with pytest.raises(PairDataError, match=f"rollout {rows[2]['rollout_id']}: .* token rewards"):
        collate_rollouts([rows[0], wrong], processor, max_length=2048)
    assert check_rollouts(rollouts) == 0
    with pytest.raises(PairDataError, match="i0/0"):
        check_rollouts(pa.concat_tables([rollouts, rollouts.slice(0, 1)]))
    later = pa.Table.from_pylist([{**rows[0], "rollout_id": "x/0", "round": 1}], schema=ROLLOUT_SCHEMA)
    with pytest.raises(PairDataError, match="several rounds"):
        check_rollouts(pa.concat_tables([rollouts, later]))
    unrewarded = pa.Table.from_pylist([{**rows[0], "rollout_id": "x/0", "token_rewards": None}], schema=ROLLOUT_SCHEMA)
    with pytest.raises(PairDataError, match="x/0 has no token_rewards"):
        check_rollouts(unrewarded)


def prepared(cfg, processor, rollouts, tiny_llava_dir) -> tuple[PpoObjective, torch.nn.Module]:
    """The objective after prepare(), on the module (no DeepSpeed: it is called the same way)."""
    rows = sorted(rollouts.to_pylist(), key=lambda row: row["rollout_id"])
    objective = PpoObjective(cfg, processor, rows, torch.device("cpu"), torch.float32, seed=0)
    policy = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    module = objective.trained_model(policy, tiny_llava_dir)
    plan = BatchPlan(len(rows), cfg.train.micro_batch_size, 1, 1, objective.epochs, 0)
    objective.prepare(module, plan, rank=0, world=1)
    return objective, module


def independent_scores(model, processor, rows: list[dict], values: bool = False) -> list[torch.Tensor]:
    """Per response token of each row, one row at a time through plain transformers: a
    policy's log-prob of the token, or (values) a reward model's output at the position
    before it."""
    out = []
    for row in rows:
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        inputs = chat.encode_for_logprobs(processor, [image], [QUESTION], [row["answer"]])
        response = inputs.pop("response_mask")[0, 1:].bool()
        with torch.no_grad():
            if values:
                out.append(model(**inputs)[0, :-1][response])
                continue
            logits = model(**inputs).logits
        logps = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, inputs["input_ids"][0, 1:, None])[:, 0]
        out.append(logps[response])
    return out


def plain_model(model_dir: str):
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def padded(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def test_prepare_gives_the_advantages_and_returns_of_an_independent_computation(
        one_rank, model_cache, tiny_llava_dir, reward_model_dir, reference_dir, processor, rollouts):  # noqa: F811
    cfg = config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir)
    objective, _ = prepared(cfg, processor, rollouts, tiny_llava_dir)
    rows = sorted(rollouts.to_pylist(), key=lambda row: row["rollout_id"])
    logps = independent_scores(plain_model(tiny_llava_dir), processor, rows)
    ref_logps = independent_scores(plain_model(reference_dir), processor, rows)
    values = independent_scores(load_reward_model(reward_model_dir)[0], processor, rows, values=True)
    # ppo.token_reward's default: log p(good) = log sigmoid(logit)
    token_rewards = [torch.nn.functional.logsigmoid(torch.tensor(row["token_rewards"])) for row in rows]
    mask = padded([torch.ones(len(r)) for r in token_rewards])
    rewards = shaped_rewards(padded(token_rewards), padded(logps), padded(ref_logps), mask, 0.1, "token")
    advantages, returns = gae(rewards, padded(values), mask, 0.9, 0.8)
    advantages = whiten(advantages, mask)
    for i, row in enumerate(rows):
        stats, n = objective.stats[row["rollout_id"]], len(row["token_rewards"])
        assert stats[_OLD_LOGPS].tolist() == pytest.approx(logps[i].tolist(), abs=1e-4)
        assert stats[_REF_LOGPS].tolist() == pytest.approx(ref_logps[i].tolist(), abs=1e-4)
        assert stats[_OLD_VALUES].tolist() == pytest.approx(values[i].tolist(), abs=1e-4)
        assert stats[_ADVANTAGES].tolist() == pytest.approx(advantages[i, :n].tolist(), abs=1e-4)
        assert stats[_RETURNS].tolist() == pytest.approx(returns[i, :n].tolist(), abs=1e-4)
    assert not torch.allclose(logps[0], ref_logps[0])  # the KL term is at work


def test_sequence_rewards_reach_the_objective_as_the_whole_reward_on_the_last_token(
        one_rank, model_cache, tiny_llava_dir, reward_model_dir, reference_dir, processor, rollouts):  # noqa: F811
    """With gamma = lam = 1 the return at a token is the sum of the shaped rewards from it on,
    so the difference of consecutive returns is the shaped reward itself."""
    for granularity, kind in (("sequence", "logit"), ("token", "logit"), ("sequence", "log_sigmoid")):
        cfg = config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir, "ppo.gamma=1", "ppo.lam=1",
                     f"ppo.reward_granularity={granularity}", f"ppo.token_reward={kind}")
        objective, _ = prepared(cfg, processor, rollouts, tiny_llava_dir)
        for row in rollouts.to_pylist():
            stats, token_rewards = objective.stats[row["rollout_id"]], torch.tensor(row["token_rewards"])
            if kind == "log_sigmoid":
                token_rewards = torch.nn.functional.logsigmoid(token_rewards)
            shaped = stats[_RETURNS] - torch.cat([stats[_RETURNS][1:], torch.zeros(1)])
            kl_penalty = -0.1 * (stats[_OLD_LOGPS] - stats[_REF_LOGPS])
            if granularity == "sequence":
                expected = kl_penalty.clone()
                expected[-1] += token_rewards.sum()
            else:
                expected = kl_penalty + token_rewards
            assert shaped.tolist() == pytest.approx(expected.tolist(), abs=1e-4)


def test_one_step_moves_the_policy_and_the_critic(one_rank, model_cache, tiny_llava_dir, reward_model_dir,  # noqa: F811
                                                  reference_dir, processor, rollouts):
    from train import trainer

    cfg = config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir)
    rows = sorted(rollouts.to_pylist(), key=lambda row: row["rollout_id"])
    objective = PpoObjective(cfg, processor, rows, torch.device("cpu"), torch.float32, seed=0)
    plan = BatchPlan(len(rows), 2, 3, 1, objective.epochs, 0)
    ds_engine = trainer._deepspeed_engine(cfg.train, tiny_llava_dir, plan, bf16=False, multimodal=True,
                                          trained_model=lambda model: objective.trained_model(model, tiny_llava_dir))
    objective.prepare(ds_engine, plan, rank=0, world=1)
    before = {name: param.detach().clone() for name, param in ds_engine.module.named_parameters()}
    metrics = trainer._optimizer_step(ds_engine, objective, 0, plan.micro_batches(0, 0))
    after = dict(ds_engine.module.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    frozen_lm_head = "critic.backbone.lm_head.weight"
    assert "critic.score.weight" in moved and frozen_lm_head in before and frozen_lm_head not in moved
    assert any(name.startswith("policy.model.language_model.") for name in moved)
    assert any(name.startswith("critic.backbone.model.language_model.") for name in moved)
    for name in ("objective/kl", "objective/scores", "objective/entropy", "policy/clipfrac", "policy/approxkl",
                 "val/clipfrac", "val/vpred", "loss/policy_avg", "loss/value_avg"):
        assert name in metrics
    # Step 0's policy is the rollouts' policy: every ratio is 1, nothing is clipped yet.
    assert metrics["policy/clipfrac"] == 0.0 and metrics["policy/approxkl"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["objective/kl"] != 0.0


# ---------------------------------------------------------------- through Ray Train (slow)

STEPS = 4  # 6 rollouts, 2 per step (micro 2, accumulation 1): 3 steps per epoch, 2 epochs: 6 steps


def ray_config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir):
    return config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir, "train.gradient_accumulation_steps=1",
                  "ppo.epochs=2", "ray.num_cpus=2")


@pytest.fixture(scope="module")
def run(ray_local, model_cache, tiny_llava_dir, reward_model_dir, reference_dir, rollouts, tmp_path_factory):
    from train.trainer import train_ppo

    cfg = ray_config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir)
    return train_ppo(cfg, rollouts, tiny_llava_dir, str(tmp_path_factory.mktemp("ppo")), resume=False)


@pytest.mark.slow
def test_train_ppo_exports_a_policy_and_a_critic_that_reload(run, tiny_llava_dir, reward_model_dir):
    assert run.steps == 6 and len(run.history) == 6 and run.history[-1]["epoch"] == 2
    model_dir, critic_dir = Path(run.model_dir), Path(run.critic_dir)
    assert model_dir.name == "model" and critic_dir == model_dir.parent / "critic"
    policy = AutoModelForImageTextToText.from_pretrained(model_dir)
    initial = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    assert not torch.equal(policy.lm_head.weight, initial.lm_head.weight)
    assert not (model_dir / HEAD_FILE).exists()  # a plain policy directory, as vLLM loads it
    critic, _ = load_reward_model(str(critic_dir))
    initial_head = load_file(str(Path(reward_model_dir) / HEAD_FILE))
    assert not torch.equal(critic.score.weight, initial_head["score.weight"])


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(run, model_cache, tiny_llava_dir,
                                                                     reward_model_dir, reference_dir, rollouts,
                                                                     tmp_path):
    from train.trainer import train_ppo

    cfg = ray_config(model_cache, tiny_llava_dir, reward_model_dir, reference_dir)
    stopped = train_ppo(cfg, rollouts, tiny_llava_dir, str(tmp_path), resume=False, max_steps=STEPS)
    assert stopped.model_dir is None and stopped.critic_dir is None and stopped.steps == STEPS
    resumed = train_ppo(cfg, rollouts, tiny_llava_dir, str(tmp_path), resume=True)
    assert resumed.started_at_step == STEPS
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in run.history], abs=1e-6)
    for name in ("model/model.safetensors", "critic/model.safetensors", f"critic/{HEAD_FILE}"):
        expected, got = load_file(str(Path(run.model_dir).parent / name)), load_file(str(tmp_path / name))
        assert expected.keys() == got.keys()
        assert all(torch.allclose(expected[key], got[key], atol=1e-6) for key in expected), name
