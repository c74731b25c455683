"""DPO through Ray Train + DeepSpeed on CPU with the tiny LLaVA: step-0 consistency with the
engine's reference log-probs, learning, export, resume, multi-worker and ZeRO-stage equivalence.

The module's baseline run (1 worker, ZeRO-2, micro-batch 1 x 2 accumulation steps, 8 steps)
is in the default suite; runs that only compare against it are marked slow.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_models import noise_image, noise_png
from safetensors.torch import load_file

from engine.backends.base import Prompt
from engine.config import ModelConfig, load_config
from engine.schemas import PAIR_SCHEMA, turn_text
from engine.writer import pair_record
from train.losses import dpo_loss
from train.trainer import _lr_scheduler, train_dpo

REPO = Path(__file__).resolve().parent.parent
N_PAIRS = 8
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
# Loss curves: same data and global batch (2 pairs) in every variant; measured differences
# are 0 (resume, 2 workers, ZeRO-1) and 2.4e-7 (ZeRO-0) on CPU.
CURVE_TOLERANCE = 1e-5
# Weights after 8 steps at lr 1e-3: resume and 2 workers came out bit-identical on CPU (float32
# rounding is the only allowed source of difference).
WEIGHT_TOLERANCE = 1e-6
# ZeRO-0 and ZeRO-3 run AdamW on unflattened / differently partitioned tensors, so sums round
# differently. Measured max |diff| against ZeRO-2: 8.9e-6 (ZeRO-0), 1.2e-5 (ZeRO-3), both in a
# CLIP k_proj bias, whose true gradient is 0 (a key bias shifts all of a query's scores
# equally): Adam's normalisation turns that tensor's rounding noise into updates. Weights
# elsewhere (median |w| 0.065) moved by up to 4e-3.
ZERO_STAGE_WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, tiny_llava_dir):
    """8 pairs whose reference log-probs the engine's hf backend computed, as the pair stage does."""
    from engine.backends.hf import HFBackend

    chosen = [f"There is a {COLOURS[i % 6]} {SHAPES[i % 4]} in the top left." for i in range(N_PAIRS)]
    rejected = [f"There is a {COLOURS[(i + 1) % 6]} {SHAPES[(i + 2) % 4]} in the center." for i in range(N_PAIRS)]
    backend = HFBackend(tiny_llava_dir, ModelConfig(path=tiny_llava_dir), device="cpu")
    logps = backend.logprobs([Prompt(noise_image(i), "Describe the image.") for i in range(N_PAIRS)] * 2,
                             chosen + rejected)
    backend.close()
    rows = [
        pair_record("Describe the image.", noise_png(i), chosen[i], rejected[i], pair_id=f"pair-{i:02d}",
                    instruction_id=f"inst-{i}", iteration=0, chosen_score=0, rejected_score=-1, chosen_n_claims=1,
                    rejected_n_claims=1, ref_chosen_logps=logps[i][0], ref_rejected_logps=logps[N_PAIRS + i][0],
                    policy_id="tiny:llava", chosen_seed=2 * i, rejected_seed=2 * i + 1)
        for i in range(N_PAIRS)
    ]
    out = tmp_path_factory.mktemp("pairs")
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    pq.write_table(table.slice(0, 5), out / "part-0.parquet")
    pq.write_table(table.slice(5), out / "part-1.parquet")
    return str(out)


def config(model_cache: str, *overrides: str):
    return load_config(None, [
        f"models.cache_dir={model_cache}", "train.learning_rate=1e-3", "train.epochs=2", "train.micro_batch_size=1",
        "train.gradient_accumulation_steps=2", "train.zero_stage=2", "train.checkpoint_every_steps=2",
        *overrides,
    ])


@pytest.fixture(scope="module")
def baseline(ray_local, model_cache, pairs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    return train_dpo(config(model_cache), pairs_dir, "tiny:llava", str(out), resume=False)


def weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def losses(result) -> list[float]:
    return [metrics["loss"] for metrics in result.history]


def assert_same_weights(a: str, b: str, tolerance: float) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    worst = max((first[key] - second[key]).abs().max().item() for key in first)
    assert worst <= tolerance, f"weights differ by up to {worst}"


def test_lr_schedules_after_the_warm_up():
    def rates(*overrides: str) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = _lr_scheduler(optimizer, load_config(None, ["train.warmup_ratio=0.2", *overrides]).train, 10)
        out = []
        for _ in range(11):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cosine, quarter, constant = rates(), rates("train.cosine_cycles=0.25"), rates("train.lr_schedule=constant")
    assert cosine[:3] == quarter[:3] == constant[:3] == [0.0, 0.5, 1.0]  # 2 warm-up steps
    assert cosine[10] == pytest.approx(0.0, abs=1e-12) and quarter[10] == pytest.approx(0.5)
    assert cosine[6] == pytest.approx(0.5) and quarter[6] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert constant[2:] == [1.0] * 9


def test_first_loss_is_log2_because_policy_equals_reference(baseline):
    first = baseline.history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/rejected"]) < 1e-4


def test_sft_weight_adds_the_chosen_nll_to_the_loss(model_cache, pairs_dir, tmp_path, ray_local):
    run = train_dpo(config(model_cache, "train.sft_weight=0.5"), pairs_dir, "tiny:llava", str(tmp_path), resume=False)
    first, last = run.history[0], run.history[-1]
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["nll_loss"], abs=1e-4)  # DPO's part is log 2 at step 0
    assert last["nll_loss"] < first["nll_loss"] and last["rewards/margins"] > 0


