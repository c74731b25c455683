"""Backends that answer at once with canned output, and the generation stages wired to them,
so a pass measures the pipeline's own cost (Ray Data, row conversion, image decoding,
writing) with no model time at all.

The answers differ per seed and the labeler rejects one colour, so the canned pass still
makes pairs and writes every kind of output a real pass does. The stages are the engine's own
classes; only the backends their loaders would build are replaced, inside the actor.
"""

from __future__ import annotations

import json

from engine.backends.base import Completion, ImageQuestions, Prompt, SamplingParams
from engine.pipeline import STAGES
from engine.stages.base import StageSpec

ANSWERS = ("There is a red circle in the top left.", "There is a blue square in the center.",
           "There is a green star at the bottom.")
REJECTED_COLOUR = "blue"


class InstantBackend:
    """The backend protocol of engine.backends.base, answered from canned text."""

    max_model_len = 1_000_000  # no prompt is too long for canned answers

    def __init__(self, path: str = "", model_cfg=None) -> None:
        pass

    def prompt_tokens(self, item: Prompt) -> int:
        return len(item.text.split())

    def sample(self, items: list[Prompt], seeds: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return [[Completion(text=ANSWERS[seed % len(ANSWERS)], n_tokens=8, seed=seed) for seed in row] for row in seeds]

    def generate_json(self, prompts: list[str], json_schema: dict, params: SamplingParams, seeds: list[int]) -> list[str]:
        """One claim per answer: the answer's own sentence (the splitter prompt quotes it)."""
        outputs = []
        for prompt in prompts:
            answer = next(text for text in ANSWERS if text in prompt)
            outputs.append(json.dumps({"claims": [{"fact": answer, "question": f"Is it true that {answer[:-1].lower()}?"}]}))
        return outputs

    def score_yes_no(self, items: list[ImageQuestions]) -> list[list[tuple[float, float]]]:
        return [[(0.1, 0.9) if REJECTED_COLOUR in question else (0.9, 0.1) for question in item.questions]
                for item in items]

    def logprobs(self, items: list[Prompt], responses: list[str]) -> list[tuple[float, int]]:
        return [(-float(len(response)), len(response.split()) + 1) for response in responses]

    def close(self) -> None:
        pass


def _instant(stage_class: type) -> type:
    """stage_class with every role's backend an InstantBackend: the pipeline's loaders (which
    would load models) are never called."""

    def __init__(self, *, backends, **kwargs):
        stage_class.__init__(self, backends={role: InstantBackend for role in backends}, **kwargs)

    return type(f"Instant{stage_class.__name__}", (stage_class,), {"__init__": __init__, "__module__": __name__})


InstantSampleStage, InstantSplitStage, InstantScoreStage, InstantPairStage = (_instant(spec.stage_class) for spec in STAGES)
INSTANT_STAGES = tuple(
    StageSpec(spec.name, stage_class, spec.models, spec.section)
    for spec, stage_class in zip(STAGES, (InstantSampleStage, InstantSplitStage, InstantScoreStage, InstantPairStage))
)
