"""The one place that turns (image, prompt[, response]) into model inputs.

The backends (sampling, yes/no scoring, reference log-probs) and train/ (policy log-probs)
all encode through here, so the engine's reference log-probs equal the policy's log-probs
at training step 0. `processor` is an MLLM processor (transformers ProcessorMixin) or, for a
text-only LLM, its tokenizer.

A prompt + response is the whole conversation (user turn + assistant turn) rendered by the
model's own chat template, as TRL, vLLM's chat and transformers' pipelines render it, so the
stored reference log-probs are the ones those tools compute. The response tokens are what
follows the prompt rendered alone with the generation prompt, which must be a token prefix.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, BatchFeature, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.processing_utils import ProcessorMixin

from engine.schemas import assistant_turn, user_turn

# Processor outputs with one entry per token; the others are image inputs (pixel_values, ...).
# mm_token_type_ids marks each token text or image, for Qwen2-VL's multimodal rotary positions.
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def is_multimodal(processor: Any) -> bool:
    return isinstance(processor, ProcessorMixin)


def load_model(model_dir: str, processor: Any, dtype: torch.dtype) -> PreTrainedModel:
    """model_dir's weights in the transformers class its processor implies: an image-text model
    for an MLLM's processor, a causal LM for a text model's tokenizer."""
    model_class = AutoModelForImageTextToText if is_multimodal(processor) else AutoModelForCausalLM
    return model_class.from_pretrained(model_dir, dtype=dtype)


def tokenizer_of(processor: Any) -> PreTrainedTokenizerBase:
    return processor.tokenizer if is_multimodal(processor) else processor


def _messages(processor: Any, prompt: str, has_image: bool, response: str | None = None) -> list[dict]:
    """The conversation as the processor renders it: content parts for an MLLM, plain strings
    for a text-only LLM's tokenizer (whose template may not know parts)."""
    if is_multimodal(processor):
        messages = user_turn(prompt, has_image) + ([] if response is None else assistant_turn(response))
    elif has_image:
        raise ValueError("a text-only model (tokenizer, no processor) cannot take an image")
    else:
        messages = [{"role": "user", "content": prompt}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
    return messages


def prompt_text(processor: Any, prompt: str, has_image: bool) -> str:
    """One user turn rendered with the model's chat template, ready for the assistant's answer."""
    messages = _messages(processor, prompt, has_image)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _add_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    # As transformers' own apply_chat_template(tokenize=True): a template that writes the BOS
    # itself must not get a second one from the tokenizer.
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, text))["input_ids"]


def prompt_token_ids(processor: Any, prompt: str, has_image: bool) -> list[int]:
    """Ids of the rendered prompt with the image placeholder NOT expanded (what vLLM takes
    together with the image; it expands the placeholder itself)."""
    return _token_ids(tokenizer_of(processor), prompt_text(processor, prompt, has_image))


def conversation_text(processor: Any, prompt: str, response: str, has_image: bool) -> tuple[str, int]:
    """The whole conversation rendered by the chat template, and how many of its tokens are
    the response (what the template writes after the generation prompt: for the supported
    templates the answer and the end-of-turn token). Placeholder expansion happens inside the
    prompt, so the count holds for expanded ids too."""
    tokenizer = tokenizer_of(processor)
    full = processor.apply_chat_template(_messages(processor, prompt, has_image, response), tokenize=False)
    head_ids = _token_ids(tokenizer, prompt_text(processor, prompt, has_image))
    full_ids = _token_ids(tokenizer, full)
    if full_ids[: len(head_ids)] != head_ids or len(full_ids) == len(head_ids):
        raise ValueError(
            "the chat template's generation prompt is not a token prefix of the conversation it starts "
            f"(response {response[:40]!r}): the template writes the assistant turn otherwise, or tokens merge "
            "across the boundary"
        )
    return full, len(full_ids) - len(head_ids)


def conversation_token_ids(processor: Any, prompt: str, response: str, has_image: bool) -> tuple[list[int], int]:
    """Ids of the whole conversation, image placeholder NOT expanded (vLLM's input), and the
    number of response tokens ending it."""
    full, n_response = conversation_text(processor, prompt, response, has_image)
    return _token_ids(tokenizer_of(processor), full), n_response


def response_token_ids(processor: Any, prompt: str, response: str, has_image: bool) -> list[int]:
    """The response's tokens as the whole conversation renders them: what follows the prompt
    (rendered alone with the generation prompt), the end-of-turn token included."""
    ids, n_response = conversation_token_ids(processor, prompt, response, has_image)
    return ids[len(ids) - n_response:]


