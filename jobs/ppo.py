"""PPO with the token-level reward model's dense rewards (RLHF-V, docs/algorithms.md §9): rounds
of rollouts -> per-token rewards -> PPO epochs on the policy and a value head -> export ->
held-out evaluation, resumable like jobs/iterate.py.

Locally:  python jobs/ppo.py --config configs/toyworld_ppo.toml
Cluster:  ray job submit --working-dir . -- python jobs/ppo.py --config configs/<real>.toml
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/ppo.py: import the project from the repo root)

import click

from engine.cli import Job, config_option, set_option, tables_help
from engine.config import load_config


@click.command("ppo", cls=Job, epilog=tables_help("ppo", "reward", "models.reward_model"))
@config_option
@set_option
@click.option("--allow-config-change", is_flag=True,
              help="Resume a run whose config changed: finished rounds stay, the new config applies from "
                   "the first unfinished one (which restarts from the last checkpoint).")
def main(config_path, overrides, allow_config_change):
    """Run or resume ppo.rounds rounds into <run.output_dir>/<run.name>/iter_<k>/. Each round samples
    sample.n answers per instruction of input.path from the current policy ([sample]), scores every
    answer token with models.reward_model ([reward]), and trains the policy and a value head
    (initialised from the reward model, as OpenRLHF does) for ppo.epochs epochs of clipped PPO with
    GAE over r_t = RM(t) - ppo.beta_kl * (log pi - log pi_ref) (ppo.reward_granularity = "sequence":
    the RM's summed reward on the last token instead), with [train]'s optimisation settings; the
    held-out evaluation ([eval]) follows each round; its keys are below. Re-running the same
    command after a crash skips finished steps and redoes only the rest."""
    cfg = load_config(config_path, overrides)
    from engine.preflight import ppo_models, preflight

    models, reward_models = ppo_models(cfg)
    preflight(cfg, models=models, reward_models=reward_models)  # before Ray starts or any model loads
    from engine.ppo import run_ppo
    from engine.ray_runtime import init_ray

    init_ray(cfg.ray)
    run_ppo(cfg, allow_config_change, echo=click.echo)


if __name__ == "__main__":
    main()