def test_run_shape_and_metrics(baseline):
    assert baseline.steps == 8 and baseline.started_at_step == 0  # 8 pairs / 2 per step * 2 epochs
    assert [m["step"] for m in baseline.history] == list(range(1, 9))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "learning_rate", "grad_norm", "truncated_sequences", "epoch"} <= baseline.history[0].keys()
    # warm-up: ceil(0.05 * 8) = 1 step at lr 0, then cosine decay from the peak
    rates = [m["learning_rate"] for m in baseline.history]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1e-3) and rates == [rates[0]] + sorted(rates[1:], reverse=True)
    assert baseline.metrics == baseline.history[-1]


def test_training_lowers_the_loss_on_the_pairs_and_raises_accuracy(baseline, pairs_dir):
    from engine.backends.hf import HFBackend

    table = pa.concat_tables(pq.read_table(path) for path in sorted(Path(pairs_dir).glob("*.parquet")))
    rows = table.to_pylist()
    backend = HFBackend(baseline.model_dir, ModelConfig(path=baseline.model_dir), device="cpu")
    prompts = [Prompt(noise_image(int(row["pair_id"][-2:])), turn_text(row["prompt"])) for row in rows]
    logps = backend.logprobs(prompts * 2, [turn_text(row["chosen"]) for row in rows] +
                             [turn_text(row["rejected"]) for row in rows])
    backend.close()
    policy = torch.tensor([logp for logp, _ in logps], dtype=torch.float64)
    loss, metrics = dpo_loss(policy[:N_PAIRS], policy[N_PAIRS:], torch.tensor(table["ref_chosen_logps"].to_pylist()),
                             torch.tensor(table["ref_rejected_logps"].to_pylist()), beta=0.1)
    assert loss.item() < math.log(2) - 0.1
    assert metrics["rewards/accuracies"].item() >= 0.75
    assert baseline.history[-1]["loss"] < baseline.history[0]["loss"] - 0.1


def test_every_trainable_parameter_changed(baseline, tiny_llava_dir):
    before, after = weights(tiny_llava_dir), weights(baseline.model_dir)
    assert before.keys() == after.keys()  # the init's key layout (vLLM's vision_tower.vision_model.*) is kept
    unchanged = sorted(key for key in before if torch.equal(before[key], after[key]))
    # vision_feature_layer = -2: the CLIP tower's last layer and post-layernorm never reach the LM.
    # Their weight matrices still move by weight decay; their norms and biases (no decay) do not.
    assert all(key.startswith(("vision_tower.vision_model.encoder.layers.1.", "vision_tower.vision_model.post_layernorm"))
               for key in unchanged), unchanged
    assert not any(key.endswith("weight") and before[key].dim() == 2 for key in unchanged)


