"""RLHF-V's first experiments on the toy world (docs/algorithms.md §6, §10), one command:

    python -m toyworld.experiments --seeds 0,1,2

Every arm starts from the toy policy and is evaluated on configs/toyworld.toml's held-out
scenes (CHAIR_s, CHAIR_i, CIDEr, BLEU-4):
  a  DDPO vs DPO          the same human-style corrections (toyworld.corrections), each loss
  b  DDPO's gamma         gamma 1, 2, 5, 10 on those corrections
  c  SFT and crops        SFT on ground-truth descriptions, with and without random crops
  d  RLAIF-V vs AI corr.  one generation pass: DPO on its pairs, or DDPO on the AI corrections
                          jobs/correct.py makes from its claims (the same rollout budget)
Training settings are the toy world's [train] (the SFT term included) unless an arm says
otherwise. Each arm of each seed lives in <run.output_dir>/toyworld-experiments-seed<s>/<arm>/
and is reused when finished, so a re-run resumes; the table (mean and sample standard deviation
over seeds) and the plot are written beside them.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import click
import msgspec
import pyarrow as pa

from engine.cli import Job, set_option
from engine.config import Config, load_config, with_overrides
from toyworld.run import TOYWORLD_CONFIG, seed_config

NAME = "toyworld-experiments"
METRICS = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("cider", "CIDEr"), ("bleu_4", "BLEU-4"))
GAMMAS = (1.0, 2.0, 5.0, 10.0)
REUSED_SECONDS = 5  # a step this quick read its finished result back instead of running
# (experiment, arm title, data, training: (objective, overrides))
ARMS = (
    ("a", "DPO on corrections", "human", ("dpo", ('train.loss="dpo"',))),
    ("a", "DDPO on corrections", "human", ("dpo", ('train.loss="ddpo"',))),
    *(("b", f"DDPO gamma {g:g}", "human", ("dpo", ('train.loss="ddpo"', f"train.gamma={g}"))) for g in GAMMAS),
    ("c", "SFT", "sft", ("sft", ())),
    ("c", "SFT + crop", "sft", ("sft", ('sft.augment=["crop"]',))),
    ("d", "RLAIF-V pairs + DPO", "rlaifv", ("dpo", ())),
    ("d", "AI corrections + DDPO", "ai", ("dpo", ('train.loss="ddpo"', 'train.ddpo_mask="all_edits"'))),
)


def arm_dir(title: str) -> str:
    return title.lower().replace(" + ", "-").replace(" ", "-")


class SeedRun:
    """One seed's data and arms under <output_dir>/toyworld-experiments-seed<s>/, each step
    reused when its last file exists."""

    def __init__(self, cfg: Config, n_examples: int, echo: Callable[[str], None]):
        from engine.storage import join

        self.cfg, self.n, self.echo = cfg, n_examples, echo
        self.root = join(cfg.run.output_dir, cfg.run.name)
        self.policy = cfg.models.policy.path

    def path(self, *parts: str) -> str:
        from engine.storage import join

        return join(self.root, *parts)

    def evaluated(self, name: str, model: str) -> dict:
        from engine.evaluation import METRICS_FILE, evaluate_policy
        from engine.storage import exists, read_json

        metrics_url = self.path(name, "eval", METRICS_FILE)
        if exists(metrics_url):
            return read_json(metrics_url)
        self.echo(f"  evaluating {name}")
        return evaluate_policy(self.cfg, model, self.path(name, "eval"))

    def pairs_from(self, corrections: pa.Table, name: str) -> str:
        """Pair shards (reference log-probs by the toy policy) of a correction table."""
        from engine.storage import exists, join, write_parquet_atomic
        from train.data import pairs_from_corrections

        pairs_dir = self.path(name, "pairs")
        if not exists(join(pairs_dir, "corrections.parquet")):
            pairs, _ = pairs_from_corrections(corrections, self.cfg.models.policy, self.cfg.models.cache_dir,
                                              validate=self.cfg.validate)
            write_parquet_atomic(pairs, join(pairs_dir, "corrections.parquet"))
        return pairs_dir

    def human_pairs(self) -> str:
        from engine.instruction_io import CORRECTIONS, read_rows, write_rows
        from engine.storage import exists
        from toyworld.corrections import correction_rows

        url = self.path("data", "human_corrections.parquet")
        if not exists(url):
            table, _ = correction_rows(self.cfg, self.n, self.cfg.run.seed)
            write_rows(table, url, CORRECTIONS)
        return self.pairs_from(read_rows(url, CORRECTIONS), "data/human")

    def sft_examples(self) -> pa.Table:
        from engine.scenes import DESCRIBE, describe, make_scene, render

        rng = random.Random(self.cfg.run.seed)
        scenes = [make_scene(rng) for _ in range(self.n)]
        return pa.table({"example_id": [f"scene-{i:05d}" for i in range(self.n)],
                         "image": [render(scene) for scene in scenes], "question": [DESCRIBE] * self.n,
                         "answer": [describe(scene) for scene in scenes]})

    def generation(self) -> str:
        from engine.pipeline import generate_pairs
        from engine.generation_dir import GENERATION_MANIFEST
        from engine.storage import exists

        out = self.path("data", "generation")
        if not exists(self.path("data", "generation", GENERATION_MANIFEST)):
            self.echo("  generation pass")
            generate_pairs(self.quoting(), 0, out)
        return out

    def quoting(self) -> Config:
        return msgspec.structs.replace(self.cfg, split=msgspec.structs.replace(self.cfg.split, quote_sentences=True))

    def ai_pairs(self) -> str:
        from engine.correct_pass import run_correct
        from engine.instruction_io import CORRECTIONS, read_rows
        from engine.storage import exists

        url = self.path("data", "ai_corrections.parquet")
        if not exists(url):
            run_correct(self.quoting(), self.generation(), url)
        return self.pairs_from(read_rows(url, CORRECTIONS), "data/ai")

    def data(self, kind: str):
        from engine.storage import join

        if kind == "human":
            return self.human_pairs()
        if kind == "ai":
            return self.ai_pairs()
        if kind == "rlaifv":
            return join(self.generation(), "pairs")
        return self.sft_examples()

    def arm(self, title: str, kind: str, training: tuple[str, tuple[str, ...]]) -> dict:
        from train.trainer import train_dpo, train_sft

        objective, overrides = training
        cfg = with_overrides(self.cfg, overrides)
        out = self.path(arm_dir(title), "train")
        data = self.data(kind)
        result = (train_sft(cfg, data, self.policy, out) if objective == "sft"
                  else train_dpo(cfg, data, self.policy, out))
        return self.evaluated(arm_dir(title), result.model_dir)


def run_experiments(cfg: Config, seeds: list[int], experiments: str, n_examples: int,
                    echo: Callable[[str], None]) -> dict[str, dict[int, dict]]:
    """Arm title -> seed -> held-out metrics; the toy policy's row first."""
    arms = [arm for arm in ARMS if arm[0] in experiments]
    clock = StepClock(len(seeds) * (1 + len(arms)), echo)
    results: dict[str, dict[int, dict]] = {"toy policy": {}}
    for seed in seeds:
        run = SeedRun(seed_config(cfg, seed, NAME), n_examples, echo)
        results["toy policy"][seed] = clock.step(f"seed {seed}, toy policy",
                                                 lambda: run.evaluated("toy-policy", run.policy))
        for _, title, kind, training in arms:
            results.setdefault(title, {})[seed] = clock.step(f"seed {seed}, {title}",
                                                             lambda: run.arm(title, kind, training))
    return results


