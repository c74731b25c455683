"""Train the toy policy from scratch on synthetic scenes, deterministically on CPU.

Supervised next-token training on scene descriptions, some misnaming an object, and clean
yes/no existence questions (toyworld.sft_data), in phases: descriptions first (they
teach the model to see the cells), then yes/no questions on scenes of one, two and up to four
objects (a model that has not yet learned to compare one object with the question does not
learn to search several). The result samples descriptions that name objects the scene lacks
but answers yes/no about them well.

    python -m toyworld.train_policy --seed 0 --out models/toy-policy

made the committed models/toy-policy (README.md has its held-out figures). A re-run repeats
its bytes only on a CPU whose kernels round as the training machine's did.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import click
import torch

from engine import chat
from engine.tiny_models import build_llava
from toyworld.model import TOY_SIZES
from toyworld.sft_data import examples

# (optimizer steps, at most this many objects per scene, share of descriptions in a batch,
#  share of those descriptions that misname one object)
PHASES = ((500, 4, 0.5, 0.0), (500, 1, 0.15, 0.0), (500, 2, 0.15, 0.0), (700, 4, 0.15, 0.5))
LEARNING_RATE = 3e-4
WARMUP_STEPS = 50


def first_phase_schedule(steps: int):
    """Warm-up, then a cosine decay to half the rate at the phase's end. Without the decay the
    model still describes well but then never learns to answer yes/no."""
    return lambda k: min(1.0, (k + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * k / (2 * steps)))


def train_policy(seed: int, out: str | Path, phases=PHASES, batch_size: int = 32, log=print) -> Path:
    """Train and save the model directory (weights, config, processor) to `out`."""
    torch.manual_seed(seed)
    model, processor = build_llava(TOY_SIZES, seed)
    model.train()
    rng = random.Random(seed)
    start, step = time.perf_counter(), 0
    for phase, (steps, max_objects, describe_share, caption_noise) in enumerate(phases):
        # A fresh optimizer per phase: Adam's moments from the last task would damp the new one.
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01 if phase == 0 else 0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, first_phase_schedule(steps) if phase == 0 else (lambda k: 1.0))
        for _ in range(steps):
            batch = examples(rng, batch_size, describe_share, max_objects, caption_noise)
            inputs = chat.encode_for_logprobs(processor, [e.image for e in batch], [e.prompt for e in batch],
                                              [e.response for e in batch])
            response_mask = inputs.pop("response_mask")
            sums, counts = chat.sequence_logprobs(model(**inputs).logits, inputs["input_ids"], response_mask)
            loss = -sums.sum() / counts.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0:
                log(f"step {step}  objects <= {max_objects}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s")
    out = Path(out)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@click.command()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, help="Model directory to write.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads (the weights depend on it only through float rounding).")
def main(seed: int, out: str, threads: int) -> None:
    """Train the toy policy and save it to --out."""
    torch.set_num_threads(threads)
    train_policy(seed, out, log=click.echo)


if __name__ == "__main__":
    main()
