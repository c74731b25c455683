"""Pipeline throughput with 1, 2, 4 actors per model stage, on one Ray cluster in one run.

Each setting runs the whole generation pass (validate, sample, split, score, pair, write) on
the same instructions with min = max = k actors in every model stage; ratio = instructions/s
at k / instructions/s at 1 actor. Actor start-up (model loading) is part of the wall time,
as it is in a real pass.

    python -m bench.bench_pipeline_actors                          # smoke config on CPU
    python -m bench.bench_pipeline_actors --config configs/x.toml --actors 1,4,16
"""

from __future__ import annotations

import tempfile

import click

from engine.config import load_config
from engine.pipeline import STAGES, generate_pairs
from engine.ray_runtime import init_ray


@click.command()
@click.option("--config", "config_path", default="configs/smoke.toml", show_default=True, help="Run config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config overrides (repeatable).")
@click.option("--actors", default="1,2,4", show_default=True, help="Comma-separated actors per stage to compare.")
@click.option("--cpus-per-actor", default=0.1, show_default=True,
              help="num_cpus per actor, small enough that every pool fits on this machine.")
def main(config_path, overrides, actors, cpus_per_actor):
    counts = [int(k) for k in actors.split(",")]
    base = load_config(config_path, overrides)
    init_ray(base.ray)
    click.echo(f"config={config_path}")
    click.echo(f"{'actors/stage':<14}{'instructions':>13}{'seconds':>10}{'instr/s':>10}{'ratio':>8}")
    base_rate = None
    for k in counts:  # each row as soon as it is measured: a long run shows progress
        stage_sets = [f"{spec.section}.resources.{key}={value}" for spec in STAGES
                      for key, value in (("min_actors", k), ("max_actors", k), ("num_cpus", cpus_per_actor))]
        cfg = load_config(config_path, [*overrides, *stage_sets])
        with tempfile.TemporaryDirectory() as out:
            summary = generate_pairs(cfg, iteration=0, out_dir=out)
        n, seconds = summary["instructions"], summary["wall_seconds"]
        base_rate = base_rate or n / seconds
        click.echo(f"{k:<14}{n:>13}{seconds:>10.2f}{n / seconds:>10.3f}{n / seconds / base_rate:>8.2f}")


if __name__ == "__main__":
    main()
