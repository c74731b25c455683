"""Self-feedback Best-of-N (docs/algorithms.md §7): the trained policy ranks its own n samples."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/bon.py: import the project from the repo root)

import json

import click

from engine.cli import Job, config_option, set_option
from engine.config import load_config
from engine.preflight import preflight


@click.command("bon", cls=Job)
@config_option
@set_option
@click.option("--policy", default=None, help="Trained policy: model directory or tiny:<name> (default: bon.policy, "
                                             "else models.policy).")
@click.option("--reference", default=None, help="Reference model pi_ref (default: bon.reference, else models.policy).")
@click.option("--input", "input_path", default=None, help="Instruction file, Parquet or JSONL (default: input.path).")
@click.option("--out", "out_dir", default=None,
              help="Output directory or fsspec URL, not used before (default: <run.output_dir>/<run.name>/bon).")
@click.option("--no-length-normalise", is_flag=True,
              help="Rank by beta * log-ratio without 1/T (favours short answers; for comparison).")
def main(config_path, overrides, policy, reference, input_path, out_dir, no_length_normalise):
    """Sample bon.n answers per instruction from the policy, score each by
    beta / T * (log pi_theta - log pi_ref), and write every candidate with its reward and
    whether it was chosen (candidates/*.parquet), rejects and bon.json; print the picks."""
    shorthands = {"bon.policy": policy, "bon.reference": reference, "input.path": input_path}
    extra = [f"{key}={json.dumps(value)}" for key, value in shorthands.items() if value is not None]
    extra += ["bon.length_normalise=false"] if no_length_normalise else []
    cfg = load_config(config_path, (*overrides, *extra))
    from engine.bon import bon_models, format_bon

    roles = bon_models(cfg)
    models = {"bon.policy" if cfg.bon.policy else "models.policy.path": roles["policy"],
              "bon.reference" if cfg.bon.reference else "models.policy.path": roles["reference"]}
    preflight(cfg, inputs={"input.path": cfg.input.path}, models=models)  # before Ray starts or any model loads
    from engine.bon_pass import run_bon
    from engine.ray_runtime import init_ray
    from engine.storage import join

    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "bon")
    init_ray(cfg.ray)
    summary, candidates = run_bon(cfg, out_dir)
    click.echo(format_bon(summary, candidates))
    click.echo(f"candidates written to {join(out_dir, 'candidates')}")


if __name__ == "__main__":
    main()
