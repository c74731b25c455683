"""Divide (docs/algorithms.md §2): the splitter LLM turns each answer into atomic facts, each
with a yes/no question, under a JSON schema. Output that still fails to parse after
`max_retries` re-draws (new seeds) is diverted per answer with the parser's reason, never read
as no claims; an answer with no claims is diverted as `no_claims` (nothing to check, so
nothing to prefer it for)."""

from __future__ import annotations

from engine.backends.base import SamplingParams
from engine.claims import ClaimsUnparseable, claims_json_schema, parse_claims, splitter_prompt
from engine.seeds import derive_seed
from engine.stages.base import ModelStage


class SplitStage(ModelStage):
    name = "split"
    reads_images = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.schema = claims_json_schema(self.cfg.max_claims, self.cfg.max_claim_chars, self.cfg.quote_sentences)
        self.params = SamplingParams.of(self.cfg)

    @classmethod
    def check_config(cls, cfg) -> None:
        SamplingParams.of(cfg)

    def process(self, rows: list[dict]) -> None:
        # Every (row, answer) still to split; retried together, batch by batch.
        pending = [(row, j) for row in rows for j in range(len(row["answers"]))]
        for row in rows:
            row["facts"] = [None] * len(row["answers"])
            row["questions"] = [None] * len(row["answers"])
            row["quotes"] = [None] * len(row["answers"])
            row["answer_rejects"] = list(row.get("answer_rejects") or [])
        errors: dict[tuple[str, int], str] = {}
        no_claims: list[tuple[dict, int]] = []
        for attempt in range(self.cfg.max_retries + 1):
            if not pending:
                break
            prompts = [splitter_prompt(row["prompt"], row["answers"][j], self.cfg.quote_sentences) for row, j in pending]
            seeds = [derive_seed(self.context.seed, self.context.iteration, row["id"], j, f"split-{attempt}") for row, j in pending]
            outputs = self.backend.generate_json(prompts, self.schema, self.params, seeds)
            still_pending = []
            for (row, j), text in zip(pending, outputs):
                try:
                    claims = parse_claims(text, self.cfg.max_claims)
                except ClaimsUnparseable as exc:
                    errors[(row["id"], j)] = str(exc)
                    still_pending.append((row, j))
                    continue
                if not claims and not self.cfg.score_claimless_answers:
                    no_claims.append((row, j))
                    continue
                row["facts"][j] = [c.fact for c in claims]
                row["questions"][j] = [c.question for c in claims]
                if self.cfg.quote_sentences:
                    row["quotes"][j] = [c.quote for c in claims]
            pending = still_pending
        for row, j in pending:
            row["answer_rejects"].append(
                {"answer_index": j, "stage": self.name, "reason": "unparseable_claims",
                 "detail": f"after {self.cfg.max_retries + 1} attempts: {errors[(row['id'], j)]}"}
            )
        for row, j in no_claims:
            row["answer_rejects"].append(
                {"answer_index": j, "stage": self.name, "reason": "no_claims",
                 "detail": "the splitter found no claim to check: such an answer is neither scored nor paired"}
            )
        self.metrics.add(
            claims=sum(len(f) for row in rows for f in row["facts"] if f is not None),
            rejects=len(pending) + len(no_claims),
            no_claims=len(no_claims),
        )
