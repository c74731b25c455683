"""RLHF-V's claim on the toy world (docs/algorithms.md §9): PPO with the reward model's per-token
rewards cuts hallucination more than the same PPO with one reward per answer. One command:

    python -m toyworld.ppo_comparison --seeds 0,1,2

Every arm starts from the toy policy and samples the same rollouts per round (input.path's
instructions x sample.n answers, configs/toyworld_ppo.toml) for ppo.rounds rounds:
  PPO, token rewards     jobs/ppo.py with ppo.reward_granularity = "token"
  PPO, sequence rewards  the same with "sequence": the reward model's sum on the last token
  RLAIF-V DPO            the toy world's iterations (configs/toyworld.toml's DPO settings) with
                         the same instructions, answers per instruction and rounds
Each round's policy is evaluated on the toy held-out scenes (CHAIR_s, CHAIR_i, CIDEr, BLEU-4).
Every arm of every seed is its own resumable run under <run.output_dir>; the table (mean and
sample standard deviation over seeds, per round) and the plot are written beside them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

import click

from engine.cli import Job, set_option
from engine.config import Config, load_config, with_overrides
from toyworld.experiments import METRICS, StepClock, format_markdown, summary_rows
from toyworld.run import TOYWORLD_CONFIG, iteration_metrics, seed_config

PPO_CONFIG = "configs/toyworld_ppo.toml"
NAME = "toyworld-ppo-comparison"
# (arm title, run name, how it trains: "ppo" with these overrides, or "rlaifv")
ARMS = (
    ("PPO, token rewards", "toyworld-ppo-token", ("ppo", ('ppo.reward_granularity="token"',))),
    ("PPO, sequence rewards", "toyworld-ppo-sequence", ("ppo", ('ppo.reward_granularity="sequence"',))),
    ("RLAIF-V DPO", "toyworld-ppo-rlaifv", ("rlaifv", ())),
)


def rlaifv_config(ppo_cfg: Config) -> Config:
    """The toy world's RLAIF-V config with the PPO config's rollouts (its instructions, answers
    per instruction and rounds), held-out rows and output directory."""
    return load_config(TOYWORLD_CONFIG, (f'input.path="{ppo_cfg.input.path}"', f"input.limit={ppo_cfg.input.limit}",
                                         f"sample.n={ppo_cfg.sample.n}", f"run.iterations={ppo_cfg.ppo.rounds}",
                                         f"eval.limit={ppo_cfg.eval.limit}",
                                         f'run.output_dir="{ppo_cfg.run.output_dir}"'))


def arm_rounds(ppo_cfg: Config, seed: int, run_name: str, training: tuple[str, tuple[str, ...]],
               echo: Callable[[str], None]) -> list[dict]:
    """Held-out metrics of the toy policy, then of each round's policy, for one arm and seed
    (resumed from its run directory when it ran before)."""
    kind, overrides = training
    if kind == "ppo":
        from engine.ppo import run_ppo

        summaries = run_ppo(seed_config(with_overrides(ppo_cfg, overrides), seed, run_name), echo=echo)
        return [summaries[0]["eval_initial"], *(summary["eval"] for summary in summaries)]
    from engine.iterate import run_iterations

    return iteration_metrics(run_iterations(seed_config(rlaifv_config(ppo_cfg), seed, run_name), echo=echo))


def run_comparison(ppo_cfg: Config, seeds: list[int], echo: Callable[[str], None]) -> dict[str, dict[int, list[dict]]]:
    """Arm title -> seed -> per-round held-out metrics (round 0: the toy policy)."""
    clock = StepClock(len(seeds) * len(ARMS), echo)
    results: dict[str, dict[int, list[dict]]] = {}
    for seed in seeds:
        for title, run_name, training in ARMS:
            rounds: list[dict] = []

            def run_arm() -> dict:
                rounds.extend(arm_rounds(ppo_cfg, seed, run_name, training, lambda line: None))
                return rounds[-1]

            clock.step(f"seed {seed}, {title}", run_arm)
            results.setdefault(title, {})[seed] = rounds
    return results


def round_results(results: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, dict]]:
    """The table's rows: the toy policy (every arm's round 0 is the same model and evaluation),
    then each arm's rounds."""
    first = next(iter(results.values()))
    rows = {"toy policy": {seed: rounds[0] for seed, rounds in first.items()}}
    for title, per_seed in results.items():
        for k in range(1, len(next(iter(per_seed.values())))):
            rows[f"{title}, round {k}"] = {seed: rounds[k] for seed, rounds in per_seed.items()}
    return rows


def plot(results: dict[str, dict[int, list[dict]]], out: Path, title: str) -> Path:
    """One panel per metric: each arm's mean over seeds against the round, the seeds' standard
    deviation as error bars, on a zero-based axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toyworld.plot import better_way, save_figure

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 3.8), constrained_layout=True)
    for ax, (key, label) in zip(axes, METRICS):
        top = 0.0
        for arm, per_seed in results.items():
            by_round = list(zip(*[[metrics[key] for metrics in rounds] for rounds in per_seed.values()]))
            means = [statistics.fmean(values) for values in by_round]
            spreads = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in by_round]
            ax.errorbar(range(len(means)), means, yerr=spreads, marker="o", capsize=3, label=arm)
            top = max(top, *(m + s for m, s in zip(means, spreads)))
        ax.set_ylim(0, 1 if key != "cider" else 1.15 * top or 1)
        ax.set_xticks(range(len(means)))
        ax.set_xlabel("round (0: toy policy)")
        ax.set_title(better_way(key, label))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, out)


@click.command(cls=Job)
@click.option("--config", "config_path", default=PPO_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The toy world's PPO config.")
@set_option
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
def main(config_path, overrides, seeds):
    """Run (or resume) every arm for every seed; print the table, write it as Markdown and JSON
    and the plot to <run.output_dir>/toyworld-ppo-comparison.{md,json,png}."""
    from engine.preflight import ppo_models, preflight
    from engine.ray_runtime import init_ray

    cfg = load_config(config_path, overrides)
    models, reward_models = ppo_models(cfg)
    preflight(cfg, models=models, reward_models=reward_models)
    seed_list = [int(seed) for seed in seeds.split(",")]
    init_ray(cfg.ray)
    results = run_comparison(cfg, seed_list, click.echo)
    rows = summary_rows(round_results(results))
    table = format_markdown(rows)
    out = Path(cfg.run.output_dir)
    (out / f"{NAME}.md").write_text(table + "\n")
    (out / f"{NAME}.json").write_text(json.dumps({"seeds": seed_list, "rows": rows, "per_seed": results}, indent=1))
    seeds_text = ", ".join(map(str, seed_list))
    plot(results, out / f"{NAME}.png", f"Toy world: PPO with token vs sequence rewards vs RLAIF-V DPO (seeds {seeds_text})")
    click.echo(table)


if __name__ == "__main__":
    main()
