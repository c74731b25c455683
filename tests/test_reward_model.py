"""The token-level reward model without Ray (engine/reward_model.py, train/objectives.py's
RewardModelObjective): its loss is a BCE computed by hand from the backbone's last hidden state
and the head, a few AdamW steps learn a separable toy case, a new head is seeded, and a saved
model reloads and scores one reward per response token. The Ray Train + DeepSpeed runs are in
tests/test_train_rm.py.

The toy case: answers "There is a <colour> circle." whose colour token alone is labelled, good
for blue and yellow, bad for red and green.
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
import torch
from fixtures_models import noise_image, noise_png
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from engine import chat
from engine.config import load_config
from engine.reward_model import HEAD_FILE, load_reward_model, score_tokens, with_reward_head
from engine.schemas import RM_SCHEMA
from train.objectives import RewardModelObjective
from train.rm_data import collate_rm

QUESTION = "Describe the image."
COLOURS = {"red": 0, "blue": 1, "green": 0, "yellow": 1}


def toy_rows(processor, first_image: int, n: int) -> pa.Table:
    tokenizer = chat.tokenizer_of(processor)
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        answer = f"There is a {colour} circle."
        ids = chat.response_token_ids(processor, QUESTION, answer, True)
        labels = [COLOURS[colour] if tokenizer.decode([token]).strip() == colour else -1 for token in ids]
        assert labels.count(-1) == len(ids) - 1
        rows.append({"row_id": f"row-{first_image + i:03d}", "group_id": f"image-{first_image + i}",
                     "source": "ai_feedback", "image": noise_png(first_image + i), "question": QUESTION,
                     "answer": answer, "token_ids": ids, "labels": labels})
    return pa.Table.from_pylist(rows, schema=RM_SCHEMA)


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def init_with_head(tiny_llava_dir, tmp_path_factory) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The tiny LLaVA with a known head beside it: a reward model to continue from."""
    out = tmp_path_factory.mktemp("init") / "model"
    shutil.copytree(tiny_llava_dir, out)
    hidden = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).config.get_text_config().hidden_size
    weight = torch.randn(1, hidden, generator=torch.Generator().manual_seed(5)) * 0.2
    bias = torch.tensor([0.3])
    (out / HEAD_FILE).parent.mkdir()
    save_file({"score.weight": weight, "score.bias": bias}, str(out / HEAD_FILE))
    return str(out), weight, bias


def independent_bce(init_with_head, processor, rows: pa.Table) -> float:
    """The mean BCE over the rows' labelled tokens of the head on the model's last hidden state,
    written out: -(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))."""
    init_dir, weight, bias = init_with_head
    model = AutoModelForImageTextToText.from_pretrained(init_dir, dtype=torch.float32).eval()
    batch = collate_rm(rows.to_pylist(), processor, max_length=2048)
    with torch.no_grad():
        hidden = model(**batch.model_inputs, output_hidden_states=True).hidden_states[-1]
    labelled = batch.labels >= 0
    z, y = (hidden @ weight[0] + bias)[labelled], batch.labels[labelled].float()
    return (-(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()).item()


def objective(processor, rows: pa.Table) -> RewardModelObjective:
    return RewardModelObjective(load_config(None), processor, rows.to_pylist(), torch.device("cpu"),
                                torch.float32, seed=0)


def test_the_objectives_loss_is_an_independent_bce_on_the_labelled_tokens(processor, init_with_head):
    rows = toy_rows(processor, 0, 6)
    backbone = AutoModelForImageTextToText.from_pretrained(init_with_head[0], dtype=torch.float32)
    model = with_reward_head(backbone, init_with_head[0], seed=0).eval()
    rm = objective(processor, rows)
    with torch.no_grad():
        loss, metrics = rm.loss(model, rm.batch(list(range(6)), step=0))
    assert loss.item() == pytest.approx(independent_bce(init_with_head, processor, rows), rel=1e-5)
    assert 0 <= metrics["token_accuracy"].item() <= 1


def test_a_few_steps_learn_the_separable_toy_case(processor, tiny_llava_dir):
    torch.manual_seed(0)
    rows = toy_rows(processor, 0, 4)  # one answer per colour
    model = with_reward_head(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32),
                             tiny_llava_dir, seed=0).train()
    rm = objective(processor, rows)
    batch = rm.batch(list(range(4)), step=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(8):
        loss, metrics = rm.loss(model, batch)
        history.append((loss.item(), metrics["token_accuracy"].item()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1][0] < 0.2 * history[0][0] and history[-1][1] == 1.0


def test_a_new_head_is_seeded_and_the_untied_lm_head_is_frozen(tiny_llava_dir):
    def build(seed):
        return with_reward_head(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir), tiny_llava_dir, seed)

    first, again, other = build(1), build(1), build(2)
    assert torch.equal(first.score.weight, again.score.weight) and not torch.equal(first.score.weight,
                                                                                   other.score.weight)
    assert first.score.bias.item() == 0.0
    assert not first.backbone.get_output_embeddings().weight.requires_grad
    assert first.backbone.get_input_embeddings().weight.requires_grad and first.score.weight.requires_grad


def test_a_saved_reward_model_reloads_and_scores_one_reward_per_response_token(processor, init_with_head, tmp_path):
    init_dir = init_with_head[0]
    out = tmp_path / "rm"
    shutil.copytree(init_dir, out)
    model = with_reward_head(AutoModelForImageTextToText.from_pretrained(init_dir), init_dir, seed=0).eval()
    with torch.no_grad():
        model.score.bias.fill_(-0.7)
    model.save_pretrained(out)
    loaded, loaded_processor = load_reward_model(str(out))
    assert loaded.score.bias.item() == pytest.approx(-0.7)
    answers = ["There is a red circle.", "A blue star sits on a red square at the top left.", "Yes."]
    images = [noise_image(200 + i) for i in range(len(answers))]
    batched = score_tokens(loaded, loaded_processor, images, [QUESTION] * 3, answers, batch_size=2)
    for rewards, image, answer in zip(batched, images, answers):
        assert len(rewards) == len(chat.response_token_ids(processor, QUESTION, answer, True))
        assert rewards == pytest.approx(score_tokens(model, processor, [image], [QUESTION], [answer])[0], abs=1e-4)


def test_loading_a_policy_as_a_reward_model_is_refused(tiny_llava_dir):
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        load_reward_model(tiny_llava_dir)
