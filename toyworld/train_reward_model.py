"""Train the toy world's token-level reward model, models/toy-reward-model, with the reward-model
job's trainer (jobs/train_rm.py: train.trainer.train_reward_model), deterministically on CPU.

Its labels are RLHF-V's, from the toy policy's own descriptions of seeded scenes corrected
sentence by sentence from each scene's truth (toyworld.corrections, as a human annotator
would): the original answer's tokens before the first edit good, the first edited span bad, the
corrected answer's tokens through the fix good (train/token_labels.py). The head starts on the
toy policy itself, so the reward model reads answers with the policy's own tokenizer, and
configs/toyworld_ppo.toml's value head starts from it.

    python -m toyworld.train_reward_model --out models/toy-reward-model
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from engine.cli import Job, set_option
from engine.config import load_config
from engine.storage import write_json_atomic
from toyworld.run import TOYWORLD_CONFIG, seed_config

CORRECTIONS = 512
SEED = 0
# The toy world's [train] with the reward model's own rate and length. At 1e-4 for 2 epochs
# the held-out AUC was 0.78; at 3e-4 for 4 epochs 0.93 (token accuracy 0.95 -> 0.97).
RM_OVERRIDES = ("train.learning_rate=3e-4", "train.epochs=4", "train.sft_weight=0.0", "rm.heldout_share=0.1")


def train_toy_reward_model(out: str | Path, n_corrections: int = CORRECTIONS, seed: int = SEED,
                           overrides: tuple[str, ...] = (), work: str | Path | None = None, log=print) -> dict:
    """Train, copy the reward model to `out` (with rm_metrics.json: the held-out token accuracy
    and AUC), and return those metrics. With the same `work`, a re-run resumes."""
    from transformers import AutoProcessor

    from engine.errors import PreflightError
    from train.rm_data import heldout_split
    from train.rm_labels import correction_rm_rows
    from train.trainer import train_reward_model
    from toyworld.corrections import correction_rows

    cfg = seed_config(load_config(TOYWORLD_CONFIG, (*RM_OVERRIDES, *overrides)), seed, "toy-reward-model")
    policy = cfg.models.policy.path
    with tempfile.TemporaryDirectory(prefix="toy-rm-") as scratch:
        work = Path(work or scratch)
        corrections, _ = correction_rows(cfg, n_corrections, seed)
        rows, rejects = correction_rm_rows(corrections, AutoProcessor.from_pretrained(policy), cfg.validate)
        if not rows.num_rows:
            raise PreflightError(f"none of {n_corrections} toy corrections gave token labels")
        train_rows, heldout = heldout_split(rows, cfg.rm.heldout_share, seed)
        result = train_reward_model(cfg, train_rows, heldout, policy, str(work / "rm"))
        metrics = {"corrections": n_corrections, "label_rows": rows.num_rows, "diverted": rejects.num_rows,
                   "train_rows": train_rows.num_rows, "steps": result.steps, **result.evaluation}
        log(f"reward model: {result.steps} steps on {train_rows.num_rows} label rows; held-out "
            + "  ".join(f"{key}={value:.4g}" for key, value in result.evaluation.items()))
        shutil.copytree(result.model_dir, out, dirs_exist_ok=True)
    write_json_atomic(metrics, str(Path(out) / "rm_metrics.json"))
    return metrics


@click.command(cls=Job)
@set_option
@click.option("--out", default="models/toy-reward-model", show_default=True, help="Where the reward model goes.")
@click.option("--corrections", "n_corrections", type=click.IntRange(min=2), default=CORRECTIONS, show_default=True,
              help="Toy scenes described by the toy policy and corrected: the label source.")
@click.option("--seed", type=click.IntRange(min=0), default=SEED, show_default=True)
@click.option("--work", default=None, help="Keep the corrections, checkpoints and export here (resumable).")
def main(overrides, out, n_corrections, seed, work):
    """Train the toy reward model; extra --set overrides apply on top of configs/toyworld.toml."""
    from engine.ray_runtime import init_ray

    init_ray(load_config(TOYWORLD_CONFIG, overrides).ray)
    train_toy_reward_model(out, n_corrections, seed, tuple(overrides), work, log=click.echo)


if __name__ == "__main__":
    main()
