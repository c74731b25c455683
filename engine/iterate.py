"""Iterative alignment: generate pairs with M_k, train M_k -> M_{k+1}, repeat (RLAIF-V).

Each stage of each iteration is skipped when its completion marker exists (see engine.run_dir),
so re-running the same command after a crash redoes only unfinished work.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import msgspec

from engine.config import Config
from engine.pipeline import GENERATION_MANIFEST, generate_pairs
from engine.preflight import preflight
from engine.run_dir import SUMMARY, RunDir
from engine.storage import exists, join, read_json, write_json_atomic
from engine.evaluation_format import format_metrics
from engine.progress import readable
from engine.summary import format_summary


def iteration_config(cfg: Config, policy_path: str) -> Config:
    """The config iteration k runs with: the policy is M_k (and, for self-feedback, so is the
    labeler); every other setting is the run's."""
    models = cfg.models
    policy = msgspec.structs.replace(models.policy, path=policy_path)
    labeler = models.labeler
    if models.labeler_follows_policy:
        labeler = msgspec.structs.replace(labeler, path=policy_path)
    return msgspec.structs.replace(cfg, models=msgspec.structs.replace(models, policy=policy, labeler=labeler))


def _generate(cfg: Config, k: int, it_dir: str, echo: Callable[[str], None]) -> dict:
    manifest = join(it_dir, GENERATION_MANIFEST)
    if exists(manifest):
        return read_json(manifest)["summary"]
    return generate_pairs(cfg, k, it_dir, echo=echo)


def _train(cfg: Config, run: RunDir, k: int, n_pairs: int) -> dict:
    """Train M_k on iteration k's pairs; the result names the next policy's model directory.
    The trainer's train_result.json is the completion marker, a skipped training's included."""
    from train.trainer import TrainResult, read_result, train_dpo, write_result

    out_dir = run.checkpoint_dir(k)
    result = read_result(out_dir)
    if result is None and n_pairs == 0:
        # Nothing to learn from: the next iteration samples with the same policy again.
        result = TrainResult(model_dir=cfg.models.policy.path, steps=0, started_at_step=0, skipped="no pairs")
        write_result(result, out_dir)
    elif result is None:
        result = train_dpo(cfg, join(run.iteration_dir(k), "pairs"), cfg.models.policy.path, out_dir, resume=True,
                           iteration=k)
    return asdict(result)


# Where an iteration's held-out evaluations go, under its directory.
EVAL_INITIAL_DIR, EVAL_DIR = "eval_initial", "eval"


def _evaluate_once(cfg: Config, model_path: str, out_dir: str) -> dict:
    """Held-out hallucination metrics of one model (engine.evaluation), once: its
    metrics.json, written last, is the completion marker."""
    from engine.evaluation import METRICS_FILE, evaluate_policy

    marker = join(out_dir, METRICS_FILE)
    if exists(marker):
        return read_json(marker)
    return evaluate_policy(cfg, model_path, out_dir)


def evaluations(cfg: Config, k: int, policy_path: str, trained_path: str, it_dir: str) -> dict:
    """An iteration's (or PPO round's) held-out evaluations for its summary: the trained model's
    ("eval"), and in the first one also the starting policy's ("eval_initial"), the baseline
    every later one compares with; none when eval is off."""
    if not cfg.eval.enabled:
        return {}
    initial = {"eval_initial": _evaluate_once(cfg, policy_path, join(it_dir, EVAL_INITIAL_DIR))} if k == 0 else {}
    return {**initial, "eval": _evaluate_once(cfg, trained_path, join(it_dir, EVAL_DIR))}


EVAL_KEYS = ("chair_s", "chair_i", "cider", "bleu_4", "mean_words", "probe_accuracy", "probe_f1")


def format_iteration(summary: dict) -> str:
    train = summary["train"]
    lines = [format_summary(summary["generation"], title=f"iteration {summary['iteration']}: generation"),
             f"== iteration {summary['iteration']}: training ==",
             f"  {'steps':<28} {train['steps']}"]
    lines += [f"  {key:<28} {readable(value)}" for key, value in sorted(train.get("metrics", {}).items())]
    if train.get("skipped"):
        lines.append(f"  skipped: {train['skipped']}")
    lines.append(f"  {'next policy':<28} {train['model_dir']}")
    for title, metrics in (("policy before", summary.get("eval_initial")), ("policy after", summary.get("eval"))):
        if metrics:
            lines.append(f"== iteration {summary['iteration']}: held-out evaluation, {title} training ==")
            lines += format_metrics(metrics, EVAL_KEYS)
    return "\n".join(lines)


def run_iterations(cfg: Config, allow_config_change: bool = False,
                   echo: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) cfg.run.iterations rounds; returns each iteration's summary."""
    preflight(cfg)
    run = RunDir(cfg)
    run.open(allow_config_change)
    policy_path = cfg.models.policy.path
    summaries = []
    for k in range(cfg.run.iterations):
        it_dir = run.iteration_dir(k)
        summary_url = join(it_dir, SUMMARY)
        if exists(summary_url):
            summary = read_json(summary_url)
        else:
            cfg_k = iteration_config(cfg, policy_path)
            generation = _generate(cfg_k, k, it_dir, echo)
            train = _train(cfg_k, run, k, generation["pairs"])
            summary = {"iteration": k, "policy": policy_path, "generation": generation,
                       "train": {key: value for key, value in train.items() if key != "history"}}
            summary.update(evaluations(cfg_k, k, policy_path, train["model_dir"], it_dir))
            write_json_atomic(summary, summary_url)
        echo(format_iteration(summary))
        summaries.append(summary)
        policy_path = summary["train"]["model_dir"]
    return summaries
