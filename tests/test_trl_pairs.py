"""The engine's pair shards train in TRL as written: DPOTrainer on `load_dataset(pairs dir)`,
no conversion, and TRL's reference log-probs of those pairs equal the stored ones (one
encoding: the whole conversation through the model's chat template)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_models import noise_image, noise_png

from engine.backends.base import Prompt
from engine.config import ModelConfig, PairConfig
from engine.storage import write_parquet_atomic
from engine.writer import finalize_pairs, pair_rows

TOY_POLICY = Path(__file__).resolve().parent.parent / "models" / "toy-policy"
ANSWERS = ["There is a red circle in the top left.", "There is a blue square in the center.",
           "There are two green stars.", "There is a yellow cross."]


def write_pairs(model_dir: str, out: str) -> str:
    """Four pairs written by the writer, with reference log-probs from the hf backend (as the pair stage)."""
    from engine.backends.hf import HFBackend

    rows = [{"id": f"inst-{i}", "prompt": "Describe the image.", "image": noise_png(i), "answers": ANSWERS,
             "scores": [0, -1, -2, -3], "n_claims": [1, 1, 2, 3], "answer_seeds": [1, 2, 3, 4],
             "pairs": [{"chosen": i % 2, "rejected": 2 + i % 2}]} for i in range(4)]
    backend = HFBackend(model_dir, ModelConfig(path=model_dir), device="cpu")
    for i, row in enumerate(rows):
        pair = row["pairs"][0]
        logps = backend.logprobs([Prompt(noise_image(i), row["prompt"])] * 2,
                                 [ANSWERS[pair["chosen"]], ANSWERS[pair["rejected"]]])
        pair["ref_chosen_logps"], pair["ref_rejected_logps"] = logps[0][0], logps[1][0]
    backend.close()
    write_parquet_atomic(pair_rows(rows, iteration=0, policy_id=model_dir), f"{out}/candidates/part-a.parquet")
    finalize_pairs(out, PairConfig(length_balance=False))
    return f"{out}/pairs"


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, tiny_llava_dir):
    return write_pairs(tiny_llava_dir, str(tmp_path_factory.mktemp("iteration")))


@pytest.mark.parametrize("policy", ["tiny:llava", "toy policy"])
def test_dpo_trainer_trains_on_the_pair_shards_and_agrees_on_the_reference(policy, pairs_dir, tiny_llava_dir,
                                                                           tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    model_dir = tiny_llava_dir if policy == "tiny:llava" else str(TOY_POLICY)
    if policy != "tiny:llava":
        pairs_dir = write_pairs(model_dir, str(tmp_path / "iteration"))
    dataset = load_dataset(pairs_dir, split="train")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    # fp32 as the hf backend scored (TRL's DPOConfig defaults to bf16 autocast). TRL computes the
    # reference itself for vision data (it refuses precompute_ref_log_probs there).
    args = DPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                     report_to="none", use_cpu=True, bf16=False, precompute_ref_log_probs=False,
                     gradient_checkpointing=False,
                     save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=AutoProcessor.from_pretrained(model_dir))

    batch = trainer.data_collator([dict(row) for row in dataset.remove_columns(
        [c for c in dataset.column_names if c not in ("prompt", "chosen", "rejected", "images")])])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, batch)
    stored = torch.tensor(list(dataset["ref_chosen_logps"]) + list(dataset["ref_rejected_logps"]))
    difference = (torch.cat([ref_chosen, ref_rejected]).double() - stored).abs().max().item()
    print(f"{policy}: max |stored - TRL reference log-prob| = {difference:.2e} nats")
    assert difference < 1e-3

    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss == loss for loss in losses)


def test_trl_dpo_command_trains_on_the_pair_shards(pairs_dir, tiny_llava_dir, tmp_path):
    """The command of the pairs' README.md, with CPU settings."""
    trl = Path(sys.executable).parent / "trl"
    command = [str(trl), "dpo", "--model_name_or_path", tiny_llava_dir, "--dataset_name", pairs_dir,
               "--output_dir", str(tmp_path), "--per_device_train_batch_size", "2", "--max_steps", "1",
               "--use_cpu", "--bf16", "False", "--gradient_checkpointing", "False", "--report_to", "none",
               "--save_strategy", "no"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.safetensors").exists()
