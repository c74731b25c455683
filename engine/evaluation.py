"""Held-out object-hallucination evaluation of one policy (docs/algorithms.md §8), so a run shows
whether hallucination falls from one iteration to the next.

Input: any instruction file (engine.instruction_io) whose rows carry ground-truth `objects`;
the shipped default is data/smoke/heldout.parquet. The rows' own prompts are not used: every
image gets the same description prompt (eval.prompt), so numbers compare across datasets.
Per image the policy
  - describes it (greedy by default): CHAIR_s, CHAIR_i, coverage, mean length in words;
  - answers yes/no probes "Is there <object> in the image?" about listed objects and about
    objects of the vocabulary the image lacks (drawn with a seed derived from the row id, so
    every iteration is asked the same questions), read from its p_yes / p_no as the labeler
    is: accuracy, precision, recall, F1 (AMBER: "no" is the positive class), yes-ratio.
Where rows carry reference descriptions (`references`), the descriptions' CIDEr-D and BLEU-4
against them (engine.captions) over those rows; None when no row has any.
A row that cannot be evaluated (bad image, no `objects`) is kept in rows.parquet with its
reason and left out of the metrics.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import msgspec
import pyarrow as pa

from engine import hallucination as hal
from engine.captions import caption_scores
from engine.config import Config, EvalConfig, ModelConfig, Resources, actor_gpus
from engine.config_check import check_eval
from engine.errors import InputError
from engine.inputs import check_input
from engine.instruction_io import read_instruction_table
from engine.seeds import derive_seed
from engine.stages.validate import check_row
from engine.storage import join, write_json_atomic, write_parquet_atomic

ROWS_FILE = "rows.parquet"
METRICS_FILE = "metrics.json"

EVAL_ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("reject_reason", pa.string()),
        pa.field("reject_detail", pa.string()),
        pa.field("objects", pa.list_(pa.string())),
        pa.field("references", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("n_words", pa.int32()),
        pa.field("mentions", pa.list_(pa.string())),
        pa.field("hallucinated", pa.list_(pa.string())),
        pa.field("probe_objects", pa.list_(pa.string())),
        pa.field("probe_truths", pa.list_(pa.bool_())),
        pa.field("p_yes", pa.list_(pa.float64())),
        pa.field("p_no", pa.list_(pa.float64())),
    ]
)


def load_heldout(cfg: Config) -> list[dict]:
    """The held-out rows, each validated as the pipeline's input (image read and checked) and
    diverted with a reason when unusable or without ground truth."""
    check_input(cfg.eval.heldout_path, cfg.eval.format)
    try:
        table = read_instruction_table(cfg.eval.heldout_path, cfg.eval.format)
    except ValueError as exc:  # no id/prompt column, unknown format, unreadable JSONL
        raise InputError(f"held-out set {cfg.eval.heldout_path}: {exc}") from None
    if cfg.eval.limit:
        table = table.slice(0, cfg.eval.limit)
    rows = table.to_pylist()
    for row in rows:
        row["prompt"] = cfg.eval.prompt  # what the policy is asked, so validation checks that
        check_row(row, cfg.validate)
        if row.get("reject_reason") is None and row.get("objects") is None:
            row.update(reject_stage="evaluate", reject_reason="missing_objects",
                       reject_detail="the row has no ground-truth `objects` list")
    return rows


def plan_probes(row: dict, vocab: hal.Vocabulary, eval_cfg: EvalConfig, run_seed: int) -> None:
    """Probe objects and their truth: half of probes_per_image (rounded up) drawn from the
    listed objects (all of them if fewer), the rest from the vocabulary's objects absent from
    the image (absent also from what the listed ones imply: a red circle means a circle)."""
    rng = random.Random(derive_seed(run_seed, 0, row["id"], 0, "probe"))
    present = sorted(hal.listed_objects(row["objects"], vocab))
    absent = sorted(vocab.objects - hal.ground_truth_set(row["objects"], vocab))
    k = eval_cfg.probes_per_image
    chosen_present = rng.sample(present, min(k - k // 2, len(present)))
    chosen_absent = rng.sample(absent, min(k - len(chosen_present), len(absent)))
    row["probe_objects"] = chosen_present + chosen_absent
    row["probe_truths"] = [True] * len(chosen_present) + [False] * len(chosen_absent)


def model_pass(model_cfg: ModelConfig, cache_dir: str, eval_cfg: EvalConfig, run_seed: int,
               work: list[dict]) -> list[dict]:
    """Load the policy, describe each image and score its probes, free the model.
    `work` rows: id, image (bytes), questions. Returns description, p_yes, p_no per row."""
    from engine.backends import make_backend
    from engine.backends.base import ImageQuestions, Prompt, SamplingParams
    from engine.stages.base import row_image

    backend = make_backend(model_cfg, cache_dir)
    try:
        images = [row_image(row) for row in work]
        params = SamplingParams(temperature=eval_cfg.temperature, max_new_tokens=eval_cfg.max_new_tokens)
        seeds = [[derive_seed(run_seed, 0, row["id"], 0, "evaluate")] for row in work]
        answers = backend.sample([Prompt(image=image, text=eval_cfg.prompt) for image in images], seeds, params)
        scored = backend.score_yes_no([ImageQuestions(image, row["questions"]) for image, row in zip(images, work)])
        return [{"description": answer.text, "p_yes": [y for y, _ in scores], "p_no": [n for _, n in scores]}
                for (answer,), scores in zip(answers, scored)]
    finally:
        backend.close()


def placed(resources: Resources, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) as a Ray task with `resources` when Ray is up (on a cluster the driver has no
    GPU; the task lands where the resources are), else in this process."""
    import ray

    if not ray.is_initialized():
        return fn(*args)
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.accelerator_type:
        options["accelerator_type"] = resources.accelerator_type
    return ray.get(ray.remote(fn).options(**options).remote(*args))


