"""Conquer (docs/algorithms.md §3): the labeler's p(yes)/p(no) for every question of every answer.
All questions of one instruction go to the backend together: they share the image prefix,
which the backends compute once. With score.divide_and_conquer = false (an ablation) each
answer is one question about the whole answer instead."""

from __future__ import annotations

from engine.claims import labeler_question
from engine.stages.base import ModelStage, row_image


class ScoreStage(ModelStage):
    name = "score"

    def process(self, rows: list[dict]) -> None:
        n_questions = 0
        for row in rows:
            if not self.cfg.divide_and_conquer:
                row["questions"] = [None if qs is None else [self.cfg.whole_answer_question.replace("{answer}", answer)]
                                    for answer, qs in zip(row["answers"], row["questions"])]
            per_answer = row["questions"]
            flat = [labeler_question(q, self.cfg.question_suffix) for qs in per_answer if qs for q in qs]
            probs = iter(self.backend.score_yes_no(row_image(row), flat) if flat else [])
            row["p_yes"], row["p_no"] = [], []
            for qs in per_answer:
                if qs is None:  # the splitter could not parse this answer: it is not scored
                    row["p_yes"].append(None)
                    row["p_no"].append(None)
                    continue
                answer_probs = [next(probs) for _ in qs]
                row["p_yes"].append([p for p, _ in answer_probs])
                row["p_no"].append([p for _, p in answer_probs])
            n_questions += len(flat)
        self.metrics.add(questions=n_questions, tokens=n_questions)
