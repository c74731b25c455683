"""Best-of-N (docs/algorithms.md §7) as a model stage holding two roles, the policy and the
reference: n samples per instruction from the policy (derived seeds, as the sampler), both
models' teacher-forced log-probs of all of a batch's samples in one call each, rewards and
the pick (engine.bon). When policy and reference are the same model it is loaded once."""

from __future__ import annotations

from engine.backends.base import Prompt, SamplingParams
from engine.bon import best_of, implicit_rewards
from engine.seeds import derive_seed
from engine.stages.base import ModelStage, row_image


class BonStage(ModelStage):
    name = "bon"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.params = SamplingParams.of(self.cfg)

    @classmethod
    def check_config(cls, cfg) -> None:
        SamplingParams.of(cfg)

    def process(self, rows: list[dict]) -> None:
        policy, reference = self.backends["policy"], self.backends["reference"]
        prompts = [Prompt(image=row_image(row), text=row["prompt"]) for row in rows]
        seeds = [[derive_seed(self.context.seed, self.context.iteration, row["id"], j, self.name)
                  for j in range(self.cfg.n)] for row in rows]
        completions = policy.sample(prompts, seeds, self.params)
        flat_prompts = [prompt for prompt, answers in zip(prompts, completions) for _ in answers]
        flat_answers = [answer.text for answers in completions for answer in answers]
        policy_scores = policy.logprobs(flat_prompts, flat_answers)
        ref_scores = policy_scores if reference is policy else reference.logprobs(flat_prompts, flat_answers)
        start = 0
        for row, answers in zip(rows, completions):
            end = start + len(answers)
            policy_logps = [lp for lp, _ in policy_scores[start:end]]
            ref_logps = [lp for lp, _ in ref_scores[start:end]]
            # T from the policy's tokenizer: the count its summed log-prob covers.
            n_tokens = [n for _, n in policy_scores[start:end]]
            rewards = implicit_rewards(policy_logps, ref_logps, n_tokens, self.cfg.beta, self.cfg.length_normalise)
            row.update(answers=[a.text for a in answers], answer_seeds=[a.seed for a in answers],
                       answer_tokens=n_tokens, policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards,
                       best_answer=best_of(rewards))
            start = end
        self.metrics.add(answers=sum(len(answers) for answers in completions),
                         tokens=sum(n for _, n in policy_scores))
