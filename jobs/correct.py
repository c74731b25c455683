"""AI corrections (docs/algorithms.md §6): RLHF-V-style correction rows from an iteration's own
feedback, for DDPO without human annotators (`jobs/train.py --corrections`)."""

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (python jobs/correct.py: import the project from the repo root)

import click

from engine.cli import Job, config_option, set_option
from engine.config import load_config


@click.command("correct", cls=Job)
@config_option
@set_option
@click.option("--iteration", type=click.IntRange(min=0), default=0, show_default=True,
              help="The run's iteration whose scored answers are corrected (<run.output_dir>/<run.name>/iter_<k>).")
@click.option("--generation", "generation_dir", default=None,
              help="A generation pass's output directory or fsspec URL instead of the run's iteration.")
@click.option("--out", required=True, help="Corrections file, .parquet or .jsonl (local path or fsspec URL); the "
                                           "answers not corrected go beside it, <OUT without suffix>.rejects.parquet.")
def main(config_path, overrides, iteration, generation_dir, out):
    """Remove from every scored answer the sentences that carry a claim the labeler rejected,
    and write (image, question, original answer, corrected answer, edited spans) rows. The
    pass must have run with split.quote_sentences = true (each claim quotes its sentence).
    The images come from the config's input.path, by instruction id."""
    from engine.correct_pass import run_correct
    from engine.run_dir import RunDir

    cfg = load_config(config_path, overrides)
    generation_dir = generation_dir or RunDir(cfg).iteration_dir(iteration)
    summary = run_correct(cfg, generation_dir, out)
    click.echo(f"wrote {summary['corrections']} corrections to {out}; {summary['diverted']} answers diverted to "
               f"{summary['rejects']} ({summary['reasons']})")


if __name__ == "__main__":
    main()
