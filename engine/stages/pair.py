"""Combine (docs/algorithms.md §4): score = -n_rejected, pairs per instruction, and the policy's
teacher-forced log-probs of each pair's two answers (the DPO reference, fixed for the
iteration, so training never holds a second model)."""

from __future__ import annotations

from engine.backends.base import Prompt
from engine.pairing import answer_score, make_pairs
from engine.seeds import derive_seed
from engine.stages.base import ModelStage, row_image


class PairStage(ModelStage):
    name = "pair"

    def process(self, rows: list[dict]) -> None:
        wanted: list[tuple[dict, int]] = []  # (row, answer index) whose reference log-prob is needed
        n_tokens = 0
        for row in rows:
            self._score_and_pair(row)
            needed = sorted({i for pair in row["pairs"] for i in (pair["chosen"], pair["rejected"])})
            wanted += [(row, i) for i in needed]
        if wanted:
            images = {id(row): row_image(row) for row in rows if row["pairs"]}  # one decode per row
            logps = self.backend.logprobs(
                [Prompt(image=images[id(row)], text=row["prompt"]) for row, _ in wanted],
                [row["answers"][i] for row, i in wanted],
            )
            by_answer = {(id(row), i): lp for (row, i), (lp, _) in zip(wanted, logps)}
            n_tokens = sum(n for _, n in logps)
            for row in rows:
                for pair in row["pairs"]:
                    pair["ref_chosen_logps"] = by_answer[(id(row), pair["chosen"])]
                    pair["ref_rejected_logps"] = by_answer[(id(row), pair["rejected"])]
        self.metrics.add(pairs=sum(len(row["pairs"]) for row in rows), tokens=n_tokens)

    def _score_and_pair(self, row: dict) -> None:
        """Scores for parsed answers (None for diverted ones); pairs among the parsed only."""
        row["scores"], row["n_claims"] = [], []
        for yes, no in zip(row["p_yes"], row["p_no"]):
            if yes is None:
                row["scores"].append(None)
                row["n_claims"].append(None)
            else:
                row["scores"].append(answer_score(yes, no)[0])
                row["n_claims"].append(len(yes))
        scored = [j for j, s in enumerate(row["scores"]) if s is not None]
        pairs, dropped = make_pairs(
            [row["answers"][j] for j in scored],
            [row["scores"][j] for j in scored],
            self.cfg.min_score_gap,
            self.cfg.pairs_per_instruction,
            derive_seed(self.context.seed, self.context.iteration, row["id"], 0, "pair"),
        )
        row["pairs"] = [{"chosen": scored[c], "rejected": scored[r]} for c, r in pairs]
        row["dropped_gap"] = dropped.get("gap_too_small", 0)
        row["dropped_equal_text"] = dropped.get("equal_text", 0)
        row["dropped_cap"] = dropped.get("over_per_instruction_cap", 0)
