"""transformers backend: CPU or GPU, the embedded default, the tests' reference and a fallback.

- sample: the n answers of ONE prompt are decoded together: one prefill at batch 1, the KV
  cache repeated n times, then a hand-written decode loop where row j draws its tokens from
  its own torch.Generator seeded with seeds[j]. Prompts are never batched with each other,
  so an answer depends only on (model, prompt, its seed, params, n) and no padding enters.
- generate_json: the same loop with an xgrammar token mask per row (JSON-schema decoding).
- score_yes_no: per item (one image and its questions), the KV cache of the token prefix
  shared by its questions (chat header and image tokens) is computed once; the questions'
  remaining tokens run in batches of batch_size on copies of it. Equal to one full forward
  per question up to float rounding. Items run one after another, never padded together.
- logprobs: teacher forcing with no padding, so an answer's log-prob is bitwise the same
  whichever answers share its call (a resumed pass regroups them): the prompt (image
  included) runs once at batch 1 for consecutive items of the same prompt, then each response
  runs alone on that KV cache. The padded batched forward it replaces moved a log-prob by
  float rounding with its batch-mates.
- sample and score_yes_no take every row of a stage's batch but batch only what one
  instruction owns (its n seeds, its questions), so a row's results are bitwise the same
  whichever rows share its call.
"""

from __future__ import annotations

import copy
import json
from functools import cached_property
from typing import Sequence

import torch
import xgrammar
from PIL import Image
from transformers import AutoProcessor, Cache, PreTrainedModel

from engine import chat
from engine.config import ModelConfig
from engine.backends.base import (
    Completion,
    ImageQuestions,
    Prompt,
    SamplingParams,
    check_sample_args,
    grammar_safe_schema,
    yes_no_token_ids,
)


