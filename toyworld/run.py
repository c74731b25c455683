"""The toy world's main run: configs/toyworld.toml's iterations for several seeds, then a table
per iteration and a plot of each held-out metric against the iteration.

    python -m toyworld.run --seeds 0,1,2

Each seed is its own resumable run (<run.output_dir>/<run.name>-seed<s>/, jobs/iterate.py's
layout), so a re-run reuses finished iterations. The held-out metrics come from the iteration
summaries (eval.enabled): iteration 0 is the toy policy, iteration k the k-th checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import click
import msgspec
import pyarrow.parquet as pq

from engine.cli import Job, set_option
from engine.config import Config, load_config, with_absolute_model_dirs
from toyworld.grammar import grammatical_share

TOYWORLD_CONFIG = "configs/toyworld.toml"
# (metric key of engine.evaluation, column title)
COLUMNS = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("cider", "CIDEr"), ("bleu_4", "BLEU-4"),
           ("probe_accuracy", "yes/no acc"),
           ("mean_words", "words"), ("coverage", "coverage"), ("grammatical", "grammatical"))


def seed_config(cfg: Config, seed: int, name: str | None = None) -> Config:
    """cfg for one seed, run under <name or run.name>-seed<seed>, with local paths made
    absolute: Ray Train's workers run in their own directory, where the config's repo-relative
    models/toy-policy would be taken for a hub id and runs/ would land elsewhere."""
    output_dir = cfg.run.output_dir if "://" in cfg.run.output_dir else str(Path(cfg.run.output_dir).resolve())
    run = msgspec.structs.replace(cfg.run, seed=seed, name=f"{name or cfg.run.name}-seed{seed}", output_dir=output_dir)
    return with_absolute_model_dirs(msgspec.structs.replace(cfg, run=run))


def iteration_metrics(summaries: list[dict]) -> list[dict]:
    """Held-out metrics of the toy policy, then of each iteration's trained checkpoint."""
    if not summaries or summaries[0].get("eval_initial") is None:
        raise ValueError("the iteration summaries carry no evaluation: set eval.enabled = true")
    return [summaries[0]["eval_initial"], *(summary["eval"] for summary in summaries)]


def with_grammatical_share(cfg: Config, metrics: list[dict]) -> list[dict]:
    """metrics, each with the share of its held-out descriptions in the scene grammar
    (toyworld.grammar), read from the evaluation rows the iterations wrote."""
    from engine.evaluation import ROWS_FILE
    from engine.iterate import EVAL_DIR, EVAL_INITIAL_DIR
    from engine.run_dir import RunDir
    from engine.storage import filesystem, join

    run = RunDir(cfg)
    dirs = [join(run.iteration_dir(0), EVAL_INITIAL_DIR), *(join(run.iteration_dir(k), EVAL_DIR) for k in range(len(metrics) - 1))]
    out = []
    for values, eval_dir in zip(metrics, dirs):
        fs, path = filesystem(join(eval_dir, ROWS_FILE))
        with fs.open(path, "rb") as f:
            descriptions = [text for text in pq.read_table(f, columns=["description"]).column(0).to_pylist() if text is not None]
        out.append({**values, "grammatical": grammatical_share(descriptions)})
    return out


def run_seed(cfg: Config, echo: Callable[[str], None]) -> tuple[list[dict], float]:
    """Run (or resume) one seed's iterations; its per-iteration metrics and wall seconds."""
    from engine.iterate import run_iterations

    start = time.perf_counter()
    summaries = run_iterations(cfg, echo=echo)
    return with_grammatical_share(cfg, iteration_metrics(summaries)), time.perf_counter() - start


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def format_table(per_seed: dict[int, list[dict]]) -> str:
    """One row per iteration and seed, then the mean over seeds, for every column."""
    header = f"{'iteration':>9} {'seed':>6}" + "".join(f"{title:>12}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    iterations = min(len(metrics) for metrics in per_seed.values())
    for k in range(iterations):
        rows = [(str(seed), metrics[k]) for seed, metrics in per_seed.items()]
        rows.append(("mean", {key: mean([m[k][key] for m in per_seed.values()]) for key, _ in COLUMNS}))
        for seed, values in rows:
            lines.append(f"{k:>9} {seed:>6}" + "".join(f"{values[key]:>12.3f}" for key, _ in COLUMNS))
    return "\n".join(lines)


def plot_title(cfg: Config, seeds: str, per_seed: dict[int, list[dict]]) -> str:
    """What was measured, on what: a plot that travels without its run stays readable."""
    rows = next(iter(per_seed.values()))[0].get("rows_evaluated", "?")
    decoding = "greedy" if cfg.eval.temperature == 0 else f"temperature {cfg.eval.temperature}"
    return (f"{cfg.run.name}: seeds {seeds}, {cfg.run.iterations} iterations of {cfg.sample.n} answers per "
            f"instruction\nheld-out: {rows} scenes of {cfg.eval.heldout_path}, {decoding} descriptions of "
            f"{cfg.eval.prompt!r}, {cfg.eval.probes_per_image} yes/no probes per image")


def acceptance(per_seed: dict[int, list[dict]]) -> dict:
    """Relative CHAIR_s cut and description length change, first to last iteration, of the
    seed means (issue 8: a cut of at least 30% with at most 20% shorter descriptions)."""
    first = {key: mean([m[0][key] for m in per_seed.values()]) for key in ("chair_s", "mean_words")}
    last = {key: mean([m[-1][key] for m in per_seed.values()]) for key in ("chair_s", "mean_words")}
    return {
        "chair_s_before": first["chair_s"],
        "chair_s_after": last["chair_s"],
        "chair_s_relative_cut": 1 - last["chair_s"] / first["chair_s"] if first["chair_s"] else 0.0,
        "words_relative_change": last["mean_words"] / first["mean_words"] - 1 if first["mean_words"] else 0.0,
    }


@click.command(cls=Job)
@click.option("--config", "config_path", default=TOYWORLD_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The toy world's TOML config.")
@set_option
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated run seeds.")
@click.option("--plot", "plot_path", default=None,
              help="PNG to write (default: <run.output_dir>/<run.name>.png).")
def main(config_path, overrides, seeds, plot_path):
    """Run the toy world for each seed; print the per-iteration table, write the plot and
    <run.output_dir>/<run.name>.json."""
    cfg = load_config(config_path, overrides)
    from engine.ray_runtime import init_ray
    from toyworld.plot import plot_metrics

    init_ray(cfg.ray)
    per_seed, walls = {}, {}
    for seed in (int(s) for s in seeds.split(",")):
        per_seed[seed], walls[seed] = run_seed(seed_config(cfg, seed), echo=lambda _: None)
        click.echo(f"seed {seed}: {walls[seed]:.0f} s")
    click.echo(format_table(per_seed))
    result = {"per_seed": per_seed, "wall_seconds": walls, **acceptance(per_seed)}
    click.echo(json.dumps({key: value for key, value in result.items() if key != "per_seed"}, indent=1))
    out = Path(cfg.run.output_dir)
    plot = plot_metrics(per_seed, plot_path or out / f"{cfg.run.name}.png", plot_title(cfg, seeds, per_seed))
    (out / f"{cfg.run.name}.json").write_text(json.dumps(result, indent=1))
    click.echo(f"plot: {plot}")


if __name__ == "__main__":
    main()