def test_exported_model_reloads_and_generates(baseline, tiny_llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from engine import chat

    names = {path.name for path in Path(baseline.model_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert (Path(baseline.model_dir) / "chat_template.jinja").read_text() == \
        (Path(tiny_llava_dir) / "chat_template.jinja").read_text()
    processor = AutoProcessor.from_pretrained(baseline.model_dir)
    model = AutoModelForImageTextToText.from_pretrained(baseline.model_dir).eval()
    inputs = chat.encode_prompts(processor, [noise_image(0)], ["Describe the image."])
    output = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 6


def test_a_finished_run_is_returned_not_retrained(baseline, model_cache, pairs_dir):
    out = str(Path(baseline.model_dir).parent)
    again = train_dpo(config(model_cache), pairs_dir, "tiny:llava", out, resume=True)
    assert again == baseline


def test_train_job_help_lists_every_option():
    result = subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--set", "--pairs", "--corrections", "--column", "--init", "--out", "--fresh",
                   "--max-steps"):
        assert option in result.stdout


@pytest.mark.slow
def test_resume_from_the_mid_run_checkpoint_matches_an_uninterrupted_run(baseline, model_cache, pairs_dir, tmp_path):
    cfg = config(model_cache)
    stopped = train_dpo(cfg, pairs_dir, "tiny:llava", str(tmp_path), resume=False, max_steps=2)
    assert stopped.model_dir is None and stopped.steps == 2
    assert (tmp_path / "ds_checkpoint" / "step_00000002").is_dir()
    resumed = train_dpo(cfg, pairs_dir, "tiny:llava", str(tmp_path), resume=True)
    assert resumed.started_at_step == 2 and resumed.steps == 8
    assert resumed.history[:2] == stopped.history
    assert losses(resumed) == pytest.approx(losses(baseline), abs=CURVE_TOLERANCE)
    assert_same_weights(resumed.model_dir, baseline.model_dir, WEIGHT_TOLERANCE)


class _CreatesMarker:
    """Unpickled, it creates `marker`: a stand-in for code in a file swapped into a run bucket."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def two_step_run(ray_local, model_cache, pairs_dir, tmp_path_factory):
    """A run stopped after 2 steps with its checkpoint saved, as a crash leaves it."""
    out = tmp_path_factory.mktemp("two-steps")
    train_dpo(config(model_cache), pairs_dir, "tiny:llava", str(out), resume=False, max_steps=2)
    return out


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_resume_refuses_a_checkpoint_file_that_pickles_code(name, two_step_run, model_cache, pairs_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_step_run, run)  # Ray Train's snapshot names its checkpoints relative to the run
    [target] = (run / "ds_checkpoint").rglob(name)
    marker = tmp_path / "marker"
    torch.save({"module": _CreatesMarker(marker)}, target)
    with pytest.raises(Exception, match=f"refusing to resume from \\S*{name}: it pickles io.open"):
        train_dpo(config(model_cache), pairs_dir, "tiny:llava", str(run), resume=True)
    assert not marker.exists()


@pytest.mark.slow
def test_two_workers_match_one_worker_with_the_same_global_batch(baseline, model_cache, pairs_dir, tmp_path):
    # 2 workers x micro-batch 1 x 1 accumulation step = 1 worker x 1 x 2: the same 2 pairs per step.
    cfg = config(model_cache, "train.num_workers=2", "train.gradient_accumulation_steps=1", "train.cpus_per_worker=0.5")
    two = train_dpo(cfg, pairs_dir, "tiny:llava", str(tmp_path), resume=False)
    assert two.steps == baseline.steps
    assert losses(two) == pytest.approx(losses(baseline), abs=CURVE_TOLERANCE)
    assert_same_weights(two.model_dir, baseline.model_dir, WEIGHT_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 3])
def test_every_zero_stage_gives_the_same_run(stage, baseline, model_cache, pairs_dir, tmp_path):
    run = train_dpo(config(model_cache, f"train.zero_stage={stage}"), pairs_dir, "tiny:llava", str(tmp_path),
                    resume=False)
    assert losses(run) == pytest.approx(losses(baseline), abs=CURVE_TOLERANCE)
    assert_same_weights(run.model_dir, baseline.model_dir, ZERO_STAGE_WEIGHT_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["rlhfv-released", "rlhfv-paper"])
def test_ddpo_starts_at_log2_and_learns(preset, model_cache, pairs_dir, tmp_path, ray_local):
    run = train_dpo(config(model_cache, "train.loss=\"ddpo\"", f"train.preset={preset}"), pairs_dir, "tiny:llava",
                    str(tmp_path), resume=False)
    assert run.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert run.history[-1]["loss"] < math.log(2) - 0.1


@pytest.mark.slow
def test_train_job_on_rlhfv_corrections_with_ddpo(model_cache, tmp_path):
    corrections = tmp_path / "corrections.parquet"
    pq.write_table(pa.table({
        "image": [noise_png(i) for i in range(4)],
        "question": ["Describe the image."] * 4,
        "chosen": [f"There is a {COLOURS[i]} circle in the top left." for i in range(4)],
        "rejected": [f"There is a {COLOURS[i + 1]} circle in the top left." for i in range(4)],
    }), corrections)
    out = tmp_path / "out"
    command = [sys.executable, "jobs/train.py", "--corrections", str(corrections), "--init", "tiny:llava",
               "--out", str(out), "--set", f"models.cache_dir={model_cache}", "--set", 'train.loss="ddpo"',
               "--set", "train.beta=0.5", "--set", "train.epochs=1", "--set", "train.micro_batch_size=2",
               "--set", "ray.num_cpus=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trained 2 steps; model written to {out / 'model'}" in result.stdout
    assert pq.read_table(out / "pairs" / "corrections.parquet").num_rows == 4
    assert (out / "model" / "model.safetensors").exists() and (out / "train_result.json").exists()
