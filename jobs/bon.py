"""Self-feedback Best-of-N (ALGORITHMS.md 7): the trained policy ranks its own n samples."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/bon.py: import the project from the repo root)

import json

import click

from engine.cli import config_option, load_or_exit, set_option


@click.command("bon")
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
    cfg = load_or_exit(config_path, (*overrides, *extra))
    from engine.bon import format_bon
    from engine.bon_pass import run_bon
    from engine.config import ConfigError
    from engine.inputs import InputError
    from engine.ray_runtime import init_ray
    from engine.storage import join

    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "bon")
    try:
        init_ray(cfg.ray)
        summary, candidates = run_bon(cfg, out_dir)
    except (InputError, ConfigError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_bon(summary, candidates))
    click.echo(f"candidates written to {join(out_dir, 'candidates')}")


if __name__ == "__main__":
    main()
