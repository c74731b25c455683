"""engine.chat: prompts and whole conversations render through the chat template, the response
mask covers exactly what follows the generation prompt, and sequence_logprobs is the plain
shifted log-softmax sum."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from fixtures_models import noise_image
from transformers import AutoProcessor

from engine import chat
from engine.schemas import assistant_turn, turn_text, user_turn


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return AutoProcessor.from_pretrained(tiny_llm_dir)


def test_prompt_text_renders_one_user_turn(processor, tokenizer):
    assert chat.prompt_text(processor, "Is it red?", has_image=True) == "<s>USER: <image>\nIs it red? ASSISTANT:"
    assert chat.prompt_text(processor, "Hi", has_image=False) == "<s>USER: Hi ASSISTANT:"
    assert chat.prompt_text(tokenizer, "Split this.", has_image=False) == "<s>USER: Split this. ASSISTANT:"
    with pytest.raises(ValueError, match="text-only"):
        chat.prompt_text(tokenizer, "Hi", has_image=True)


def test_template_bos_is_not_doubled(processor):
    ids = chat.prompt_token_ids(processor, "Hi", has_image=False)
    assert ids.count(processor.tokenizer.bos_token_id) == 1 and ids[0] == processor.tokenizer.bos_token_id


def test_encode_prompts_pads_left_and_expands_the_image(processor):
    batch = chat.encode_prompts(processor, [noise_image(0), None], ["Describe the image.", "A longer text prompt here"])
    assert batch["pixel_values"].shape[0] == 1
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # next token is read at the last column
    image_row = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    alone = processor(text=[chat.prompt_text(processor, "Describe the image.", True)], images=[noise_image(0)])
    assert image_row == alone["input_ids"][0]
    assert image_row.count(processor.image_token_id) == 16


def test_response_mask_covers_exactly_response_and_eos(processor):
    tok = processor.tokenizer
    prompts, responses = ["Describe the image.", "Hi"], [" A red circle and a blue square.", ""]
    encoded = chat.encode_for_logprobs(processor, [noise_image(1), None], prompts, responses)
    assert set(encoded) == {"input_ids", "attention_mask", "response_mask", "pixel_values"}
    for row, (prompt, response, image) in enumerate(zip(prompts, responses, [noise_image(1), None])):
        ids, mask = encoded["input_ids"][row], encoded["response_mask"][row]
        length = int(encoded["attention_mask"][row].sum())
        assert encoded["attention_mask"][row, :length].all() and not encoded["attention_mask"][row, length:].any()
        expected_response = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids[mask == 1].tolist() == expected_response
        # the masked span is contiguous and ends the real tokens
        assert mask[length - len(expected_response) : length].all() and int(mask.sum()) == len(expected_response)
        prompt_ids = processor(
            text=[chat.prompt_text(processor, prompt, image is not None)], images=[image] if image else None
        )["input_ids"][0]
        assert ids[: len(prompt_ids)].tolist() == prompt_ids


def test_the_conversation_is_rendered_whole_by_the_template(processor, tokenizer):
    conversation = processor.apply_chat_template(
        user_turn("Hi", has_image=False) + assistant_turn(" there"), tokenize=False)
    assert chat.conversation_text(processor, "Hi", " there", has_image=False) == (conversation, 2)
    encoded = chat.encode_for_logprobs(tokenizer, [None], ["Hi"], [" there"])
    assert encoded["input_ids"][0].tolist() == tokenizer(conversation, add_special_tokens=False)["input_ids"]
    assert set(encoded) == {"input_ids", "attention_mask", "response_mask"}
    assert turn_text(assistant_turn(" there")) == " there"
    assert turn_text(user_turn("Hi", has_image=True)) == "Hi"


def test_a_template_whose_generation_prompt_does_not_start_the_answer_is_an_error(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="not a token prefix"):
        chat.encode_for_logprobs(other, [None], ["Hi"], ["there"])


def test_shared_image_prompts_match_the_processor(processor):
    image = noise_image(2)
    first, rows = chat.encode_shared_image_prompts(processor, image, ["Is it red?", "Are there two green squares?"])
    for prompt, row in zip(["Is it red?", "Are there two green squares?"], rows):
        alone = processor(text=[chat.prompt_text(processor, prompt, True)], images=[image])
        assert row == alone["input_ids"][0]
    assert torch.equal(first["pixel_values"], processor(text=["<image>"], images=[image], return_tensors="pt")["pixel_values"])


def test_bad_batches_are_clear_errors(processor, tokenizer):
    with pytest.raises(ValueError, match="differ in length"):
        chat.encode_for_logprobs(processor, [None], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="empty batch"):
        chat.encode_prompts(processor, [], [])
    with pytest.raises(ValueError, match="multimodal processor"):
        chat.encode_shared_image_prompts(tokenizer, noise_image(0), ["Is it red?"])


def test_sequence_logprobs_equals_a_hand_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    input_ids = torch.tensor([[1, 2, 3, 4, 5], [6, 0, 2, 2, 0]])
    response_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    sums, counts = chat.sequence_logprobs(logits, input_ids, response_mask)
    for row in range(2):
        expected = 0.0
        for t in range(1, 5):
            if response_mask[row, t]:
                scores = [float(x) for x in logits[row, t - 1]]
                log_norm = math.log(sum(math.exp(s) for s in scores))
                expected += scores[int(input_ids[row, t])] - log_norm
        assert sums[row].item() == pytest.approx(expected, abs=1e-5)
        assert counts[row].item() == int(response_mask[row].sum())
    assert sums.dtype == torch.float32
