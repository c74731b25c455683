"""`rlaifv`: one entry point whose commands are the jobs (jobs/*.py) plus small utilities."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import click

from engine.config import config_explained, config_to_toml, load_config
from engine.errors import EngineError

# The embedded default, found from the package rather than the working directory, so that
# `rlaifv` runs from anywhere: configs/ of the checkout the engine package is imported from
# (an editable install, as the Makefile, the cluster image and the launcher configs make).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "smoke.toml"

# Shared by every job: the config file and its --set overrides.
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=str(DEFAULT_CONFIG),
    show_default="configs/smoke.toml of the rlaifv checkout",
    help="TOML run config (see configs/; `rlaifv config show --explain` explains every key).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config value, e.g. --set sample.n=4 --set train.beta=0.2 (repeatable).",
)



def training_options(command):
    """--fresh and --max-steps, shared by the training jobs (train, sft, train_rm)."""
    command = click.option("--max-steps", type=click.IntRange(min=1), default=None,
                           help="Stop after this many optimizer steps in total, keeping a checkpoint; run again "
                                "to continue.")(command)
    return click.option("--fresh", is_flag=True,
                        help="Delete the checkpoints and model under --out and start over (default: resume).")(command)


def echo_training(result, out_dir: str, finished: str) -> None:
    """A training job's per-step metrics, then where it stopped or the `finished` line."""
    for metrics in result.history:
        click.echo("  ".join(f"{key}={value:.4g}" for key, value in metrics.items()))
    if result.model_dir is None:
        click.echo(f"stopped at step {result.steps}; run again to continue from the checkpoint in {out_dir}")
    else:
        click.echo(finished)


class OneLineError(click.ClickException):
    """Shown as the single line `error: <message>` on stderr; the command exits with status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def column_map(options: tuple[str, ...], roles: tuple[str, ...]) -> dict[str, str]:
    """--column ROLE=COLUMN options -> {role: column}, refusing unknown roles in one line."""
    columns = {}
    for text in options:
        role, sep, name = text.partition("=")
        if not sep or role not in roles or not name:
            raise click.BadParameter(f"{text!r}: expected ROLE=COLUMN with ROLE one of {', '.join(roles)}",
                                     param_hint="--column")
        columns[role] = name
    return columns


class Job(click.Command):
    """A command (every job, `config show`) that reports an EngineError as one line, without a
    traceback: what went wrong is the user's to fix, not a bug. Every job also takes
    --verbose, which is `--set ray.verbose=true`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--verbose"], is_flag=True,
                                        help="Show Ray Data's own progress tables and the workers' library logs."))

    def invoke(self, ctx: click.Context):
        if ctx.params.pop("verbose", False):
            ctx.params["overrides"] = (*ctx.params.get("overrides", ()), "ray.verbose=true")
        try:
            return super().invoke(ctx)
        except EngineError as exc:
            raise OneLineError(str(exc)) from None


def tables_help(*tables: str) -> str:
    """A job's epilog: the config keys of `tables` with their defaults and meanings, as
    `config show --explain` prints them (click keeps each table's block unwrapped)."""
    from engine.config import Config

    blocks = config_explained(Config(), tables).strip("\n").split("\n\n")
    return "Config keys this job adds (set them in the TOML file or with --set):\n\n" + "\n\n".join(
        "\b\n" + block for block in blocks)


# Jobs are registered lazily-imported modules: `rlaifv --help` stays fast and a job's heavy
# imports (ray, torch, deepspeed) happen only when that job runs.
JOBS = ("iterate", "generate", "train", "sft", "train_rm", "ppo", "bon", "evaluate", "correct")


class _JobGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._available_jobs()))

    def get_command(self, ctx, name):
        if name in self._available_jobs():
            return importlib.import_module(f"jobs.{name}").main
        return super().get_command(ctx, name)

    @staticmethod
    def _available_jobs():
        return [job for job in JOBS if importlib.util.find_spec(f"jobs.{job}") is not None]


@click.group(cls=_JobGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """RLAIF-V engine: AI-feedback preference data for multimodal models, and DPO on it."""


@main.group()
def config() -> None:
    """Inspect run configs."""


@config.command("show", cls=Job)
@config_option
@set_option
@click.option("--explain", is_flag=True,
              help="Print every key with its value, allowed values and meaning instead of TOML.")
def config_show(config_path: str, overrides: tuple[str, ...], explain: bool) -> None:
    """Print the complete config (every key, defaults filled in) after overrides, as TOML."""
    cfg = load_config(config_path, overrides)
    click.echo(config_explained(cfg) if explain else config_to_toml(cfg), nl=False)


@main.group()
def models() -> None:
    """Tiny random-weight models for tests and the embedded default."""


@models.command("build")
@click.argument("names", nargs=-1)
@click.option("--cache-dir", default=".cache/tiny-models", show_default=True, help="Where to build.")
def models_build(names: tuple[str, ...], cache_dir: str) -> None:
    """Build tiny models (default: tiny:llava and tiny:llm) offline and print their paths."""
    from engine.tiny_models import resolve_model_path

    for name in names or ("tiny:llava", "tiny:llm"):
        click.echo(f"{name}\t{resolve_model_path(name, cache_dir)}")
