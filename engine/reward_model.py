"""The token-level reward model (docs/algorithms.md §9): a Hugging Face MLLM (or text LLM) whose
last hidden state feeds a linear head at every position; the head's output at a token is that
token's reward, the log-odds that the token is good.

On disk it is the model's own Hugging Face directory, which loads wherever a policy does (its
LM head is kept, untrained), plus HEAD_FILE with the head as `score.weight` [1, hidden] and
`score.bias` [1]. The head lies in a subdirectory because vLLM loads every *.safetensors file
at the top of a model directory and refuses tensors its model lacks. This module is the one
place that builds, loads, saves and runs it (training: train/objectives.py; scoring:
`score_tokens`; serving on vLLM: `vllm_view`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, PreTrainedModel

from engine import chat
from engine.reward_layout import HEAD_FILE, VLLM_HEAD_PREFIXES

_HEAD_PREFIX, _BACKBONE_PREFIX = "score.", "backbone."


class TokenRewardModel(torch.nn.Module):
    def __init__(self, backbone: PreTrainedModel, score: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone, self.score = backbone, score

    @property
    def config(self):
        return self.backbone.config

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """[B, T] rewards, one per position, from the model inputs engine.chat encodes."""
        hidden = self.backbone.base_model(**inputs, use_cache=False).last_hidden_state
        return self.score(hidden).squeeze(-1)

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                        **kwargs: Any) -> None:
        """The backbone with its own save_pretrained (kwargs passed on), the head beside it;
        `state_dict`, when given, holds this module's keys (a gathered ZeRO-3 state)."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        backbone = {key.removeprefix(_BACKBONE_PREFIX): value for key, value in state_dict.items()
                    if key.startswith(_BACKBONE_PREFIX)}
        self.backbone.save_pretrained(directory, state_dict=backbone, **kwargs)
        head = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()
                if key.startswith(_HEAD_PREFIX)}
        head_path = Path(directory) / HEAD_FILE
        head_path.parent.mkdir(exist_ok=True)
        save_file(head, str(head_path))


def with_reward_head(backbone: PreTrainedModel, model_dir: str, seed: int) -> TokenRewardModel:
    """`backbone` with model_dir's head, or a new one when model_dir has none (a policy):
    weights drawn with `seed` from a normal of standard deviation 1 / (hidden + 1), as OpenRLHF
    starts its reward and value heads, and bias 0. The LM head plays no part in a reward;
    unless it shares its weights with the input embeddings it is frozen, which spares its
    optimizer state."""
    hidden = backbone.config.get_text_config().hidden_size
    score = torch.nn.Linear(hidden, 1, dtype=backbone.dtype)
    head_path = Path(model_dir) / HEAD_FILE
    if head_path.exists():
        saved = load_file(str(head_path))
        score.load_state_dict({key.removeprefix(_HEAD_PREFIX): value for key, value in saved.items()})
    else:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            score.weight.copy_(torch.randn(score.weight.shape, generator=generator) / (hidden + 1))
            score.bias.zero_()
    output, embeddings = backbone.get_output_embeddings(), backbone.get_input_embeddings()
    if output is not None and output.weight is not embeddings.weight:
        output.requires_grad_(False)
    return TokenRewardModel(backbone, score)


def load_reward_model(model_dir: str, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> tuple[TokenRewardModel, Any]:
    """(the exported reward model in eval mode, its processor or tokenizer) of a directory
    jobs/train_rm.py wrote."""
    if not (Path(model_dir) / HEAD_FILE).exists():
        raise FileNotFoundError(f"{model_dir} has no {HEAD_FILE}: it is not a reward model jobs/train_rm.py exported")
    processor = AutoProcessor.from_pretrained(model_dir)
    backbone = chat.load_model(model_dir, processor, dtype)
    return with_reward_head(backbone, model_dir, seed=0).to(device).eval(), processor


def vllm_view(model_dir: str | Path, view: str | Path) -> Path:
    """model_dir as vLLM's pooling runner serves it as a token classifier, built in `view`:
    its files linked, a config with one label (top level and text config, which vLLM reads for
    the converted language model) and the head at the top, renamed to where vLLM's adapter puts
    the score layer. The export itself cannot be served: vLLM would read its default two labels
    and miss the head in its subdirectory."""
    model_dir, view = Path(model_dir), Path(view)
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in VLLM_HEAD_PREFIXES:
        raise ValueError(f"vLLM's reward serving is verified for model types {sorted(VLLM_HEAD_PREFIXES)}, "
                         f"not {model_type!r} ({model_dir}): use backend = \"hf\"")
    view.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "config.json":
            (view / path.name).symlink_to(path.resolve())
    for section in (config, config.get("text_config")):
        if section is not None:
            section["id2label"], section["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (view / "config.json").write_text(json.dumps(config))
    head = load_file(str(model_dir / HEAD_FILE))
    save_file({VLLM_HEAD_PREFIXES[model_type] + key: value for key, value in head.items()},
              str(view / "score.safetensors"))
    return view


@torch.inference_mode()
def score_tokens(model: TokenRewardModel, processor: Any, images: Sequence[Image.Image | None],
                 prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> list[list[float]]:
    """One reward per response token (engine.chat.response_token_ids' tokens, the end-of-turn
    token included) for each (image, prompt, response), batch_size conversations per forward."""
    from train.data import inputs_on

    device, dtype = model.score.weight.device, model.score.weight.dtype
    rewards: list[list[float]] = []
    for start in range(0, len(responses), batch_size):
        end = start + batch_size
        encoded = chat.encode_for_logprobs(processor, images[start:end], prompts[start:end], responses[start:end])
        response_mask = encoded.pop("response_mask").bool()
        scores = model(**inputs_on(encoded, device, dtype)).float().cpu()
        rewards += [row[mask].tolist() for row, mask in zip(scores, response_mask)]
    return rewards
