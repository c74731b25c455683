"""The main job: K rounds of (generate pairs with M_k, train M_k -> M_{k+1}), resumable.

Locally:    python jobs/iterate.py                      (configs/smoke.toml: CPU, tiny models)
Cluster:    ray job submit --working-dir . -- python jobs/iterate.py --config configs/<real>.toml
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/iterate.py: import the project from the repo root)

import click

from engine.cli import Job, config_option, set_option
from engine.config import load_config
from engine.preflight import preflight


@click.command("iterate", cls=Job)
@config_option
@set_option
@click.option("--allow-config-change", is_flag=True,
              help="Resume a run whose config changed: finished iterations stay, the new config "
                   "applies from the first unfinished one (which restarts from the last checkpoint).")
def main(config_path, overrides, allow_config_change):
    """Run or resume the iterations of configs' [run] section into <run.output_dir>/<run.name>/.
    Re-running the same command after a crash skips finished stages and redoes only the rest."""
    cfg = load_config(config_path, overrides)
    preflight(cfg)  # before Ray starts or any model loads
    from engine.iterate import run_iterations
    from engine.ray_runtime import init_ray

    init_ray(cfg.ray)
    run_iterations(cfg, allow_config_change, echo=click.echo)


if __name__ == "__main__":
    main()
