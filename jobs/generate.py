"""One generation pass: instructions -> preference pairs (docs/algorithms.md §1-4), then a summary."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/generate.py: import the project from the repo root)


import click

from engine.cli import Job, config_option, set_option
from engine.config import load_config
from engine.preflight import preflight


@click.command("generate", cls=Job)
@config_option
@set_option
@click.option("--out", "out_dir", default=None,
              help="Output directory or fsspec URL (default: <run.output_dir>/<run.name>/generate).")
@click.option("--iteration", default=0, show_default=True, help="Iteration number recorded in the pairs.")
def main(config_path, overrides, out_dir, iteration):
    """Run one generation pass (validate, sample, split, score, pair, write) on Ray Data and
    print its summary. Re-running with the same --out resumes: finished instructions are skipped.
    An --out holding another pass's outputs (other settings or iteration) is refused."""
    cfg = load_config(config_path, overrides)
    preflight(cfg, inputs={"input.path": cfg.input.path})  # before Ray starts or any model loads
    from engine.generation_dir import claim_output_dir, pass_settings
    from engine.pipeline import STAGES, generate_pairs
    from engine.ray_runtime import init_ray
    from engine.storage import join
    from engine.summary import format_summary

    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "generate")
    claim_output_dir(out_dir, pass_settings(cfg, iteration, cfg.models.policy, STAGES))  # before Ray starts
    init_ray(cfg.ray)
    summary = generate_pairs(cfg, iteration, out_dir, echo=click.echo)
    click.echo(format_summary(summary))
    click.echo(f"pairs written to {join(out_dir, 'pairs')}")


if __name__ == "__main__":
    main()
