"""Deconfounded sampling (docs/algorithms.md §1): n answers per instruction from the policy, same
decoding parameters, each with its own seed derived from (run seed, iteration, id, j).
sample.confounded_temperatures switches deconfounding off for the ablation."""

from __future__ import annotations

from engine.backends.base import Prompt, SamplingParams
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

    def process(self, rows: list[dict]) -> None:
        prompts = [Prompt(image=row_image(row), text=row["prompt"]) for row in rows]
        seeds = [self.answer_seeds(row["id"]) for row in rows]
        for row, completions in zip(rows, self.sample(prompts, seeds)):
            row["answers"] = [c.text for c in completions]
            row["answer_seeds"] = [c.seed for c in completions]
            row["answer_tokens"] = [c.n_tokens for c in completions]
        self.metrics.add(
            answers=sum(len(row["answers"]) for row in rows),
            tokens=sum(sum(row["answer_tokens"]) for row in rows),
        )
