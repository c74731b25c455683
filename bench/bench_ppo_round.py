"""Where one PPO round's wall time goes: model loading, rollouts, reward scoring, reference
log-probs, old log-probs + values, advantages and the update, at the toy world's shapes.

Everything runs in this one process, one phase after the other, with plain transformers and
torch: the figure says which phase dominates per unit of work, not what the job takes. The
job differs in what it adds and what it shares: its rollout, reward and reference stages run
in Ray Data actor pools, each of which loads its model once per pass (here once per round,
the same); its trainer runs under Ray Train + DeepSpeed and reloads the policy and the critic
from disk every round (here a plain torch loop, AdamW over both modules); the start-up of Ray,
its actors and the training workers, and the handing of rows between them, are not measured
here at all (bench_pipeline_overhead measures the generation pass's). The reward model is
the toy policy with a fresh head (built before timing starts), the critic starts from it, as
docs/algorithms.md §9 says the value head does.

    python -m bench.bench_ppo_round                 # 128 instructions x 4 answers, toy policy, CPU
    python -m bench.bench_ppo_round --threads 1     # on a loaded box: two torch threads swing 10-100x
    python -m bench.bench_ppo_round --policy tiny:llava --instructions 2 --n 2 --max-new-tokens 8 --epochs 1
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager

import click
import pyarrow.parquet as pq
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForImageTextToText, AutoProcessor

from engine.backends.base import Prompt
from engine.backends.hf import HFBackend
from engine.chat import encode_for_logprobs
from engine.config import ModelConfig
from engine.images import decode_image
from engine.reward_model import load_reward_model, score_tokens, with_reward_head
from engine.sampling import SamplingParams
from engine.seeds import derive_seed
from engine.tiny_models import resolve_model_path
from train.data import inputs_on
from train.losses import shifted_token_logps
from train.ppo_losses import gae, ppo_policy_loss, shaped_rewards, value_loss, whiten

STAGE_BATCH = 16  # instructions per sample-stage batch, as configs/toyworld.toml's [sample.resources]
# PPO settings; they change the arithmetic, not the time.
BETA_KL, GAMMA, LAM, CLIP, VALUE_CLIP, LEARNING_RATE = 0.05, 1.0, 0.95, 0.2, 0.2, 1e-5
PHASES = {
    "load_sampler": "load policy for sampling",
    "rollouts": "rollouts (HFBackend.sample)",
    "load_reward": "load reward model",
    "reward": "reward scoring (score_tokens)",
    "load_reference": "load reference",
    "reference": "reference log-probs",
    "load_trainer": "load policy + critic for training",
    "old_logps_values": "old log-probs + values",
    "advantages": "advantages (shaped rewards, GAE)",
    "update": "update (epochs x fwd+bwd+AdamW)",
}
LOADING = ("load_sampler", "load_reward", "load_reference", "load_trainer")


def on_responses(per_position: torch.Tensor, response_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the values at the positions that predict its response tokens ([B, T-1] in,
    aligned with shifted_token_logps), so index k is response token k's."""
    mask = response_mask[:, 1:].bool()
    return [row[row_mask] for row, row_mask in zip(per_position, mask)]


def padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, R] right-padded with zeros, and its 0/1 mask."""
    lengths = torch.tensor([len(row) for row in rows])
    return pad_sequence(rows, batch_first=True), (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()


def micro_batches(answers: list[tuple], size: int):
    for start in range(0, len(answers), size):
        chunk = answers[start:start + size]
        yield slice(start, start + len(chunk)), [list(column) for column in zip(*chunk)]


def forward_logps_values(policy, critic, processor, images, prompts, responses):
    """Per answer, policy log-probs and critic values of its response tokens, with grad if enabled."""
    encoded = encode_for_logprobs(processor, images, prompts, responses)
    response_mask = encoded.pop("response_mask")
    inputs = inputs_on(encoded, policy.device, policy.dtype)
    logps = shifted_token_logps(policy(**inputs, use_cache=False).logits, inputs["input_ids"])
    values = critic(**inputs)[:, :-1].float() if critic is not None else None
    return on_responses(logps, response_mask), None if values is None else on_responses(values, response_mask)


def run_round(policy_dir: str, instructions: str, n_instructions: int, n: int, max_new_tokens: int, epochs: int,
              micro_batch: int, reward_dir: str) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per phase, and facts about the round: answers, response tokens (the template's
    end-of-turn included) and the largest |old log-prob - reference log-prob| (0 up to float
    error: both are the policy before its update, so a gap means misaligned tokens)."""
    seconds: dict[str, float] = {}

    @contextmanager
    def phase(name):
        start = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - start

    rows = pq.read_table(instructions, columns=["id", "prompt", "image"]).slice(0, n_instructions).to_pylist()
    prompts = [Prompt(decode_image(row["image"], 1 << 30, 1 << 30), row["prompt"]) for row in rows]

    with phase("load_sampler"):
        sampler = HFBackend(policy_dir, ModelConfig(path=policy_dir), device="cpu")
    with phase("rollouts"):
        params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
        answers = []  # (image, prompt, response) per answer, an instruction's n together
        for start in range(0, len(prompts), STAGE_BATCH):
            batch, batch_rows = prompts[start:start + STAGE_BATCH], rows[start:start + STAGE_BATCH]
            seeds = [[derive_seed(0, 0, row["id"], j) for j in range(n)] for row in batch_rows]
            for prompt, completions in zip(batch, sampler.sample(batch, seeds, params)):
                answers += [(prompt.image, prompt.text, completion.text) for completion in completions]
    del sampler
    images, texts, responses = (list(column) for column in zip(*answers))

    with phase("load_reward"):
        reward_model, processor = load_reward_model(reward_dir)
    with phase("reward"):
        token_rewards = [torch.tensor(row) for row in score_tokens(reward_model, processor, images, texts, responses,
                                                                   batch_size=micro_batch)]
    del reward_model

    with phase("load_reference"):
        reference = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(policy_dir)
    with phase("reference"), torch.no_grad():
        ref_logps = []
        for _, (batch_images, batch_prompts, batch_responses) in micro_batches(answers, micro_batch):
            ref_logps += forward_logps_values(reference, None, processor, batch_images, batch_prompts,
                                              batch_responses)[0]
    del reference

    with phase("load_trainer"):
        policy = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(policy_dir)
        critic = with_reward_head(AutoModelForImageTextToText.from_pretrained(reward_dir, dtype=torch.float32),
                                  reward_dir, seed=0)
        optimizer = torch.optim.AdamW([p for module in (policy, critic) for p in module.parameters()
                                       if p.requires_grad], lr=LEARNING_RATE)
    with phase("old_logps_values"), torch.no_grad():
        policy.eval()
        critic.eval()
        old_logps, old_values = [], []
        for _, (batch_images, batch_prompts, batch_responses) in micro_batches(answers, micro_batch):
            logps, values = forward_logps_values(policy, critic, processor, batch_images, batch_prompts,
                                                 batch_responses)
            old_logps += logps
            old_values += values
    with phase("advantages"):
        rewards, mask = padded(token_rewards)
        old_logps, old_values, ref_logps = padded(old_logps)[0], padded(old_values)[0], padded(ref_logps)[0]
        if old_logps.shape != rewards.shape:
            raise RuntimeError(f"reward model and policy disagree on response tokens: {rewards.shape} vs "
                               f"{old_logps.shape}")
        shaped = shaped_rewards(rewards, old_logps, ref_logps, mask, BETA_KL, "token")
        advantages, returns = gae(shaped, old_values, mask, GAMMA, LAM)
        advantages = whiten(advantages, mask)
    gap = float((old_logps - ref_logps).abs().max())
    with phase("update"):
        policy.train()
        critic.train()
        for _ in range(epochs):
            for rows_of, (batch_images, batch_prompts, batch_responses) in micro_batches(answers, micro_batch):
                logps, values = forward_logps_values(policy, critic, processor, batch_images, batch_prompts,
                                                     batch_responses)
                logps, values = padded(logps)[0], padded(values)[0]
                width = logps.shape[1]
                batch_mask = mask[rows_of, :width]
                policy_loss, _ = ppo_policy_loss(logps, old_logps[rows_of, :width], advantages[rows_of, :width],
                                                 batch_mask, CLIP)
                critic_loss, _ = value_loss(values, old_values[rows_of, :width], returns[rows_of, :width],
                                            batch_mask, VALUE_CLIP)
                (policy_loss + critic_loss).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return seconds, {"answers": len(answers), "response_tokens": int(mask.sum()), "max_logp_gap": gap}


def build_reward_model(policy_dir: str, out_dir: str) -> None:
    """The toy policy with a fresh token-reward head: a stand-in reward model of the same shapes."""
    backbone = AutoModelForImageTextToText.from_pretrained(policy_dir, dtype=torch.float32)
    with_reward_head(backbone, policy_dir, seed=0).save_pretrained(out_dir)
    AutoProcessor.from_pretrained(policy_dir).save_pretrained(out_dir)


@click.command()
@click.option("--policy", default="models/toy-policy", show_default=True, help="Local HF dir or tiny:llava.")
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True)
@click.option("--instructions-path", default="data/toyworld/instructions.parquet", show_default=True)
@click.option("--instructions", "n_instructions", default=128, show_default=True)
@click.option("--n", default=4, show_default=True, help="Answers per instruction.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--epochs", default=2, show_default=True, help="PPO epochs over the round's answers.")
@click.option("--micro-batch", default=8, show_default=True, help="Answers per forward (scoring, log-probs, update).")
@click.option("--threads", default=0, show_default=True, help="torch threads; 0 keeps torch's default.")
@click.option("--json", "json_path", default=None, help="Also write the seconds and shares here.")
def main(policy, cache_dir, instructions_path, n_instructions, n, max_new_tokens, epochs, micro_batch, threads,
         json_path):
    if threads:
        torch.set_num_threads(threads)
    policy_dir = resolve_model_path(policy, cache_dir)
    with tempfile.TemporaryDirectory() as reward_dir:
        build_reward_model(policy_dir, reward_dir)
        seconds, facts = run_round(policy_dir, instructions_path, n_instructions, n, max_new_tokens, epochs,
                                   micro_batch, reward_dir)
    total = sum(seconds.values())
    shares = {name: t / total for name, t in seconds.items()}
    print(f"policy={policy} instructions={n_instructions} n={n} max_new_tokens={max_new_tokens} epochs={epochs} "
          f"micro_batch={micro_batch} torch_threads={torch.get_num_threads()} "
          f"answers={facts['answers']} response_tokens={facts['response_tokens']}")
    print(f"{'phase':<36}{'seconds':>9}{'share':>8}")
    for name, label in PHASES.items():
        print(f"{label:<36}{seconds[name]:>9.2f}{shares[name]:>8.1%}")
    print(f"{'round':<36}{total:>9.2f}{1:>8.1%}")
    loading = sum(shares[name] for name in LOADING)
    top = max((name for name in PHASES if name not in LOADING), key=shares.get)
    print(f"loading is {loading:.1%} of the round; the largest other phase is {PHASES[top]} at {shares[top]:.1%}")
    print(f"max |old log-prob - reference log-prob| = {facts['max_logp_gap']:.2e}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"seconds": seconds, "shares": shares, "total_seconds": total, **facts}, f, indent=1)


if __name__ == "__main__":
    main()
