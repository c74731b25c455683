"""Decoding parameters, in a module of their own: light to import, so preflight builds every
stage's before anything runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy decoding (seeds are then irrelevant)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def of(cls, section) -> SamplingParams:
        """The decoding settings of a config section (split, bon...) that names all three."""
        return cls(temperature=section.temperature, top_p=section.top_p, max_new_tokens=section.max_new_tokens)
