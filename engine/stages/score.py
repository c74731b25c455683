"""Conquer (docs/algorithms.md §3): the labeler's p(yes)/p(no) for every question of every answer.
The whole batch goes to the backend in one call, one item (image, questions) per row that asks
anything: a row's questions share its image prefix, which the backends compute once, and the
backend schedules all rows together. With score.divide_and_conquer = false (an ablation) each
answer is one question about the whole answer instead."""

from __future__ import annotations

from engine.backends.base import ImageQuestions
from engine.claims import labeler_question
from engine.stages.base import ModelStage, row_image


class ScoreStage(ModelStage):
    name = "score"

    def process(self, rows: list[dict]) -> None:
        if not self.cfg.divide_and_conquer:
            for row in rows:
                row["questions"] = [None if qs is None else [self.cfg.whole_answer_question.replace("{answer}", answer)]
                                    for answer, qs in zip(row["answers"], row["questions"])]
        asked = [[labeler_question(q, self.cfg.question_suffix) for qs in row["questions"] if qs for q in qs]
                 for row in rows]
        asking = [i for i, questions in enumerate(asked) if questions]  # a row with none decodes no image
        scored = self.backend.score_yes_no([ImageQuestions(row_image(rows[i]), asked[i]) for i in asking])
        by_row = dict(zip(asking, scored, strict=True))
        for i, row in enumerate(rows):
            self._fill(row, by_row.get(i, []))
        n_questions = sum(len(questions) for questions in asked)
        self.metrics.add(questions=n_questions, tokens=n_questions)

    @staticmethod
    def _fill(row: dict, scores: list[tuple[float, float]]) -> None:
        """p_yes / p_no per answer from the row's (p_yes, p_no) in question order."""
        probs = iter(scores)
        row["p_yes"], row["p_no"] = [], []
        for qs in row["questions"]:
            if qs is None:  # the splitter could not parse this answer: it is not scored
                row["p_yes"].append(None)
                row["p_no"].append(None)
                continue
            answer_probs = [next(probs) for _ in qs]
            row["p_yes"].append([p for p, _ in answer_probs])
            row["p_no"].append([p for _, p in answer_probs])
