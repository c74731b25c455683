"""The toy world's ablation table (RLAIF-V's Table 5 and its Best-of-N), one command:

    python -m toyworld.ablations --seeds 0,1,2

Rows, each averaged over the seeds, all on the held-out scenes of configs/toyworld.toml:
  toy policy                  iteration 0's policy
  RLAIF-V                     after run.iterations iterations (the main run, reused if done)
  w/o deconfounding           answers of one instruction decoded at different temperatures
                              (sample.confounded_temperatures), so pairs differ in style too
  w/o divide-and-conquer      one yes/no question about the whole answer (score.divide_and_conquer)
  RLAIF-V + BoN               the trained policy picks the best of bon.n samples by its
                              length-normalised implicit reward against the toy policy
  RLAIF-V + BoN, no 1/T       the same without the length normalisation
Best-of-N rows have no yes/no probes (they rank descriptions only).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import msgspec

from engine import hallucination as hal
from engine.cli import Job, set_option
from engine.config import Config, load_config
from toyworld.grammar import grammatical_share
from toyworld.run import COLUMNS, TOYWORLD_CONFIG, mean, run_seed, seed_config

# (row title, run-name suffix, overrides) of the trained variants; "" is the main run.
VARIANTS = (
    ("RLAIF-V", "", ()),
    ("w/o deconfounding", "confounded", ("sample.confounded_temperatures=[0.5, 1.0, 1.5]",)),
    ("w/o divide-and-conquer", "whole-answer", ("score.divide_and_conquer=false",)),
)


def bon_metrics(cfg: Config, policy_dir: str, length_normalise: bool, out_dir: str) -> dict:
    """CHAIR and length of the answers Best-of-N picks on the held-out scenes (engine.bon),
    reusing a finished pass in out_dir."""
    from engine.bon import BON_CANDIDATE_SCHEMA
    from engine.bon_pass import MANIFEST, run_bon
    from engine.evaluation import score_rows
    from engine.instruction_io import read_instruction_table
    from engine.storage import exists, join, read_parquet_dir

    bon_cfg = msgspec.structs.replace(cfg.bon, policy=policy_dir, length_normalise=length_normalise)
    cfg = msgspec.structs.replace(cfg, bon=bon_cfg, input=msgspec.structs.replace(cfg.input, path=cfg.eval.heldout_path))
    if exists(join(out_dir, MANIFEST)):
        candidates = read_parquet_dir(join(out_dir, "candidates"), BON_CANDIDATE_SCHEMA)
    else:
        _, candidates = run_bon(cfg, out_dir)
    objects = {row["id"]: row["objects"] for row in read_instruction_table(cfg.eval.heldout_path).to_pylist()}
    rows = [{"description": row["response"], "objects": objects[row["instruction_id"]], "probe_truths": [],
             "p_yes": [], "p_no": []} for row in candidates.to_pylist() if row["chosen"]]
    vocab = hal.load_vocabulary(cfg.eval.vocabulary or hal.groups_for(objects.values()))
    return {**score_rows(rows, vocab), "probe_accuracy": float("nan"),
            "grammatical": grammatical_share([row["description"] for row in rows])}


def ablation_rows(config_path: str, overrides: tuple[str, ...], seeds: list[int], echo) -> dict[str, list[dict]]:
    """Row title -> that row's metrics for each seed."""
    from engine.storage import join, read_json

    cfg = load_config(config_path, overrides)
    rows: dict[str, list[dict]] = {"toy policy": []}
    for title, suffix, switches in VARIANTS:
        variant = load_config(config_path, (*overrides, *switches))
        rows[title] = []
        for seed in seeds:
            name = cfg.run.name + (f"-{suffix}" if suffix else "")
            metrics, wall = run_seed(seed_config(variant, seed, name), echo=lambda _: None)
            echo(f"{title}, seed {seed}: {wall:.0f} s")
            if not suffix:
                rows["toy policy"].append(metrics[0])
            rows[title].append(metrics[-1])
    for title, normalise in (("RLAIF-V + BoN", True), ("RLAIF-V + BoN, no 1/T", False)):
        rows[title] = []
        for seed in seeds:
            seeded = seed_config(cfg, seed)
            run_dir = join(seeded.run.output_dir, seeded.run.name)
            last = read_json(join(run_dir, f"iter_{cfg.run.iterations - 1}", "summary.json"))
            out = join(run_dir, "bon-normalised" if normalise else "bon-unnormalised")
            rows[title].append(bon_metrics(seeded, last["train"]["model_dir"], normalise, out))
            echo(f"{title}, seed {seed}: done")
    return rows


def format_ablations(rows: dict[str, list[dict]]) -> str:
    """Seed means per row (nan where a row has no such metric)."""
    header = f"{'':<26}" + "".join(f"{title:>12}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    for title, per_seed in rows.items():
        lines.append(f"{title:<26}" + "".join(f"{mean([m[key] for m in per_seed]):>12.3f}" for key, _ in COLUMNS))
    return "\n".join(lines)


@click.command(cls=Job)
@click.option("--config", "config_path", default=TOYWORLD_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The toy world's TOML config.")
@set_option
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated run seeds.")
def main(config_path, overrides, seeds):
    """Run the ablation variants for each seed and print the table of seed means; writes
    <run.output_dir>/<run.name>-ablations.json."""
    cfg = load_config(config_path, overrides)
    from engine.ray_runtime import init_ray

    init_ray(cfg.ray)
    rows = ablation_rows(config_path, overrides, [int(s) for s in seeds.split(",")], click.echo)
    click.echo(format_ablations(rows))
    Path(cfg.run.output_dir, f"{cfg.run.name}-ablations.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
