"""The main job: K rounds of (generate pairs with M_k, train M_k -> M_{k+1}), resumable.

Locally:    python jobs/iterate.py                      (configs/smoke.toml: CPU, tiny models)
Cluster:    ray job submit --working-dir . -- python jobs/iterate.py --config configs/<real>.toml
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/iterate.py: import the project from the repo root)

import click

from engine.cli import config_option, load_or_exit, set_option


@click.command("iterate")
@config_option
@set_option
@click.option("--allow-config-change", is_flag=True,
              help="Resume a run whose config changed: finished iterations stay, the new config "
                   "applies from the first unfinished one (which restarts from the last checkpoint).")
def main(config_path, overrides, allow_config_change):
    """Run or resume the iterations of configs' [run] section into <run.output_dir>/<run.name>/.
    Re-running the same command after a crash skips finished stages and redoes only the rest."""
    cfg = load_or_exit(config_path, overrides)
    from engine.config import ConfigError
    from engine.iterate import run_iterations
    from engine.inputs import InputError
    from engine.preflight import PreflightError, preflight
    from engine.ray_runtime import init_ray
    from engine.run_dir import ConfigChanged

    try:
        preflight(cfg)  # seconds, before Ray starts or any model loads
        init_ray(cfg.ray)
        run_iterations(cfg, allow_config_change, echo=click.echo)
    except (InputError, PreflightError, ConfigChanged, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
