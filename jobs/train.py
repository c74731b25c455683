"""DPO / DDPO training of one model on pair shards (Ray Train + DeepSpeed), exported in
Hugging Face format.

Locally:  python jobs/train.py --pairs runs/smoke/iter_0/pairs --init tiny:llava --out /tmp/dpo
Cluster:  ray job submit --working-dir . -- python jobs/train.py --config configs/<real>.toml --pairs s3://...
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/train.py: import the project from the repo root)

import click

from engine.cli import Job, column_map, config_option, echo_training, set_option, training_options
from engine.config import load_config
from engine.preflight import policy_at, preflight
from engine.schemas import CORRECTION_SCHEMA

CORRECTION_ROLES = tuple(name for name in CORRECTION_SCHEMA.names if name != "read_error")


@click.command("train", cls=Job)
@config_option
@set_option
@click.option("--pairs", "pairs_dir", default=None,
              help="Directory (local or fsspec URL) of Parquet pair shards, e.g. <run>/iter_0/pairs.")
@click.option("--corrections", default=None,
              help="Instead of --pairs: an RLHF-V style correction file (.parquet or .jsonl, "
                   "engine.schemas.CORRECTION_SCHEMA: image or image_uri, question, chosen (corrected) and "
                   "rejected (original)). It is turned into pair shards under <out>/pairs (reference "
                   "log-probs from --init) first; unusable rows go to <out>/rejects.")
@click.option("--column", "columns", multiple=True, metavar="ROLE=COLUMN",
              help=f"Column name of a correction file role ({', '.join(CORRECTION_ROLES)}), "
                   "e.g. --column question=prompt (repeatable).")
@click.option("--init", "init_model", default=None,
              help="Model to train: a Hugging Face model dir or tiny:llava (default: models.policy.path).")
@click.option("--out", "out_dir", default=None,
              help="Output dir or fsspec URL: ds_checkpoint/, model/ (the trained model) and, written last "
                   "once training is complete, train_result.json (default: <run.output_dir>/<run.name>/train).")
@training_options
def main(config_path, overrides, pairs_dir, corrections, columns, init_model, out_dir, fresh, max_steps):
    """Train with the [train] section of the config (loss dpo or ddpo, beta, gamma, learning rate,
    ZeRO stage, workers, ...) and print the per-step metrics. For DDPO, --set train.preset=
    rlhfv-released (the default values: RLHF-V's released code) or rlhfv-paper (its paper's
    formula) sets gamma, beta, ddpo_mask and ddpo_normalise, except those set explicitly.
    Re-running the same command resumes from the latest checkpoint; a finished run only
    prints its result."""
    if (pairs_dir is None) == (corrections is None):
        raise click.UsageError("give exactly one of --pairs and --corrections")
    cfg = load_config(config_path, overrides)
    inputs = {"--pairs": pairs_dir} if pairs_dir is not None else {"--corrections": corrections}
    preflight(cfg, inputs, policy_at(cfg, "--init", init_model))  # before Ray starts or any model loads
    from engine.ray_runtime import init_ray
    from engine.storage import join
    from train.trainer import train_dpo

    init_model = init_model or cfg.models.policy.path
    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "train")
    init_ray(cfg.ray)
    if corrections is not None:
        pairs_dir = _corrections_to_pairs(cfg, corrections, column_map(columns, CORRECTION_ROLES), init_model, out_dir)
    result = train_dpo(cfg, pairs_dir, init_model, out_dir, resume=not fresh, max_steps=max_steps)
    echo_training(result, out_dir, f"trained {result.steps} steps; model written to {result.model_dir}")


def _corrections_to_pairs(cfg, url: str, columns: dict[str, str], init_model: str, out_dir: str) -> str:
    import msgspec

    from engine.storage import join, write_parquet_atomic
    from train.data import pairs_from_corrections, read_correction_table

    # The policy's backend settings (backend, dtype, ...) with --init's model.
    init_cfg = msgspec.structs.replace(cfg.models.policy, path=init_model)
    pairs, rejects = pairs_from_corrections(read_correction_table(url, columns), init_cfg, cfg.models.cache_dir,
                                            validate=cfg.validate)
    pairs_dir = join(out_dir, "pairs")
    write_parquet_atomic(pairs, join(pairs_dir, "corrections.parquet"))
    if rejects.num_rows:
        write_parquet_atomic(rejects, join(out_dir, "rejects", "corrections.parquet"))
        click.echo(f"{rejects.num_rows} correction row(s) diverted to {join(out_dir, 'rejects')}")
    return pairs_dir


if __name__ == "__main__":
    main()
