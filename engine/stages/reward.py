"""The reward stage (docs/algorithms.md §9): the token-level reward model's value at every
token of every sampled answer, as PPO's rollouts need them. All answers of a batch go to the
reward backend (engine.backends.reward) in one call, so vLLM schedules them together; a row
diverted earlier, or one without answers, passes untouched."""

from __future__ import annotations

from engine.backends.base import Prompt
from engine.stages.base import ModelStage, row_image


class RewardStage(ModelStage):
    name = "reward"
    backend_kind = "reward"

    def process(self, rows: list[dict]) -> None:
        answered = [row for row in rows if row.get("answers")]
        prompts, responses = [], []
        for row in answered:
            prompt = Prompt(image=row_image(row), text=row["prompt"])  # the image decoded once per row
            prompts += [prompt] * len(row["answers"])
            responses += row["answers"]
        rewards = iter(self.backend.token_rewards(prompts, responses))
        for row in answered:
            row["token_rewards"] = [next(rewards) for _ in row["answers"]]
        self.metrics.add(tokens=sum(len(r) for row in answered for r in row["token_rewards"]))
