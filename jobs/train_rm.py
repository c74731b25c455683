"""The token-level reward model (docs/algorithms.md §9): the policy with a scalar head on every
position, fitted by binary cross-entropy to per-token labels from corrections and from the
engine's own AI feedback, with the same Ray Train + DeepSpeed trainer as DPO (ZeRO 0-3, resume,
Hugging Face export; the head beside it, engine.reward_model).

Locally:  python jobs/train_rm.py --corrections corrections.parquet --init tiny:llava --out /tmp/rm
Cluster:  ray job submit --working-dir . -- python jobs/train_rm.py --config configs/<real>.toml \\
              --generation s3://.../iter_0 --out s3://.../rm
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/train_rm.py: import the project from the repo root)

import click

from engine.cli import Job, column_map, config_option, echo_training, set_option, training_options
from engine.config import load_config
from engine.preflight import policy_at, preflight
from engine.schemas import CORRECTION_SCHEMA

CORRECTION_ROLES = tuple(name for name in CORRECTION_SCHEMA.names if name != "read_error")


@click.command("train_rm", cls=Job)
@config_option
@set_option
@click.option("--corrections", default=None,
              help="RLHF-V style correction file, .parquet or .jsonl (engine.schemas.CORRECTION_SCHEMA: image or "
                   "image_uri, question, chosen (corrected), rejected (original)): the original answer's tokens "
                   "before the first edit are good, the first edited span bad, the corrected answer's tokens "
                   "through the fix good, later tokens unlabelled.")
@click.option("--column", "columns", multiple=True, metavar="ROLE=COLUMN",
              help=f"Column name of a correction file role ({', '.join(CORRECTION_ROLES)}), "
                   "e.g. --column question=prompt (repeatable).")
@click.option("--generation", "generation_dir", default=None,
              help="A generation pass's directory or fsspec URL (e.g. <run.output_dir>/<run.name>/iter_0) whose "
                   "claims/ give AI feedback: the sentences a rejected claim quotes are bad, the others good. The "
                   "pass must have run with split.quote_sentences = true; the images come from input.path.")
@click.option("--init", "init_model", default=None,
              help="Model to put the head on: a Hugging Face model dir, tiny:<family>, or a reward model this job "
                   "exported, whose head is trained on (default: models.policy.path). Its tokenizer labels the "
                   "tokens.")
@click.option("--out", "out_dir", default=None,
              help="Output dir or fsspec URL: rm_rows/ (the labelled rows, engine.schemas.RM_SCHEMA), rejects/ "
                   "(rows that gave no labels, with their reason), ds_checkpoint/, model/ (the reward model) and, "
                   "written last, train_result.json (default: <run.output_dir>/<run.name>/rm).")
@training_options
def main(config_path, overrides, corrections, columns, generation_dir, init_model, out_dir, fresh, max_steps):
    """Label every answer's tokens from --corrections and/or --generation, hold out rm.heldout_share of
    them, and train with the [train] section (learning rate, epochs, batch sizes of label rows, ZeRO
    stage, workers, max_length, ...): the loss is the mean binary cross-entropy of the head's logit
    at each labelled token, token_accuracy is logged beside it, and the held-out tokens' eval/loss,
    eval/token_accuracy and eval/auc are printed after the last step. Re-running the same command
    resumes; a finished run only prints its result."""
    if corrections is None and generation_dir is None:
        raise click.UsageError("give --corrections, --generation or both")
    cfg = load_config(config_path, overrides)
    columns = column_map(columns, CORRECTION_ROLES)
    inputs = {key: value for key, value in (("--corrections", corrections), ("--generation", generation_dir))
              if value is not None}
    if generation_dir is not None:
        inputs["input.path"] = cfg.input.path  # the images of the pass's instructions
    preflight(cfg, inputs, policy_at(cfg, "--init", init_model))  # before Ray starts or any model loads
    from engine.errors import PreflightError
    from engine.storage import join
    from train.rm_data import heldout_split
    from train.trainer import train_reward_model

    init_model = init_model or cfg.models.policy.path
    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "rm")
    rows = _label_rows(cfg, corrections, columns, generation_dir, init_model, out_dir)
    if not rows.num_rows:
        raise PreflightError(f"no answer got a label: see {join(out_dir, 'rejects')}")
    train_rows, heldout = heldout_split(rows, cfg.rm.heldout_share, cfg.run.seed)
    if not train_rows.num_rows:
        raise PreflightError(f"rm.heldout_share = {cfg.rm.heldout_share} held out all {rows.num_rows} label rows")
    result = train_reward_model(cfg, train_rows, heldout, init_model, out_dir, resume=not fresh, max_steps=max_steps)
    echo_training(result, out_dir, f"trained {result.steps} steps on {train_rows.num_rows} label rows "
                                   f"({heldout.num_rows} held out); reward model written to {result.model_dir}")
    if result.evaluation:
        click.echo("held-out: " + "  ".join(f"{key}={value:.4g}" for key, value in result.evaluation.items()))


def _label_rows(cfg, corrections, columns, generation_dir, init_model, out_dir):
    """RM_SCHEMA rows of every source, written to <out>/rm_rows; rows that gave no labels go to
    <out>/rejects with their reason."""
    import pyarrow as pa
    from transformers import AutoProcessor

    from engine.correct_pass import instruction_images, scored_claims
    from engine.errors import PreflightError
    from engine.storage import join, write_parquet_atomic
    from engine.tiny_models import resolve_model_path
    from train.data import read_correction_table, repeated_ids
    from train.rm_labels import correction_rm_rows, feedback_rm_rows

    processor = AutoProcessor.from_pretrained(resolve_model_path(init_model, cfg.models.cache_dir))
    parts = []
    if corrections is not None:
        parts.append(correction_rm_rows(read_correction_table(corrections, columns), processor, cfg.validate))
    if generation_dir is not None:
        claims = scored_claims(generation_dir)
        images = instruction_images(cfg, set(claims["instruction_id"].to_pylist()))
        parts.append(feedback_rm_rows(claims, images, processor, cfg.validate))
    rows, rejects = (pa.concat_tables(tables) for tables in zip(*parts))
    repeated = repeated_ids(rows["row_id"].to_pylist())
    if repeated:
        raise PreflightError(f"label rows repeat an id (e.g. {repeated[0]!r}): do the sources share correction ids?")
    write_parquet_atomic(rows, join(out_dir, "rm_rows", "rows.parquet"))
    if rejects.num_rows:
        write_parquet_atomic(rejects, join(out_dir, "rejects", "rm_rows.parquet"))
        click.echo(f"{rejects.num_rows} answer(s) diverted to {join(out_dir, 'rejects')}")
    return rows


if __name__ == "__main__":
    main()
