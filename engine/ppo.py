"""PPO on per-token rewards (RLHF-V's dense reward, docs/algorithms.md §9), in rounds: rollouts of
policy M_k with models.reward_model's reward on every token (engine.rollouts: a Ray Data pass of
the sample and reward stages), then ppo.epochs of clipped PPO updates of the policy and a value
head under Ray Train + DeepSpeed (train.trainer.train_ppo) -> M_{k+1}, held-out evaluation,
repeat. The reference of the KL term stays the first round's policy (or ppo.reference); the
value head of round k continues round k-1's.

The run directory is the iterations' (engine.run_dir): iter_<k>/ holds the round's rollouts/,
rollouts.json, checkpoint/ (model/ the next policy, critic/ the next value model), eval/ and
summary.json, each written last by its step, so re-running the same command after a crash
anywhere redoes only unfinished work.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import msgspec

from engine.config import Config
from engine.evaluation_format import format_metrics
from engine.iterate import EVAL_KEYS, evaluations, iteration_config
from engine.progress import readable
from engine.run_dir import SUMMARY, RunDir
from engine.storage import exists, join, read_json, write_json_atomic

# The rollout and training figures a round's summary shows, in this order.
ROLLOUT_KEYS = ("instructions", "instructions_rejected", "rollouts", "answer_tokens", "mean_token_reward",
                "wall_seconds")
TRAIN_KEYS = ("objective/scores", "objective/kl", "policy/clipfrac", "policy/approxkl", "val/clipfrac",
              "val/vpred", "loss/policy_avg", "loss/value_avg")


def round_config(cfg: Config, policy_path: str, critic_path: str) -> Config:
    """Round k's config: the policy is M_k and the value model round k-1's, while the reference
    stays the run's first policy."""
    cfg_k = iteration_config(cfg, policy_path)
    ppo = msgspec.structs.replace(cfg.ppo, reference=cfg.ppo.reference or cfg.models.policy.path,
                                  critic=critic_path)
    return msgspec.structs.replace(cfg_k, ppo=ppo)


def _rollouts(cfg: Config, k: int, it_dir: str, echo: Callable[[str], None]) -> dict:
    from engine.rollouts import ROLLOUT_MANIFEST, run_rollouts

    manifest = join(it_dir, ROLLOUT_MANIFEST)
    if exists(manifest):
        return read_json(manifest)["summary"]
    return run_rollouts(cfg, k, it_dir, cfg.models.policy, echo=echo)


def _train(cfg: Config, run: RunDir, k: int) -> dict:
    """PPO epochs on round k's rollouts; train_result.json under checkpoint/ is the marker."""
    from engine.rollouts import read_rollouts
    from train.trainer import read_result, train_ppo

    out_dir = run.checkpoint_dir(k)
    result = read_result(out_dir)
    if result is None:
        result = train_ppo(cfg, read_rollouts(run.iteration_dir(k)), cfg.models.policy.path, out_dir, resume=True)
    return asdict(result)


def format_round(summary: dict) -> str:
    k, rollouts, train = summary["round"], summary["rollouts"], summary["train"]
    lines = [f"== round {k}: rollouts ==",
             *(f"  {key:<28} {readable(rollouts[key])}" for key in ROLLOUT_KEYS if key in rollouts),
             f"== round {k}: PPO ({summary['granularity']} rewards) ==",
             f"  {'steps':<28} {train['steps']}",
             *(f"  {key:<28} {readable(train['metrics'][key])}" for key in TRAIN_KEYS if key in train["metrics"]),
             f"  {'next policy':<28} {train['model_dir']}"]
    for title, metrics in (("policy before", summary.get("eval_initial")), ("policy after", summary.get("eval"))):
        if metrics:
            lines.append(f"== round {k}: held-out evaluation, {title} the round ==")
            lines += format_metrics(metrics, EVAL_KEYS)
    return "\n".join(lines)


def run_ppo(cfg: Config, allow_config_change: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) cfg.ppo.rounds rounds; returns each round's summary."""
    run = RunDir(cfg)
    run.open(allow_config_change)
    policy_path = cfg.models.policy.path
    critic_path = cfg.ppo.critic or cfg.models.reward_model.path
    summaries = []
    for k in range(cfg.ppo.rounds):
        it_dir = run.iteration_dir(k)
        summary_url = join(it_dir, SUMMARY)
        if exists(summary_url):
            summary = read_json(summary_url)
        else:
            cfg_k = round_config(cfg, policy_path, critic_path)
            rollouts = _rollouts(cfg_k, k, it_dir, echo)
            train = _train(cfg_k, run, k)
            summary = {"round": k, "policy": policy_path, "critic": critic_path,
                       "granularity": cfg.ppo.reward_granularity, "rollouts": rollouts,
                       "train": {key: value for key, value in train.items() if key != "history"}}
            summary.update(evaluations(cfg_k, k, policy_path, train["model_dir"], it_dir))
            write_json_atomic(summary, summary_url)
        echo(format_round(summary))
        summaries.append(summary)
        policy_path, critic_path = summary["train"]["model_dir"], summary["train"]["critic_dir"]
    return summaries
