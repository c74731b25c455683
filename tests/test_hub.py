"""Hub ids as model paths, offline: the tiny LLaVA laid out as a Hugging Face cache entry
(models--org--name/refs/main + snapshots/<commit>/) is resolved, preflighted, trained on
and exported under its hub id, as configs/a100.toml names its policy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_models import noise_image

from engine.config import ModelConfig
from engine.errors import PreflightError
from engine.preflight import check_model_path
from engine.tiny_models import resolve_model_path
from train.export import safetensors_keys

REPO = Path(__file__).resolve().parent.parent
REPO_ID = "tiny-org/tiny-llava"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llava_dir) -> Path:
    """An HF_HUB_CACHE holding REPO_ID as huggingface_hub lays out a download (files are
    copied where the hub would link them to blobs/; the offline lookup reads only refs/ and
    snapshots/)."""
    cache = tmp_path_factory.mktemp("hf-hub-cache")
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_llava_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def test_a_hub_id_resolves_to_its_cached_snapshot(offline_hub, model_cache):
    assert resolve_model_path(REPO_ID, model_cache) == str(offline_hub / f"models--tiny-org--tiny-llava/snapshots/{COMMIT}")


def test_preflight_offline_accepts_a_cached_hub_id_and_names_a_missing_one(offline_hub):
    check_model_path("models.policy.path", ModelConfig(path=REPO_ID))
    with pytest.raises(PreflightError, match="'tiny-org/absent'.*hub access is off"):
        check_model_path("models.policy.path", ModelConfig(path="tiny-org/absent"))


@pytest.mark.slow
def test_train_job_trains_and_exports_a_hub_id_policy_offline(hub_cache, tmp_path):
    """jobs/train.py in its own process (its Ray workers inherit the cache location): the
    reference log-probs (hf backend), the training workers and the export all open REPO_ID."""
    corrections = tmp_path / "corrections.parquet"
    images = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        noise_image(i).save(path)
        images.append(path.read_bytes())
    pq.write_table(pa.table({
        "image": images, "question": ["Describe the image."] * 2,
        "chosen": ["There is a red circle in the top left.", "There is a blue square in the center."],
        "rejected": ["There is a green star in the top left.", "There is a red star in the center."],
    }), corrections)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "jobs/train.py", "--corrections", str(corrections), "--init", REPO_ID,
               "--out", str(out), "--set", "train.epochs=1", "--set", "train.micro_batch_size=2",
               "--set", "ray.num_cpus=2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trained 1 steps; model written to {out / 'model'}" in result.stdout

    from transformers import AutoModelForImageTextToText, AutoProcessor

    snapshot = hub_cache / f"models--tiny-org--tiny-llava/snapshots/{COMMIT}"
    assert safetensors_keys(out / "model") == safetensors_keys(snapshot)
    assert (out / "model" / "chat_template.jinja").read_text() == (snapshot / "chat_template.jinja").read_text()
    AutoProcessor.from_pretrained(out / "model")
    AutoModelForImageTextToText.from_pretrained(out / "model")
