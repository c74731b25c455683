"""Supervised fine-tuning of an MLLM on (image, question, answer) rows, e.g. trustworthy VQA
data or descriptions (docs/algorithms.md §10), with the same Ray Train + DeepSpeed trainer as
DPO: ZeRO 0-3, resume from the latest checkpoint, Hugging Face export.

Locally:  python jobs/sft.py --data vqa.jsonl --init tiny:llava --out /tmp/sft
Cluster:  ray job submit --working-dir . -- python jobs/sft.py --config configs/<real>.toml --data s3://...
"""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/sft.py: import the project from the repo root)

import click

from engine.cli import Job, column_map, config_option, echo_training, set_option, training_options
from engine.config import load_config
from engine.preflight import policy_at, preflight
from engine.schemas import SFT_SCHEMA

SFT_ROLES = tuple(name for name in SFT_SCHEMA.names if name != "read_error")


@click.command("sft", cls=Job)
@config_option
@set_option
@click.option("--data", required=True,
              help="SFT file, .parquet or .jsonl, local or fsspec URL (engine.schemas.SFT_SCHEMA: image bytes "
                   "(base64 in JSONL) or image_uri, question, answer, optional id). Unusable rows go to "
                   "<out>/rejects with their reason.")
@click.option("--column", "columns", multiple=True, metavar="ROLE=COLUMN",
              help=f"Column name of a role ({', '.join(SFT_ROLES)}) in the file, e.g. --column answer=response "
                   "(repeatable).")
@click.option("--init", "init_model", default=None,
              help="Model to fine-tune: a Hugging Face model dir or tiny:<family> (default: models.policy.path).")
@click.option("--out", "out_dir", default=None,
              help="Output dir or fsspec URL: ds_checkpoint/, model/ (the fine-tuned model) and, written last, "
                   "train_result.json (default: <run.output_dir>/<run.name>/sft).")
@training_options
def main(config_path, overrides, data, columns, init_model, out_dir, fresh, max_steps):
    """Fine-tune with the mean NLL of the answer tokens only (the prompt and image tokens are
    context), optimised with the [train] section (learning rate, epochs, batch sizes, ZeRO stage,
    workers, max_length, ...) and augmented as the [sft] section says (none by default; hflip,
    brightness_contrast, crop). Re-running the same command resumes; a finished run only prints
    its result."""
    cfg = load_config(config_path, overrides)
    columns = column_map(columns, SFT_ROLES)
    preflight(cfg, {"--data": data}, policy_at(cfg, "--init", init_model))  # before Ray starts or any model loads
    from engine.errors import PreflightError
    from engine.storage import join, write_parquet_atomic
    from train.sft_data import read_sft_examples
    from train.trainer import train_sft

    init_model = init_model or cfg.models.policy.path
    out_dir = out_dir or join(cfg.run.output_dir, cfg.run.name, "sft")
    examples, rejects = read_sft_examples(data, cfg.validate, columns)
    if rejects.num_rows:
        write_parquet_atomic(rejects, join(out_dir, "rejects", "sft.parquet"))
        click.echo(f"{rejects.num_rows} example(s) diverted to {join(out_dir, 'rejects')}")
    if not examples.num_rows:
        raise PreflightError(f"no usable example in {data}: see {join(out_dir, 'rejects')}")
    result = train_sft(cfg, examples, init_model, out_dir, resume=not fresh, max_steps=max_steps)
    echo_training(result, out_dir,
                  f"trained {result.steps} steps on {examples.num_rows} examples; model written to {result.model_dir}")


if __name__ == "__main__":
    main()
