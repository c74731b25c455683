"""Object-hallucination evaluation (docs/algorithms.md §8) of one policy on a held-out set."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/evaluate.py: import the project from the repo root)

import json

import click

from engine.cli import Job, config_option, set_option
from engine.config import load_config
from engine.preflight import policy_at, preflight


@click.command("evaluate", cls=Job)
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
    cfg = load_config(config_path, (*overrides, *extra))
    # before Ray starts or any model loads
    preflight(cfg, inputs={"eval.heldout_path": cfg.eval.heldout_path}, models=policy_at(cfg, "--model", model_path))
    from engine.evaluation import evaluate_policy
    from engine.evaluation_format import format_metrics
    from engine.ray_runtime import init_ray
    from engine.storage import join

    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "eval")
    init_ray(cfg.ray)
    metrics = evaluate_policy(cfg, model_path or cfg.models.policy.path, out_dir)
    click.echo("\n".join(["== evaluation ==", *format_metrics(metrics)]))
    click.echo(f"rows and metrics written to {out_dir}")


if __name__ == "__main__":
    main()