class StepClock:
    """done/total over every (seed, arm) step with its figures and an ETA; the rate counts only
    the steps that ran, not those reused from an earlier run."""

    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.done, self.echo = total, 0, echo
        self.ran, self.ran_seconds = 0, 0.0

    def step(self, name: str, work: Callable[[], dict]) -> dict:
        from engine.progress import format_seconds

        self.echo(f"[{self.done + 1}/{self.total}] {name} ...")
        start = time.monotonic()
        metrics = work()
        seconds = time.monotonic() - start
        self.done += 1
        if seconds > REUSED_SECONDS:
            self.ran, self.ran_seconds = self.ran + 1, self.ran_seconds + seconds
        left = self.total - self.done
        eta = f", ETA {format_seconds(left * self.ran_seconds / self.ran)}" if left and self.ran else ""
        figures = "  ".join(f"{label} {metrics[key]:.3f}" for key, label in METRICS)
        took = format_seconds(seconds) if seconds > REUSED_SECONDS else "reused"
        self.echo(f"[{self.done}/{self.total}] {name}: {figures}  ({took}{eta})")
        return metrics


def summary_rows(results: dict[str, dict[int, dict]]) -> list[dict]:
    """Per arm: each metric's mean and sample standard deviation over the seeds (0 for one seed)."""
    rows = []
    for title, per_seed in results.items():
        row = {"arm": title, "seeds": sorted(per_seed)}
        for key, _ in METRICS:
            values = [per_seed[s][key] for s in sorted(per_seed)]
            row[key] = statistics.fmean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def format_markdown(rows: list[dict]) -> str:
    header = "| arm | " + " | ".join(title for _, title in METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(METRICS) + 1)]
    for row in rows:
        cells = [f"{row[key]:.3f} ± {row[f'{key}_sd']:.3f}" for key, _ in METRICS]
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> Path:
    """One panel per metric: each arm's mean with its seed spread, on a zero-based axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toyworld.plot import better_way, save_figure

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 0.45 * len(rows) + 2),
                             constrained_layout=True, sharey=True)
    names = [row["arm"] for row in rows]
    for ax, (key, label) in zip(axes, METRICS):
        ax.barh(range(len(rows)), [row[key] for row in rows], xerr=[row[f"{key}_sd"] for row in rows],
                color="tab:blue", alpha=0.7, capsize=3)
        ax.set_xlim(0, 1 if key != "cider" else 1.15 * max(row[key] + row[f"{key}_sd"] for row in rows) or 1)
        ax.set_title(better_way(key, label))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return save_figure(fig, out)


@click.command(cls=Job)
@click.option("--config", "config_path", default=TOYWORLD_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The toy world's TOML config.")
@set_option
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--experiments", default="abcd", show_default=True,
              help="Which experiments to run: letters of a (DDPO vs DPO), b (gamma), c (SFT crops), d (AI corrections).")
@click.option("--examples", "n_examples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Human-style corrections (a, b) and SFT examples (c) per seed.")
def main(config_path, overrides, seeds, experiments, n_examples):
    """Run (or resume) the experiments for every seed; print the table, write it as Markdown and
    JSON and the plot to <run.output_dir>/toyworld-experiments.{md,json,png}."""
    from engine.ray_runtime import init_ray

    cfg = load_config(config_path, overrides)
    init_ray(cfg.ray)
    seed_list = [int(s) for s in seeds.split(",")]
    results = run_experiments(cfg, seed_list, experiments, n_examples, click.echo)
    rows = summary_rows(results)
    table = format_markdown(rows)
    click.echo(table)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(table + "\n")
    (out / f"{NAME}.json").write_text(json.dumps({"per_seed": results, "summary": rows}, indent=1, default=str))
    picture = plot(rows, out / f"{NAME}.png",
                   f"toy world, seeds {seeds}: mean and sample s.d. over seeds, held-out {cfg.eval.heldout_path}")
    click.echo(f"plot: {picture}")


if __name__ == "__main__":
    main()