def response_tokens_with_spans(processor: Any, prompt: str, response: str,
                               has_image: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """response_token_ids' tokens and where each lies in `response`, as [start, end) character
    offsets clipped to it, from one encoding, so that labels given to parts of the text
    (sentences) can be put on tokens. A token the template writes after the response (end of
    turn) gets an empty span at its end. Needs a fast tokenizer (offset mapping)."""
    tokenizer = tokenizer_of(processor)
    full, n_response = conversation_text(processor, prompt, response, has_image)
    core = response.strip()  # a template may trim the answer
    found = full.find(core, len(prompt_text(processor, prompt, has_image)))
    if found < 0:
        raise ValueError(f"the chat template does not write the response {response[:40]!r} verbatim")
    start = found - (len(response) - len(response.lstrip()))
    encoded = tokenizer(full, add_special_tokens=_add_special_tokens(tokenizer, full), return_offsets_mapping=True)
    first = len(encoded["input_ids"]) - n_response

    def clip(offset: int) -> int:
        return min(max(offset - start, 0), len(response))

    return encoded["input_ids"][first:], [(clip(begin), clip(end)) for begin, end in encoded["offset_mapping"][first:]]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Filler for padded positions (never attended to, never scored); eos where the family has
    no pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _check_rows(images: Sequence[Image.Image | None], *columns: Sequence[str]) -> None:
    lengths = {len(images), *(len(column) for column in columns)}
    if len(lengths) != 1:
        raise ValueError(f"images, prompts (and responses) differ in length: {sorted(lengths)}")
    if not images:
        raise ValueError("nothing to encode: empty batch")


def _tokenize(
    processor: Any,
    texts: list[str],
    images: Sequence[Image.Image | None],
    padding_side: str,
) -> BatchFeature:
    tokenizer = tokenizer_of(processor)
    if tokenizer.pad_token is None:  # Llama-3 has none; padding is never attended to, so eos will do
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = dict(
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        add_special_tokens=_add_special_tokens(tokenizer, texts[0]),
    )
    if not is_multimodal(processor):
        return BatchFeature(dict(tokenizer(texts, **kwargs)))
    present = [image for image in images if image is not None]
    return processor(text=texts, images=present or None, **kwargs)


def encode_prompts(
    processor: Any,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
) -> BatchFeature:
    """Generation inputs for a batch of prompts: left padded, so every row's next token is
    predicted at the last position. Rows with image None are text-only turns."""
    _check_rows(images, prompts)
    texts = [prompt_text(processor, prompt, image is not None) for image, prompt in zip(images, prompts)]
    return _tokenize(processor, texts, images, padding_side="left")


def prompt_length(processor: Any, image: Image.Image | None, prompt: str) -> int:
    """Tokens of one rendered prompt with its image placeholder expanded: what the model reads."""
    return encode_prompts(processor, [image], [prompt])["input_ids"].shape[1]


def encode_shared_image_prompts(
    processor: Any,
    image: Image.Image,
    prompts: Sequence[str],
) -> tuple[BatchFeature, list[list[int]]]:
    """Several prompts about ONE image, with the image preprocessed once.

    Returns the processor output of the first prompt (its image inputs, e.g. pixel_values)
    and the token ids of every prompt, exactly as `processor(text=prompt_i, images=image)`
    would give them: the placeholder is expanded with the first prompt's replacement text,
    which is the same for every prompt because the image is the same.
    """
    if not is_multimodal(processor):
        raise ValueError("prompts about an image need a multimodal processor, got a tokenizer")
    if not prompts:
        raise ValueError("nothing to encode: no prompts")
    tokenizer = tokenizer_of(processor)
    texts = [prompt_text(processor, prompt, has_image=True) for prompt in prompts]
    add_special = _add_special_tokens(tokenizer, texts[0])
    first = processor(
        text=texts[:1],
        images=[image],
        return_tensors="pt",
        add_special_tokens=add_special,
        return_text_replacement_offsets=True,
    )
    replacements = first.pop("text_replacement_offsets")[0]
    if len(replacements) != 1:
        raise ValueError(f"expected one image placeholder in the prompt, found {len(replacements)}")
    placeholder, expansion = replacements[0]["text"], replacements[0]["replacement"]
    expanded = [text.replace(placeholder, expansion, 1) for text in texts]
    ids = tokenizer(expanded, add_special_tokens=add_special)["input_ids"]
    if ids[0] != first["input_ids"][0].tolist():
        raise RuntimeError("expanding the image placeholder by hand disagrees with the processor")
    return first, ids


def encode_for_logprobs(
    processor: Any,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
    responses: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Teacher-forcing inputs: each whole conversation (conversation_text), right padded.

    Returns input_ids, attention_mask, response_mask (1 exactly on the response tokens, the
    template's end-of-turn token included) and the processor's image inputs (pixel_values,
    ...) when any row has an image.
    """
    _check_rows(images, prompts, responses)
    rows = [
        conversation_text(processor, prompt, response, image is not None)
        for image, prompt, response in zip(images, prompts, responses)
    ]
    encoded = _tokenize(processor, [text for text, _ in rows], images, padding_side="right")
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    response_mask = torch.zeros_like(encoded["attention_mask"])
    for i, (length, (_, n_response)) in enumerate(zip(lengths, rows)):
        response_mask[i, length - n_response : length] = 1
    encoded = dict(encoded)
    encoded["response_mask"] = response_mask
    return encoded


def token_types(processor: Any, encoded: BatchFeature, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """mm_token_type_ids for `input_ids` (other ids than the processor encoded: a response
    appended, a prefix cut) when the processor's output had them; else nothing."""
    if "mm_token_type_ids" not in encoded:
        return {}
    return {"mm_token_type_ids": torch.tensor(processor.create_mm_token_type_ids(input_ids), dtype=torch.long)}


def sequence_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the masked (response) tokens per row, and their count.

    Position t's logits predict token t+1; the log-softmax is taken in float32 whatever the
    model's dtype, so bf16 training and fp32 scoring read the same scale.
    """
    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].to(torch.float32)
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=-1), mask.sum(dim=-1).to(torch.long)
