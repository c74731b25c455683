"""Best-of-N (ALGORITHMS.md 7) as a Ray Data stage: n samples per instruction from the policy
(derived seeds, as the sampler), both models' teacher-forced log-probs of all of a batch's
samples in one call each, rewards and the argmax (engine.bon).

One actor holds the policy and the reference; when they are the same model it is loaded once.
Not a ModelStage: that holds one model and keeps rows in the flight schema, while this stage's
rows end here (BON_ROW_SCHEMA, no image).
"""

from __future__ import annotations

import pyarrow as pa

from engine.backends import make_backend
from engine.backends.base import Prompt, SamplingParams
from engine.bon import BON_ROW_SCHEMA, best_of, implicit_rewards
from engine.config import BonConfig, ModelConfig
from engine.flight import is_live, to_rows
from engine.metrics import StageMetrics
from engine.seeds import derive_seed
from engine.stages.base import row_image

STAGE = "bon"


class BonStage:
    """A callable class for `Dataset.map_batches(..., batch_format="pyarrow")`: validated
    flight rows in, BON_ROW_SCHEMA rows out (diverted rows pass through with their reason)."""

    def __init__(self, policy: ModelConfig, reference: ModelConfig, bon_cfg: BonConfig, cache_dir: str,
                 run_name: str, run_seed: int):
        self.policy = make_backend(policy, cache_dir)
        self.reference = self.policy if reference == policy else make_backend(reference, cache_dir)
        self.cfg = bon_cfg
        self.run_seed = run_seed
        self.params = SamplingParams(temperature=bon_cfg.temperature, top_p=bon_cfg.top_p,
                                     max_new_tokens=bon_cfg.max_new_tokens)
        self.metrics = StageMetrics(STAGE, run_name, 0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = to_rows(batch)
        live = [row for row in rows if is_live(row)]
        if live:
            self.process(live)
        self.metrics.add(rows_in=len(live), rows_out=len(live), answers=sum(len(r["answers"]) for r in live),
                         tokens=sum(sum(r["n_tokens"]) for r in live))
        return pa.Table.from_pylist(rows, schema=BON_ROW_SCHEMA)

    def process(self, rows: list[dict]) -> None:
        prompts = [Prompt(image=row_image(row), text=row["prompt"]) for row in rows]
        seeds = [[derive_seed(self.run_seed, 0, row["id"], j, STAGE) for j in range(self.cfg.n)] for row in rows]
        completions = self.policy.sample(prompts, seeds, self.params)
        flat_prompts = [prompt for prompt, answers in zip(prompts, completions) for _ in answers]
        flat_answers = [answer.text for answers in completions for answer in answers]
        policy_scores = self.policy.logprobs(flat_prompts, flat_answers)
        ref_scores = (policy_scores if self.reference is self.policy
                      else self.reference.logprobs(flat_prompts, flat_answers))
        start = 0
        for row, answers in zip(rows, completions):
            end = start + len(answers)
            policy_logps = [lp for lp, _ in policy_scores[start:end]]
            ref_logps = [lp for lp, _ in ref_scores[start:end]]
            # T from the policy's tokenizer: the count its summed log-prob covers.
            n_tokens = [n for _, n in policy_scores[start:end]]
            rewards = implicit_rewards(policy_logps, ref_logps, n_tokens, self.cfg.beta, self.cfg.length_normalise)
            row.update(answers=[a.text for a in answers], answer_seeds=[a.seed for a in answers], n_tokens=n_tokens,
                       policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, chosen=best_of(rewards))
            start = end
