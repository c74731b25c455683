"""Deconfounded sampling (docs/algorithms.md §1): n answers per instruction from the policy, same
decoding parameters, each with its own seed derived from (run seed, iteration, id, j).
sample.confounded_temperatures switches deconfounding off for the ablation.

A row whose prompt, counted in the policy's tokens, leaves no room for sample.max_new_tokens
under its max_model_len is diverted as `prompt_too_long_for_model`: validation counts
characters only, and the backend would otherwise cut the answers short or fail on the row."""

from __future__ import annotations

from engine.backends.base import Prompt, SamplingParams
from engine.flight import divert
from engine.seeds import derive_seed
from engine.stages.base import ModelStage, row_image


class SampleStage(ModelStage):
    name = "sample"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.groups = self.decoding_groups(self.cfg)

    @staticmethod
    def decoding_groups(cfg) -> list[tuple[SamplingParams, list[int]]]:
        """(decoding parameters, the answer indices j decoded with them)."""
        temperatures = cfg.confounded_temperatures or [cfg.temperature]
        return [
            (SamplingParams(temperature=t, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens),
             [j for j in range(cfg.n) if temperatures[j % len(temperatures)] == t])
            for t in dict.fromkeys(temperatures[: cfg.n])
        ]

    @classmethod
    def check_config(cls, cfg) -> None:
        cls.decoding_groups(cfg)

    def answer_seeds(self, instruction_id: str) -> list[int]:
        return [derive_seed(self.context.seed, self.context.iteration, instruction_id, j) for j in range(self.cfg.n)]

    def sample(self, prompts: list[Prompt], seeds: list[list[int]]) -> list[list]:
        """Per prompt, the completion of every seed, each decoded with its answer's parameters."""
        completions = [[None] * len(row_seeds) for row_seeds in seeds]
        for params, indices in self.groups:
            group = self.backend.sample(prompts, [[row_seeds[j] for j in indices] for row_seeds in seeds], params)
            for row_completions, drawn in zip(completions, group):
                for j, completion in zip(indices, drawn):
                    row_completions[j] = completion
        return completions

    def fits_context(self, row: dict, prompt: Prompt) -> bool:
        """True when a whole answer fits after the prompt; otherwise the row is diverted."""
        prompt_tokens, limit = self.backend.prompt_tokens(prompt), self.backend.max_model_len
        if prompt_tokens + self.cfg.max_new_tokens <= limit:
            return True
        divert(row, self.name, "prompt_too_long_for_model",
               f"{prompt_tokens} prompt tokens (image included) + sample.max_new_tokens {self.cfg.max_new_tokens} "
               f"> max_model_len {limit}")
        return False

    def process(self, rows: list[dict]) -> None:
        prompts = [Prompt(image=row_image(row), text=row["prompt"]) for row in rows]
        fitting = [(row, prompt) for row, prompt in zip(rows, prompts) if self.fits_context(row, prompt)]
        rows, prompts = [row for row, _ in fitting], [prompt for _, prompt in fitting]
        seeds = [self.answer_seeds(row["id"]) for row in rows]
        for row, completions in zip(rows, self.sample(prompts, seeds)):
            row["answers"] = [c.text for c in completions]
            row["answer_seeds"] = [c.seed for c in completions]
            row["answer_tokens"] = [c.n_tokens for c in completions]
        self.metrics.add(
            answers=sum(len(row["answers"]) for row in rows),
            tokens=sum(sum(row["answer_tokens"]) for row in rows),
        )
