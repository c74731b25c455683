"""Object-hallucination evaluation (ALGORITHMS.md 8) of one policy on a held-out set."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/evaluate.py: import the project from the repo root)

import json

import click

from engine.cli import config_option, load_or_exit, set_option


@click.command("evaluate")
@config_option
@set_option
@click.option("--model", "model_path", default=None,
              help="Policy to evaluate: model directory or tiny:<name> (default: models.policy).")
@click.option("--heldout", default=None,
              help="Held-out (image, objects) rows, Parquet or JSONL (default: eval.heldout_path).")
@click.option("--out", "out_dir", default=None,
              help="Output directory or fsspec URL (default: <run.output_dir>/<run.name>/eval).")
def main(config_path, overrides, model_path, heldout, out_dir):
    """Describe each held-out image and probe it with yes/no questions; print CHAIR_s,
    CHAIR_i, coverage, length and probe accuracy/F1, and write rows.parquet and metrics.json.
    The model runs as a Ray task with eval.resources (on a cluster, where those resources are)."""
    extra = [f"eval.heldout_path={json.dumps(heldout)}"] if heldout else []
    cfg = load_or_exit(config_path, (*overrides, *extra))
    from engine.config import ConfigError
    from engine.evaluation import evaluate_policy
    from engine.inputs import InputError
    from engine.ray_runtime import init_ray
    from engine.storage import join

    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "eval")
    try:
        init_ray(cfg.ray)
        metrics = evaluate_policy(cfg, model_path or cfg.models.policy.path, out_dir)
    except (InputError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("== evaluation ==")
    for key, value in metrics.items():
        click.echo(f"  {key:<24} {round(value, 4) if isinstance(value, float) else value}")
    click.echo(f"rows and metrics written to {out_dir}")


if __name__ == "__main__":
    main()
