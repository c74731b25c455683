"""The transformers backend against hand computations on the tiny models.

Tolerances: fp32 on CPU. Prefix-reuse yes/no probabilities equal one full forward per
question to atol 1e-5 (observed ~1e-9); teacher-forced log-prob sums equal a hand loop to
atol 1e-4 (sums of tens of nats; observed ~1e-5).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from fixtures_models import QUESTIONS, noise_image

from engine import chat
from engine.backends import make_backend
from engine.backends.base import (Completion, ImageQuestions, Prompt, SamplingParams, grammar_safe_schema,
                                  yes_no_token_ids)
from engine.backends.hf import HFBackend, draw_tokens, shared_prefix_length
from engine.config import ModelConfig
from engine.tiny_models import ModelSizes

PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)


# --- pure helpers ---------------------------------------------------------------------------


def test_draw_tokens_inverse_cdf_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(4, 1)
    uniforms = torch.tensor([0.1, 0.49, 0.6, 0.95], dtype=torch.float64)
    # cdf 0.5, 0.8, 1.0
    assert draw_tokens(logits, uniforms, 1.0, 1.0).tolist() == [0, 0, 1, 2]
    # top_p 0.6 keeps {0, 1} (mass before token 1 is 0.5 < 0.6), renormalised 0.625 / 0.375
    uniforms = torch.tensor([0.1, 0.62, 0.63, 0.999], dtype=torch.float64)
    assert draw_tokens(logits, uniforms, 1.0, 0.6).tolist() == [0, 0, 1, 1]
    # temperature 2: p ~ sqrt(p): 0.7071, 0.5477, 0.4472 -> first cdf step 0.7071 / 1.7020 = 0.4155
    assert draw_tokens(logits[:2], torch.tensor([0.41, 0.42], dtype=torch.float64), 2.0, 1.0).tolist() == [0, 1]
    assert draw_tokens(logits[:1], torch.tensor([0.99], dtype=torch.float64), 0.0, 1.0).tolist() == [0]


def test_shared_prefix_length_leaves_each_row_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0


def test_yes_no_ids_are_every_single_token_spelling(hf_llava):
    tok = hf_llava.tokenizer
    yes, no = yes_no_token_ids(tok)
    assert yes == sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("yes", " yes", "Yes", " Yes")})
    assert no == sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("no", " no", "No", " No")})
    assert len(yes) == 4 and len(no) == 4 and not set(yes) & set(no)


def test_grammar_safe_schema_turns_length_bounds_into_a_pattern():
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}, "b": {"type": "string"}}}
    safe = grammar_safe_schema(schema)
    assert safe["properties"]["a"] == {"type": "string", "pattern": r"^[ !#-\[\]-~]{0,5}$"}
    assert safe["properties"]["b"] == {"type": "string"}
    assert grammar_safe_schema({"type": "string", "minLength": 2})["pattern"].endswith("{2,}$")
    assert schema["properties"]["a"] == {"type": "string", "maxLength": 5}  # input untouched


def test_sampling_params_reject_bad_values():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


# --- yes/no ---------------------------------------------------------------------------------


def test_p_yes_p_no_equal_a_hand_softmax(hf_llava):
    image = noise_image(3)
    yes, no = yes_no_token_ids(hf_llava.tokenizer)
    (scored,) = hf_llava.score_yes_no([ImageQuestions(image, QUESTIONS)])
    for question, (p_yes, p_no) in zip(QUESTIONS, scored, strict=True):
        inputs = chat.encode_prompts(hf_llava.processor, [image], [question])
        with torch.no_grad():
            logits = hf_llava.model(**inputs).logits[0, -1].double()
        probs = logits.exp() / logits.exp().sum()
        assert p_yes == pytest.approx(float(probs[yes].sum()), abs=1e-6)
        assert p_no == pytest.approx(float(probs[no].sum()), abs=1e-6)
        assert 0 < p_yes < 1 and 0 < p_no < 1


def test_prefix_reuse_equals_one_forward_per_question(hf_llava):
    # 5 questions in chunks of 2 (batch_size 2): the prefix cache is copied per chunk
    items = [ImageQuestions(noise_image(4), QUESTIONS), ImageQuestions(noise_image(4), QUESTIONS[:1])]
    shared, one = hf_llava.score_yes_no(items)
    full, full_one = hf_llava.score_yes_no_per_question(items)
    assert len(shared) == len(QUESTIONS) and full_one == full[:1]
    assert torch.allclose(torch.tensor(shared), torch.tensor(full), rtol=0, atol=1e-5)
    assert torch.allclose(torch.tensor(one), torch.tensor(full_one), rtol=0, atol=1e-5)


def test_batched_scoring_equals_scoring_each_row_alone(hf_llava):
    """A stage's whole batch in one call gives every row bitwise what it gets alone; a row
    without questions gets [] and an empty batch nothing."""
    items = [ImageQuestions(noise_image(4), QUESTIONS), ImageQuestions(noise_image(5), []),
             ImageQuestions(noise_image(6), QUESTIONS[:1]), ImageQuestions(noise_image(4), QUESTIONS[2:])]
    batched = hf_llava.score_yes_no(items)
    assert batched == [hf_llava.score_yes_no([item])[0] for item in items]  # float ==: bit for bit
    assert [len(scores) for scores in batched] == [5, 0, 1, 3]
    assert hf_llava.score_yes_no([]) == []


def test_yes_no_depends_on_the_image(hf_llava):
    first, second = hf_llava.score_yes_no([ImageQuestions(noise_image(5), QUESTIONS[:1]),
                                           ImageQuestions(noise_image(6), QUESTIONS[:1])])
    assert first != second


# --- sampling -------------------------------------------------------------------------------


def test_seeded_sampling_repeats_and_seeds_differ(hf_llava):
    item = Prompt(noise_image(7), "Describe the image in detail.")
    first = hf_llava.sample([item], [[11, 12, 13]], PARAMS)[0]
    again = hf_llava.sample([item], [[11, 12, 13]], PARAMS)[0]
    assert first == again
    assert [c.seed for c in first] == [11, 12, 13]
    assert len({c.text for c in first}) == 3
    assert all(isinstance(c, Completion) and 1 <= c.n_tokens <= PARAMS.max_new_tokens for c in first)


def test_answer_is_independent_of_batch_and_other_prompts(hf_llava):
    """Measured on CPU fp32: answer j with seed s is the same text when sampled alone, in a
    batch of n, or next to another prompt (rows never share padding). Across batch sizes the
    logits may differ in the last float bits, so on other hardware a rare token can flip."""
    item, other = Prompt(noise_image(8), "Describe the image."), Prompt(None, "Say something.")
    batched = hf_llava.sample([item, other], [[21, 22, 23, 24], [21]], PARAMS)
    alone = hf_llava.sample([item], [[23]], PARAMS)[0][0]
    assert batched[0][2] == alone
    assert hf_llava.sample([other], [[21]], PARAMS)[0] == batched[1]


def test_greedy_ignores_seeds(hf_llava):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    texts = {c.text for c in hf_llava.sample([Prompt(noise_image(9), "Describe.")], [[1, 2, 3]], greedy)[0]}
    assert len(texts) == 1


def test_sample_argument_errors(hf_llava):
    with pytest.raises(ValueError, match="seed lists"):
        hf_llava.sample([Prompt(None, "Hi")], [], PARAMS)
    assert hf_llava.sample([Prompt(None, "Hi")], [[]], PARAMS) == [[]]


# --- JSON -----------------------------------------------------------------------------------

CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "claims": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "fact": {"type": "string", "maxLength": 24},
                    "question": {"type": "string", "maxLength": 24},
                },
                "required": ["fact", "question"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["claims"],
    "additionalProperties": False,
}


def _matches_claim_schema(document: dict) -> bool:
    claims = document.get("claims")
    return (
        set(document) == {"claims"}
        and isinstance(claims, list)
        and 1 <= len(claims) <= 2
        and all(
            set(claim) == {"fact", "question"}
            and all(isinstance(claim[key], str) and len(claim[key]) <= 24 for key in claim)
            for claim in claims
        )
    )


def test_generate_json_always_parses_as_the_schema(hf_llm):
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=128)
    seeds = [0, 1, 2, 3, 4]
    outputs = hf_llm.generate_json(["Split: a red circle and a blue square."] * 5, CLAIM_SCHEMA, params, seeds)
    assert all(_matches_claim_schema(json.loads(text)) for text in outputs), outputs
    assert len(set(outputs)) > 1  # seeds differ
    assert hf_llm.generate_json(["Split: a red circle and a blue square."], CLAIM_SCHEMA, params, [3]) == outputs[3:4]


def test_generate_json_cut_short_is_returned_unparsed(hf_llm):
    params = SamplingParams(temperature=1.0, max_new_tokens=3)
    [text] = hf_llm.generate_json(["Split: a red circle."], CLAIM_SCHEMA, params, [0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


# --- log-probs ------------------------------------------------------------------------------


def _hand_logprob(backend: HFBackend, image, prompt: str, response: str) -> tuple[float, int]:
    proc, tok = backend.processor, backend.tokenizer
    prompt_ids = proc(text=[chat.prompt_text(proc, prompt, image is not None)], images=[image] if image else None)
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids["input_ids"][0] + response_ids])
    extra = {"pixel_values": proc.image_processor([image], return_tensors="pt")["pixel_values"]} if image else {}
    with torch.no_grad():
        logits = backend.model(input_ids=ids, **extra).logits[0].double()
    start = len(prompt_ids["input_ids"][0])
    total = 0.0
    for t in range(start, ids.shape[1]):
        row = logits[t - 1]
        total += float(row[ids[0, t]] - torch.logsumexp(row, dim=0))
    return total, len(response_ids)


def test_logprobs_equal_a_hand_teacher_forced_sum(hf_llava):
    rows = [
        (noise_image(10), "Describe the image.", " There is a red circle in the center."),
        (None, "Say hello.", " Hello there"),
        (noise_image(11), "What is in the image?", ""),
    ]
    scored = hf_llava.logprobs([Prompt(image, prompt) for image, prompt, _ in rows], [r for _, _, r in rows])
    for (image, prompt, response), (total, count) in zip(rows, scored):
        expected_total, expected_count = _hand_logprob(hf_llava, image, prompt, response)
        assert count == expected_count
        assert total == pytest.approx(expected_total, abs=1e-4)
        assert total < 0


def test_an_answers_logprob_is_bitwise_the_same_alone_and_among_differently_long_answers(hf_llava, monkeypatch):
    monkeypatch.setattr(hf_llava, "batch_size", 16)  # room for every answer in one call
    words = "There is a red circle in the top left . The image shows two blue squares near the center".split()
    rng = np.random.default_rng(0)
    answers = [" " + " ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(12)] + ["", " Yes."]
    prompts = [Prompt(noise_image(k % 3), "Describe the image.") for k in range(len(answers))]
    alone = [hf_llava.logprobs([prompt], [answer])[0] for prompt, answer in zip(prompts, answers)]
    assert hf_llava.logprobs(prompts, answers) == alone  # float ==: bit for bit
    assert hf_llava.logprobs(prompts[::-1], answers[::-1]) == alone[::-1]


def test_prompt_tokens_count_what_the_model_reads_image_tokens_included(hf_llava):
    text_only = hf_llava.prompt_tokens(Prompt(None, "Describe the image."))
    with_image = hf_llava.prompt_tokens(Prompt(noise_image(1), "Describe the image."))
    assert text_only == len(chat.prompt_token_ids(hf_llava.processor, "Describe the image.", has_image=False))
    assert with_image - text_only > ModelSizes().image_tokens  # the image's tokens and its line break


def test_make_backend_builds_the_hf_backend(model_cache):
    backend = make_backend(ModelConfig(path="tiny:llm"), model_cache)
    assert isinstance(backend, HFBackend) and not chat.is_multimodal(backend.processor)
    backend.close()


def test_make_backend_says_when_vllm_is_missing(model_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(RuntimeError, match="vLLM cannot be imported"):
        make_backend(ModelConfig(path="tiny:llm", backend="vllm"), model_cache)
