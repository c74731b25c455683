"""Train the toy policy from scratch on synthetic scenes, deterministically on CPU, with the SFT
job's trainer (jobs/sft.py: train.trainer.train_sft), one call per phase.

Supervised next-token training on scene descriptions, some misnaming an object, and clean
yes/no existence questions (toyworld.sft_data), in phases: descriptions first (they
teach the model to see the cells), then yes/no questions on scenes of one, two and up to four
objects (a model that has not yet learned to compare one object with the question does not
learn to search several). The result samples descriptions that name objects the scene lacks
but answers yes/no about them well.

Every phase's examples are drawn from the seed first, one batch after another as a loop
drawing them on-line would, and written to an SFT Parquet file whose ids sort in that order;
the phase then fine-tunes the previous phase's model on it with an unshuffled batch plan
(train.shuffle = false) and one epoch, so each optimizer step sees the batch drawn for it.
Each call builds a fresh AdamW: Adam's moments from the last task would damp the new one.

    python -m toyworld.train_policy --seed 0 --out /tmp/toy-policy

The committed models/toy-policy was trained by the hand-written torch loop this script
replaced, with the same phases, rates, batches, clipping and example draws; that loop decayed
every parameter in phase 0 (the trainer spares biases and norms) and multiplied its warm-up
into the cosine (the trainer's cosine starts after it), so the weights differ. README.md has
both models' held-out figures. A re-run repeats its bytes only on a CPU whose kernels round as
the training machine's did.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import click
import pyarrow as pa

from engine.config import load_config
from engine.errors import PreflightError
from engine.instruction_io import SFT_EXAMPLES, write_rows
from engine.schemas import SFT_SCHEMA
from engine.tiny_models import build_llava
from toyworld.model import TOY_SIZES
from toyworld.sft_data import examples

# (optimizer steps, at most this many objects per scene, share of descriptions in a batch,
#  share of those descriptions that misname one object)
PHASES = ((500, 4, 0.5, 0.0), (500, 1, 0.15, 0.0), (500, 2, 0.15, 0.0), (700, 4, 0.15, 0.5))
LEARNING_RATE = 3e-4
WARMUP_RATIO = 0.1
# Phase 0 decays along a quarter cosine period, to half the rate at its end. Without the decay
# the model still describes well but then never learns to answer yes/no.
FIRST_PHASE_COSINE_CYCLES = 0.25


def write_phase_examples(rng: random.Random, phase: int, spec: tuple, batch_size: int, url: str) -> None:
    """One phase's examples as an SFT file, drawn batch by batch from `rng`; the ids sort in
    draw order, the order an unshuffled batch plan trains them in."""
    steps, max_objects, describe_share, caption_noise = spec
    rows = [{"id": f"phase{phase}-{step:06d}-{i:04d}", "image": example.png, "question": example.prompt,
             "answer": example.response}
            for step in range(steps)
            for i, example in enumerate(examples(rng, batch_size, describe_share, max_objects, caption_noise))]
    write_rows(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), url, SFT_EXAMPLES)


def phase_overrides(phase: int, seed: int, batch_size: int, threads: int) -> list[str]:
    """The [train] settings of one phase: one worker, one epoch of batch_size-row steps in file
    order; phase 0 warms up, decays and uses weight decay, later phases hold the rate."""
    first = phase == 0
    return [f"run.seed={seed}", f"train.learning_rate={LEARNING_RATE}", "train.epochs=1", "train.shuffle=false",
            f"train.micro_batch_size={batch_size}", "train.gradient_accumulation_steps=1", "train.num_workers=1",
            f"train.cpus_per_worker={threads}", "train.zero_stage=0", "train.gradient_checkpointing=false",
            "train.max_grad_norm=1.0", f"train.weight_decay={0.01 if first else 0.0}",
            f"train.warmup_ratio={WARMUP_RATIO if first else 0.0}",
            f"train.lr_schedule={'cosine' if first else 'constant'}",
            f"train.cosine_cycles={FIRST_PHASE_COSINE_CYCLES}"]


def train_policy(seed: int, out: str | Path, phases=PHASES, batch_size: int = 32, threads: int = 1,
                 work: str | Path | None = None, log=print) -> Path:
    """Train and save the model directory (weights, config, processor) to `out`. Each phase's
    data, checkpoints and model go to <work>/phase-<k> (a temporary directory by default); with
    the same `work`, a re-run of the same call resumes where it stopped."""
    from train.sft_data import read_sft_examples
    from train.trainer import train_sft

    with tempfile.TemporaryDirectory(prefix="toy-policy-") as scratch:
        work = Path(work or scratch)
        model_dir = work / "init"
        model, processor = build_llava(TOY_SIZES, seed)
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        rng = random.Random(seed)
        for phase, spec in enumerate(phases):
            phase_dir = work / f"phase-{phase}"
            data = str(phase_dir / "examples.parquet")
            write_phase_examples(rng, phase, spec, batch_size, data)
            cfg = load_config(None, phase_overrides(phase, seed, batch_size, threads))
            rows, rejects = read_sft_examples(data, cfg.validate)
            if rejects.num_rows:
                raise PreflightError(f"{rejects.num_rows} toy example(s) of {data} rejected: "
                                     f"{rejects['reason'][0]}: {rejects['detail'][0]}")
            result = train_sft(cfg, rows, str(model_dir), str(phase_dir))
            log(f"phase {phase}: {result.steps} steps on {rows.num_rows} examples, last loss "
                f"{result.metrics['loss']:.4f}, {result.wall_seconds:.0f} s")
            model_dir = Path(result.model_dir)
        shutil.copytree(model_dir, out, dirs_exist_ok=True)
    return Path(out)


@click.command()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, help="Model directory to write.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads of the training worker (the weights depend on it only through float "
                   "rounding).")
@click.option("--work", default=None,
              help="Keep each phase's examples, checkpoints and model here (default: a temporary directory); "
                   "re-running the same command with it resumes.")
@click.option("--steps-scale", type=float, default=1.0, show_default=True,
              help="Multiply every phase's steps (at least 1 each): a shorter run for checks, not the recipe.")
def main(seed: int, out: str, threads: int, work: str | None, steps_scale: float) -> None:
    """Train the toy policy and save it to --out."""
    phases = tuple((max(1, round(steps * steps_scale)), *rest) for steps, *rest in PHASES)
    click.echo(f"toy policy written to {train_policy(seed, out, phases, threads=threads, work=work, log=click.echo)}")


if __name__ == "__main__":
    main()