def score_rows(rows: list[dict], vocab: hal.Vocabulary) -> dict:
    """Fill mentions / hallucinated / n_words of the evaluated rows; their metrics."""
    for row in rows:
        row["mentions"] = hal.extract_mentions(row["description"], vocab)
        row["hallucinated"] = hal.hallucinated(row["mentions"], hal.ground_truth_set(row["objects"], vocab))
        row["n_words"] = len(row["description"].split())
    chair = hal.chair([r["mentions"] for r in rows], [r["hallucinated"] for r in rows])
    truths = [t for r in rows for t in r["probe_truths"]]
    answers = [hal.says_yes(y, n) for r in rows for y, n in zip(r["p_yes"], r["p_no"])]
    probes = hal.probe_metrics(truths, answers)
    referenced = [r for r in rows if r.get("references")]
    captions = caption_scores([r["description"] for r in referenced], [r["references"] for r in referenced])
    return {
        "chair_s": chair["chair_s"],
        "chair_i": chair["chair_i"],
        "responses_hallucinated": chair["responses_hallucinated"],
        "mentions": chair["mentions"],
        "mentions_hallucinated": chair["mentions_hallucinated"],
        "coverage": hal.coverage([r["mentions"] for r in rows],
                                 [hal.listed_objects(r["objects"], vocab) for r in rows]),
        "mean_words": sum(r["n_words"] for r in rows) / len(rows) if rows else 0.0,
        **captions,
        "rows_with_references": len(referenced),
        "probes": probes["probes"],
        "probe_accuracy": probes["accuracy"],
        "probe_precision": probes["precision"],
        "probe_recall": probes["recall"],
        "probe_f1": probes["f1"],
        "probe_yes_ratio": probes["yes_ratio"],
        # AMBER's single score, (1 - CHAIR + F1) / 2, with its mention-level CHAIR.
        "amber_score": (1 - chair["chair_i"] + probes["f1"]) / 2,
    }


def evaluate_policy(cfg: Config, model_path: str, out_dir: str | None = None) -> dict:
    """Evaluate the model at `model_path` (a directory or tiny:<name>, run with
    models.policy's backend settings) on cfg.eval's held-out set; write rows.parquet and
    metrics.json (last) to out_dir if given; return the metrics."""
    start = time.perf_counter()
    check_eval(cfg.eval)
    rows = load_heldout(cfg)
    live = [row for row in rows if row.get("reject_reason") is None]
    groups = cfg.eval.vocabulary or hal.groups_for(row["objects"] for row in live)
    vocab = hal.load_vocabulary(groups)
    for row in live:
        plan_probes(row, vocab, cfg.eval, cfg.run.seed)
    if live:
        model_cfg = msgspec.structs.replace(cfg.models.policy, path=model_path)
        work = [{"id": row["id"], "image": row["image"],
                 "questions": [cfg.eval.probe_question.format(object=hal.with_article(name))
                               for name in row["probe_objects"]]}
                for row in live]
        resources = msgspec.structs.replace(cfg.eval.resources, num_gpus=actor_gpus(cfg.eval.resources, model_cfg))
        for row, result in zip(live, placed(resources, model_pass, model_cfg, cfg.models.cache_dir,
                                            cfg.eval, cfg.run.seed, work)):
            row.update(result)
    metrics = {
        "model": model_path,
        "heldout": cfg.eval.heldout_path,
        "vocabulary": list(groups),
        "rows": len(rows),
        "rows_evaluated": len(live),
        "rows_diverted": len(rows) - len(live),
        "unknown_objects": sorted({name for row in live for name in row["objects"] if vocab.canonical(name) is None}),
        **score_rows(live, vocab),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    if out_dir is not None:
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=EVAL_ROW_SCHEMA), join(out_dir, ROWS_FILE))
        write_json_atomic(metrics, join(out_dir, METRICS_FILE))
    return metrics
