"""Every tiny family (engine.families) builds offline and reproducibly, reloads with the Auto
classes, renders its real chat format, and runs on the hf backend as the backend promises:
prefix reuse equal to one forward per question (a batch of rows bitwise equal to each row
alone), log-probs equal to a forward per row, claim JSON that parses as the schema, greedy
answers equal to transformers' own generate (which numbers cached positions its own way, so a
wrong rotary offset, e.g. Qwen2-VL's, shows). vLLM agreement: tests/test_backend_vllm.py."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_models import QUESTIONS, noise_image
from test_backend_hf import CLAIM_SCHEMA, _matches_claim_schema
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from engine import chat, families
from engine.backends.base import ImageQuestions, Prompt, SamplingParams
from engine.backends.hf import HFBackend
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path

NEW_FAMILIES = [name for name in families.FAMILIES if name not in ("llava", "llm")]
MULTIMODAL = [name for name in NEW_FAMILIES if families.FAMILIES[name].multimodal]

# The chat format of each family: one user turn (with an image for the multimodal ones) and
# the generation prompt, as the real family's template renders it.
RENDERED = {
    "qwen2vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
               "<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n<|im_start|>assistant\n",
    "llava-next": "<s>USER: <image>\nIs it red? ASSISTANT:",
    "smolvlm": "<|im_start|>User:<image>Is it red?<end_of_utterance>\nAssistant:",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nIs it red?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen25": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nIs it red?<|im_end|>\n<|im_start|>assistant\n",
}
# Each family's end-of-turn token (the tokenizer's eos, closing every response) and stop tokens.
STOPS = {
    "qwen2vl": ("<|im_end|>", {"<|im_end|>", "<|endoftext|>"}),
    "llava-next": ("</s>", {"</s>"}),
    "smolvlm": ("<end_of_utterance>", {"<end_of_utterance>", "<|im_end|>"}),
    "llama3": ("<|eot_id|>", {"<|eot_id|>", "<|end_of_text|>"}),
    "qwen25": ("<|im_end|>", {"<|im_end|>", "<|endoftext|>"}),
}


@pytest.fixture(scope="module")
def hf_backends(model_cache):
    loaded: dict[str, HFBackend] = {}

    def load(name: str) -> HFBackend:
        if name not in loaded:
            path = resolve_model_path(f"tiny:{name}", model_cache)
            loaded[name] = HFBackend(path, ModelConfig(path=path, batch_size=2), device="cpu")
        return loaded[name]

    yield load
    for backend in loaded.values():
        backend.close()


def test_every_new_family_has_its_expectations():
    assert set(RENDERED) == set(STOPS) == set(NEW_FAMILIES)


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_builds_reproducibly_and_reloads_offline(name, tmp_path, model_cache):
    first, again = (families.build(name, tmp_path / str(i), 0) for i in range(2))
    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / file).read_bytes() == (again / file).read_bytes(), file
    other = families.build(name, tmp_path / "other", 1)
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    path = resolve_model_path(f"tiny:{name}", model_cache)
    if families.FAMILIES[name].multimodal:
        processor, model = AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path)
        assert chat.is_multimodal(processor)
    else:
        processor, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    state = model.state_dict()
    reloaded = type(model).from_pretrained(path).state_dict()
    assert all(torch.equal(state[key], reloaded[key]) for key in state)
    eos, stops = STOPS[name]
    tokenizer = chat.tokenizer_of(processor)
    assert tokenizer.eos_token == eos
    configured = model.generation_config.eos_token_id
    assert set(tokenizer.convert_ids_to_tokens(configured if isinstance(configured, list) else [configured])) == stops


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_renders_the_real_chat_format(name, hf_backends):
    processor = hf_backends(name).processor
    assert chat.prompt_text(processor, "Is it red?", families.FAMILIES[name].multimodal) == RENDERED[name]


@pytest.mark.parametrize("name", MULTIMODAL)
def test_prefix_reuse_equals_one_forward_per_question(name, hf_backends):
    backend = hf_backends(name)
    # two sizes (other image token counts) in one call, with a row asking nothing between them
    items = [ImageQuestions(noise_image(4), QUESTIONS), ImageQuestions(noise_image(6), []),
             ImageQuestions(noise_image(5, size=(96, 64)), QUESTIONS[1:])]
    batched = backend.score_yes_no(items)
    assert batched == [backend.score_yes_no([item])[0] for item in items]  # float ==: bit for bit
    for shared, full in zip(batched, backend.score_yes_no_per_question(items), strict=True):
        assert len(shared) == len(full)
        assert torch.allclose(torch.tensor(shared), torch.tensor(full), rtol=0, atol=1e-5)
    one, other = backend.score_yes_no([ImageQuestions(noise_image(4), QUESTIONS[:1]),
                                       ImageQuestions(noise_image(6), QUESTIONS[:1])])
    assert one != other


@pytest.mark.parametrize("name", MULTIMODAL)
def test_the_number_of_image_tokens_follows_the_image_size(name, hf_backends):
    processor = hf_backends(name).processor
    lengths = {len(chat.encode_shared_image_prompts(processor, noise_image(0, size), ["Is it red?"])[1][0])
               for size in ((32, 32), (96, 40), (40, 120))}  # sizes and aspect ratios: SmolVLM's follow only the latter
    assert len(lengths) == 3


def _forward_logprob(backend: HFBackend, item: Prompt, response: str) -> float:
    """One unpadded forward of prompt + response as the conversation renders it, through the
    processor itself."""
    processor, tokenizer = backend.processor, backend.tokenizer
    text = chat.prompt_text(processor, item.text, item.image is not None)
    if chat.is_multimodal(processor):
        prompt = processor(text=[text], images=[item.image] if item.image else None, return_tensors="pt")
    else:
        prompt = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    response_ids = chat.response_token_ids(processor, item.text, response, item.image is not None)
    ids = torch.cat([prompt["input_ids"], torch.tensor([response_ids])], dim=1)
    inputs = {key: value for key, value in prompt.items() if key not in chat.TOKEN_KEYS}
    inputs.update(input_ids=ids, **chat.token_types(processor, prompt, ids))
    with torch.no_grad():
        logits = backend.model(**inputs).logits[0].double()
    start = prompt["input_ids"].shape[1]
    targets = ids[0, start:]
    return float(logits[start - 1 : -1].log_softmax(-1).gather(-1, targets[:, None]).sum())


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_batched_logprobs_equal_one_forward_per_row(name, hf_backends):
    backend = hf_backends(name)
    image = noise_image(10) if families.FAMILIES[name].multimodal else None
    items = [Prompt(image, "Describe the image."), Prompt(None, "Say hello."), Prompt(image, "What is it?")]
    responses = [" There is a red circle in the center.", " Hello there", ""]
    for item, response, (total, _) in zip(items, responses, backend.logprobs(items, responses), strict=True):
        assert total == pytest.approx(_forward_logprob(backend, item, response), abs=1e-4)


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_greedy_answers_equal_transformers_generate(name, hf_backends):
    """Image prompt, then a text prompt (Qwen2-VL must not carry the image's rotary offset over)."""
    backend = hf_backends(name)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    image = noise_image(7) if families.FAMILIES[name].multimodal else None
    for item in (Prompt(image, "Describe the image."), Prompt(None, "Say something.")):
        [[answer]] = backend.sample([item], [[0]], greedy)
        inputs = chat.encode_prompts(backend.processor, [item.image], [item.text])
        with torch.no_grad():
            out = backend.model.generate(**inputs, do_sample=False, max_new_tokens=8)
        expected = out[0, inputs["input_ids"].shape[1]:].tolist()
        assert answer.n_tokens == len(expected) and answer.text == backend._detokenize(expected)


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_seeded_sampling_repeats_and_seeds_differ(name, hf_backends):
    backend = hf_backends(name)
    image = noise_image(8) if families.FAMILIES[name].multimodal else None
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    first = backend.sample([Prompt(image, "Describe the image in detail.")], [[11, 12, 13]], params)[0]
    assert first == backend.sample([Prompt(image, "Describe the image in detail.")], [[11, 12, 13]], params)[0]
    assert len({c.text for c in first}) == 3


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_claims_json_parses_as_the_schema(name, hf_backends):
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=128)
    outputs = hf_backends(name).generate_json(["Split: a red circle and a blue square."] * 3, CLAIM_SCHEMA, params,
                                              [0, 1, 2])
    assert all(_matches_claim_schema(json.loads(text)) for text in outputs), outputs
