"""The dataset card (README.md) of an iteration's pairs/ directory: what each column is, how
the pairs were made and how to train on them, so the directory stands alone as a Hugging Face
dataset. Its YAML header names the shards, so `load_dataset` never reads a temp file of an
unfinished write."""

from __future__ import annotations

import hashlib
import json

from engine.config import Config, config_to_dict
from engine.storage import join, write_bytes_atomic

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: part-*.parquet
---
# RLAIF-V preference pairs, iteration {iteration}

{pairs} pairs ({dropped} candidates dropped by length balancing) made by the RLAIF-V engine
from the answers of the policy `{policy_id}`, config hash `{config_hash}` (sha256 of the
run's config as JSON, first 16 hex digits; the config is in the run's run.json).

Each instruction's answers were sampled from the policy, split into claims, each claim checked
by the labeler as a yes/no question about the image; an answer scores minus its rejected
claims, and pairs join answers whose scores differ by at least {min_score_gap}.

## Columns

| column | what it is |
|---|---|
| pair_id | stable id of the pair (iteration, instruction, answer indices) |
| instruction_id | id of the input row |
| iteration | the engine iteration that made the pair |
| images | the instruction's image (one Image, none for a text-only prompt) |
| prompt | the user turn: `[{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": ...}}]}}]` |
| chosen / rejected | the preferred / dispreferred answer: `[{{"role": "assistant", "content": [{{"type": "text", "text": ...}}]}}]` |
| chosen_score / rejected_score | minus the number of the answer's claims the labeler rejected |
| chosen_n_claims / rejected_n_claims | the answer's claim count |
| ref_chosen_logps / ref_rejected_logps | the policy's summed log-probability of the answer (its end-of-turn token included), the whole conversation rendered by the policy's chat template: the DPO reference |
| policy_id | the policy that answered and gave the reference log-probs |
| chosen_seed / rejected_seed | the sampling seed of each answer |

## Training

With the engine: `python jobs/train.py --pairs <this directory> --init <policy dir> --out <dir>`.

With TRL, as is (the policy's directory as the model; TRL computes the reference log-probs
itself, as it does for every vision dataset):

    trl dpo --model_name_or_path <policy dir> --dataset_name <this directory> \\
        --output_dir <out> --per_device_train_batch_size 2
"""


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def write_pair_card(out_dir: str, cfg: Config, iteration: int, policy_id: str, balance: dict) -> None:
    """pairs/README.md for finalize_pairs' result `balance`."""
    card = CARD.format(
        iteration=iteration,
        pairs=balance["pairs"],
        dropped=balance["dropped_length_balance"],
        policy_id=policy_id,
        config_hash=config_hash(cfg),
        min_score_gap=cfg.pair.min_score_gap,
    )
    write_bytes_atomic(join(out_dir, "pairs", "README.md"), card.encode())
