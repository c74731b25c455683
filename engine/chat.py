"""The one place that turns (image, prompt[, response]) into model inputs.

The backends (sampling, yes/no scoring, reference log-probs) and train/ (policy log-probs)
all encode through here, so the engine's reference log-probs equal the policy's log-probs
at training step 0. `processor` is an MLLM processor (transformers ProcessorMixin) or, for a
text-only LLM, its tokenizer.

Prompt and response are tokenised separately and their ids concatenated (prompt + response
+ eos): the boundary never depends on BPE merges across it, and the response tokens are the
same whatever prompt precedes them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin

# Processor outputs with one entry per token; the others are image inputs (pixel_values, ...).
# mm_token_type_ids marks each token text or image, for Qwen2-VL's multimodal rotary positions.
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def is_multimodal(processor: Any) -> bool:
    return isinstance(processor, ProcessorMixin)


def tokenizer_of(processor: Any) -> PreTrainedTokenizerBase:
    return processor.tokenizer if is_multimodal(processor) else processor


def prompt_text(processor: Any, prompt: str, has_image: bool) -> str:
    """One user turn rendered with the model's chat template, ready for the assistant's answer."""
    if is_multimodal(processor):
        content: Any = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": prompt})
    elif has_image:
        raise ValueError("a text-only model (tokenizer, no processor) cannot take an image")
    else:
        content = prompt
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _add_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    # As transformers' own apply_chat_template(tokenize=True): a template that writes the BOS
    # itself must not get a second one from the tokenizer.
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))


def prompt_token_ids(processor: Any, prompt: str, has_image: bool) -> list[int]:
    """Ids of the rendered prompt with the image placeholder NOT expanded (what vLLM takes
    together with the image; it expands the placeholder itself)."""
    tokenizer = tokenizer_of(processor)
    text = prompt_text(processor, prompt, has_image)
    return tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, text))["input_ids"]


def response_token_ids(tokenizer: PreTrainedTokenizerBase, responses: Sequence[str]) -> list[list[int]]:
    """Each response tokenised on its own, followed by the end-of-turn token (the tokenizer's
    eos, which the chat templates of the supported families close the assistant turn with)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end the response with")
    encoded = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


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
    """Teacher-forcing inputs: prompt ids + response ids + eos per row, right padded.

    Returns input_ids, attention_mask, response_mask (1 exactly on the response tokens and
    the closing eos), mm_token_type_ids when the processor makes them, and the processor's
    image inputs (pixel_values, ...) when any row has an image.
    """
    _check_rows(images, prompts, responses)
    tokenizer = tokenizer_of(processor)
    texts = [prompt_text(processor, prompt, image is not None) for image, prompt in zip(images, prompts)]
    prompt_batch = _tokenize(processor, texts, images, padding_side="right")
    prompt_lengths = prompt_batch["attention_mask"].sum(dim=1).tolist()
    rows = [
        (prompt_batch["input_ids"][i, :length].tolist(), response)
        for i, (length, response) in enumerate(zip(prompt_lengths, response_token_ids(tokenizer, responses)))
    ]
    width = max(len(prompt) + len(response) for prompt, response in rows)
    input_ids = torch.full((len(rows), width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        end = len(prompt) + len(response)
        input_ids[i, :end] = torch.tensor(prompt + response)
        attention_mask[i, :end] = 1
        response_mask[i, len(prompt) : end] = 1
    encoded = {key: value for key, value in prompt_batch.items() if key not in TOKEN_KEYS}
    encoded.update(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask)
    return {**encoded, **token_types(processor, prompt_batch, input_ids)}


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
