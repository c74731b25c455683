"""Session-scoped tiny models and backends shared by the chat and backend tests.

conftest.py registers this module as a plugin, so every test can ask for its fixtures;
import only the plain helpers (noise_image, QUESTIONS). `model_cache` comes from conftest.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path

QUESTIONS = [
    "Is there a red circle in the image? Please answer yes or no.",
    "Is it blue?",
    "Are there two green squares in the top left? Please answer yes or no.",
    "Is the yellow star in the center of the image?",
    "Yes or no: is there a triangle?",
]


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A deterministic RGB image whose pixels differ per seed, so image inputs matter."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def noise_png(seed: int) -> bytes:
    """noise_image(seed) as PNG bytes, as an image column holds it."""
    buffer = io.BytesIO()
    noise_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_llava_dir(model_cache: str) -> str:
    return resolve_model_path("tiny:llava", model_cache)


@pytest.fixture(scope="session")
def reward_model_dir(tiny_llava_dir: str, tmp_path_factory) -> str:
    """The tiny LLaVA with a seeded head, saved as jobs/train_rm.py exports a reward model; the
    head is scaled up and given a bias so that its rewards differ visibly between tokens."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from engine.reward_model import with_reward_head

    out = tmp_path_factory.mktemp("reward-model") / "model"
    model = with_reward_head(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir), tiny_llava_dir, seed=3)
    with torch.no_grad():
        model.score.weight.mul_(50)
        model.score.bias.fill_(0.2)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_llava_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_llm_dir(model_cache: str) -> str:
    return resolve_model_path("tiny:llm", model_cache)


@pytest.fixture(scope="session")
def hf_llava(tiny_llava_dir: str):
    from engine.backends.hf import HFBackend

    # batch_size 2: the tests' handfuls of questions and rows run in several chunks.
    backend = HFBackend(tiny_llava_dir, ModelConfig(path=tiny_llava_dir, batch_size=2), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_llm(tiny_llm_dir: str):
    from engine.backends.hf import HFBackend

    backend = HFBackend(tiny_llm_dir, ModelConfig(path=tiny_llm_dir), device="cpu")
    yield backend
    backend.close()