def draw_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: row i takes the first token whose
    cumulative probability exceeds uniforms[i] (a draw in [0, 1) from that row's own
    generator). Nucleus (top_p) keeps the most likely tokens whose preceding cumulative mass
    is below top_p. temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = None
    if top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)
    cdf = probs.cumsum(dim=-1)
    targets = uniforms.to(cdf) * cdf[:, -1]
    picks = torch.searchsorted(cdf, targets.unsqueeze(-1), right=True).clamp(max=cdf.shape[-1] - 1)
    if order is not None:
        picks = order.gather(-1, picks)
    return picks.squeeze(-1)


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every row at least one token of
    its own (the position whose logits are read)."""
    limit = min(len(row) for row in rows) - 1
    length = 0
    while length < limit and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


class GrammarMask:
    """Per-row xgrammar matchers: restrict each running row's logits to the tokens its
    grammar allows next, then advance the matcher with the sampled token."""

    def __init__(self, compiled_grammar: xgrammar.CompiledGrammar, rows: int) -> None:
        self.matchers = [xgrammar.GrammarMatcher(compiled_grammar) for _ in range(rows)]
        self.bitmask = xgrammar.allocate_token_bitmask(rows, compiled_grammar.tokenizer_info.vocab_size)

    def restrict(self, logits: torch.Tensor, running: list[bool]) -> None:
        xgrammar.reset_token_bitmask(self.bitmask)  # finished rows: allow all (ignored anyway)
        for row, matcher in enumerate(self.matchers):
            if running[row]:
                matcher.fill_next_token_bitmask(self.bitmask, row)
        xgrammar.apply_token_bitmask_inplace(logits, self.bitmask.to(logits.device))

    def accept(self, row: int, token: int) -> None:
        if not self.matchers[row].accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} that its own mask allowed")


class HFBackend:
    """One transformers model (MLLM or text LLM) with its processor or tokenizer."""

    def __init__(self, path: str, model_cfg: ModelConfig, *, device: str | None = None,
                 model: PreTrainedModel | None = None) -> None:
        """`model`, when given, is used as it is (on its device, in its dtype) instead of loading
        path's weights: a benchmark builds random weights in place, too large to save and load."""
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = chat.tokenizer_of(self.processor)
        if model is None:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = chat.load_model(path, self.processor, getattr(torch, model_cfg.dtype)).to(device)
        self.device = model.device
        self.model = model.eval()
        self.max_model_len = model_cfg.max_model_len
        self.batch_size = model_cfg.batch_size
        self.stop_ids = self._stop_ids()
        self._grammars: dict[str, xgrammar.CompiledGrammar] = {}

    def _stop_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        configured = configured if isinstance(configured, list) else [configured]
        stops = {token for token in [self.tokenizer.eos_token_id, *configured] if token is not None}
        if not stops:
            raise ValueError("the model has no eos token: generation could never stop")
        return stops

    @cached_property
    def yes_no_ids(self) -> tuple[list[int], list[int]]:
        return yes_no_token_ids(self.tokenizer)

    @cached_property
    def _grammar_compiler(self) -> xgrammar.GrammarCompiler:
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        info = xgrammar.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(self.stop_ids)
        )
        return xgrammar.GrammarCompiler(info)

    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            key: value.to(self.device, self.model.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in batch.items()
        }

    def _detokenize(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _prefill(self, inputs: dict[str, torch.Tensor]):
        """The forward of a prompt whose KV cache the caller continues. Qwen2-VL keeps the rotary
        offset of the last prompt it saw an image in (rope_deltas) and adds it to every cached
        continuation; a text-only prompt does not reset it, so it is cleared first."""
        if getattr(self.model.base_model, "rope_deltas", None) is not None:
            self.model.base_model.rope_deltas = None
        return self.model(**self._on_device(inputs), use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def _decode(
        self,
        inputs: dict[str, torch.Tensor],
        seeds: list[int],
        params: SamplingParams,
        grammar: xgrammar.CompiledGrammar | None = None,
    ) -> list[list[int]]:
        """len(seeds) continuations of one prompt (a batch of 1), row j drawn with seeds[j]."""
        rows = len(seeds)
        prompt_length = inputs["input_ids"].shape[1]
        budget = min(params.max_new_tokens, self.max_model_len - prompt_length)
        if budget < 1:
            raise ValueError(f"prompt of {prompt_length} tokens leaves no room under max_model_len {self.max_model_len}")
        output = self._prefill(inputs)
        cache = output.past_key_values
        cache.batch_repeat_interleave(rows)
        logits = output.logits[:, -1].float().repeat(rows, 1)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        mask = GrammarMask(grammar, rows) if grammar is not None else None
        tokens: list[list[int]] = [[] for _ in range(rows)]
        running = [True] * rows
        for step in range(budget):
            if mask is not None:
                mask.restrict(logits, running)
            uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
            drawn = draw_tokens(logits, uniforms, params.temperature, params.top_p)
            for row, token in enumerate(drawn.tolist()):
                if running[row]:
                    tokens[row].append(token)
                    if mask is not None:
                        mask.accept(row, token)
                    running[row] = token not in self.stop_ids
            if not any(running) or step == budget - 1:
                break
            output = self.model(input_ids=drawn.unsqueeze(-1), past_key_values=cache, use_cache=True)
            logits = output.logits[:, -1].float()
        return tokens

    def prompt_tokens(self, item: Prompt) -> int:
        return chat.prompt_length(self.processor, item.image, item.text)

    def sample(self, items: list[Prompt], seeds: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        check_sample_args(items, seeds)
        results = []
        for item, item_seeds in zip(items, seeds):
            if not item_seeds:
                results.append([])
                continue
            inputs = chat.encode_prompts(self.processor, [item.image], [item.text])
            token_rows = self._decode(inputs, list(item_seeds), params)
            results.append(
                [
                    Completion(text=self._detokenize(tokens), n_tokens=len(tokens), seed=seed)
                    for tokens, seed in zip(token_rows, item_seeds)
                ]
            )
        return results

    def _compiled_grammar(self, json_schema: dict) -> xgrammar.CompiledGrammar:
        """Compact JSON (no free whitespace), as the vllm backend's structured outputs."""
        key = json.dumps(json_schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = self._grammar_compiler.compile_json_schema(
                json.dumps(grammar_safe_schema(json_schema)), any_whitespace=False, separators=(",", ":")
            )
        return self._grammars[key]

    def generate_json(
        self, prompts: list[str], json_schema: dict, params: SamplingParams, seeds: list[int]
    ) -> list[str]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        grammar = self._compiled_grammar(json_schema)
        outputs = []
        for prompt, seed in zip(prompts, seeds):
            inputs = chat.encode_prompts(self.processor, [None], [prompt])
            outputs.append(self._detokenize(self._decode(inputs, [seed], params, grammar)[0]))
        return outputs

    def _yes_no(self, last_logits: torch.Tensor) -> list[tuple[float, float]]:
        probs = torch.softmax(last_logits.float(), dim=-1)
        yes_ids, no_ids = self.yes_no_ids
        p_yes, p_no = probs[:, yes_ids].sum(dim=-1), probs[:, no_ids].sum(dim=-1)
        return list(zip(p_yes.tolist(), p_no.tolist()))

    @torch.inference_mode()
    def score_yes_no(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        return [self._score_image(item.image, item.questions) for item in items]

    def _score_image(self, image: Image.Image, questions: list[str]) -> list[tuple[float, float]]:
        """One image's questions: its prefix cache once, then the suffixes batch by batch."""
        if not questions:
            return []
        first, token_rows = chat.encode_shared_image_prompts(self.processor, image, questions)
        prefix_length = shared_prefix_length(token_rows)
        image_token = self.processor.image_token_id
        if any(image_token in row[prefix_length:] for row in token_rows):
            raise ValueError("the chat template puts image tokens after the question; prefix reuse needs them first")
        image_inputs = {key: value for key, value in first.items() if key not in chat.TOKEN_KEYS}
        prefix = torch.tensor([token_rows[0][:prefix_length]])
        prefix_cache = self._prefill(
            {"input_ids": prefix, "attention_mask": torch.ones_like(prefix), **image_inputs,
             **chat.token_types(self.processor, first, prefix)}
        ).past_key_values
        results = []
        for start in range(0, len(token_rows), self.batch_size):
            suffixes = [row[prefix_length:] for row in token_rows[start : start + self.batch_size]]
            results += self._score_suffixes(copy.deepcopy(prefix_cache), suffixes)
        return results

    def _score_suffixes(self, cache: Cache, suffixes: list[list[int]]) -> list[tuple[float, float]]:
        """Right-padded suffixes on the repeated prefix cache; read each row's last real position.
        No attention mask: the causal mask already keeps every real token from the padding after
        it, and without one every model numbers the suffix positions on from the cache (Qwen2-VL
        would number them from an attention mask as if it were the whole sequence)."""
        rows, width = len(suffixes), max(len(suffix) for suffix in suffixes)
        input_ids = torch.full((rows, width), chat.pad_token_id(self.tokenizer), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            input_ids[row, : len(suffix)] = torch.tensor(suffix)
        cache.batch_repeat_interleave(rows)
        logits = self.model(input_ids=input_ids.to(self.device), past_key_values=cache, use_cache=True).logits
        last = torch.tensor([len(suffix) - 1 for suffix in suffixes], device=logits.device)
        return self._yes_no(logits[torch.arange(rows, device=logits.device), last])

    @torch.inference_mode()
    def score_yes_no_per_question(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        """The reference score_yes_no must equal: one full forward per question (tests, bench)."""
        results = []
        for item in items:
            scores = []
            for question in item.questions:
                inputs = chat.encode_prompts(self.processor, [item.image], [question])
                scores += self._yes_no(self.model(**self._on_device(inputs), logits_to_keep=1).logits[:, -1])
            results.append(scores)
        return results

    @torch.inference_mode()
    def logprobs(self, items: list[Prompt], responses: list[str]) -> list[tuple[float, int]]:
        if len(items) != len(responses):
            raise ValueError(f"{len(items)} prompts but {len(responses)} responses")
        results: list[tuple[float, int]] = []
        previous, prompt_cache, first_logits = None, None, None
        for item, response in zip(items, responses):
            ids = chat.response_token_ids(self.processor, item.text, response, item.image is not None)
            # Recomputing the prompt would give the same bits; skipping it is only a saving.
            if previous is None or item.text != previous.text or item.image is not previous.image:
                output = self._prefill(chat.encode_prompts(self.processor, [item.image], [item.text]))
                prompt_cache, first_logits = output.past_key_values, output.logits[0]
            previous = item
            results.append((self._response_logprob(prompt_cache, first_logits, ids), len(ids)))
        return results

    def _response_logprob(self, prompt_cache: Cache, first_logits: torch.Tensor, ids: list[int]) -> float:
        """Summed log-prob of `ids` after the cached prompt: the prompt's last logits predict the
        first id, one forward over the others (the last id predicts nothing) the rest. The cache
        is cut back to the prompt afterwards, for the next response."""
        logits = first_logits
        if len(ids) > 1:
            rest = self.model(input_ids=torch.tensor([ids[:-1]], device=self.device), past_key_values=prompt_cache,
                              use_cache=True).logits[0]
            prompt_cache.crop(-(len(ids) - 1))
            logits = torch.cat([first_logits, rest])
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return log_probs.gather(-1, torch.tensor(ids, device=self.device).unsqueeze(-1)).sum().item()

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
