"""The GPU check: one run that measures the engine's model-side optimisations on
7B-shaped random-weight LLaVA-1.5 models against the strongest plain transformers baselines
(bench/baselines.py), all in this process, and prints one JSON document and a table.

Parts, each under its own time budget (a part that would start past the run's budget is
skipped with a note; one that runs over takes fewer repeats):
  sampling  HFBackend.sample with n seeds vs generate(num_return_sequences=n) on all prompts
  scoring   HFBackend.score_yes_no (prefix reuse) vs a batched full prefill, with the FLOP
            limit of reuse computed from the token counts
  logprobs  HFBackend.logprobs: reference log-probs per second
  dpo       one DPO step per ZeRO stage (0-3), seconds and peak memory (needs DeepSpeed);
            the 7B width at --dpo-layers text layers, so all four stages fit one GPU
  vllm      the same sampling and scoring through VLLMBackend, dummy weights (needs vLLM)
Needs only torch and transformers; nothing is downloaded. --tiny runs the tiny:llava sizes,
on CPU the test suite's check of this script (tests/test_gpu_check.py).

    python -m bench.gpu_check                 # on a CUDA machine
    python -m bench.gpu_check --tiny --skip vllm --json out.json
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import signal
import tempfile
import time

import click
import torch
from transformers import AutoProcessor

from bench import dpo_step
from bench.baselines import full_prefill_yes_no, generate_n, prefix_flop_limit
from bench.inputs import claim_questions, noise_images
from bench.llava_shapes import LLAVA_7B, TINY, LlavaShape, build_model, describe, parameters, write_config
from bench.timing import best_seconds
from engine.backends.base import ImageQuestions, Prompt, SamplingParams
from engine.backends.hf import HFBackend
from engine.config import ModelConfig

PARTS = ("sampling", "scoring", "logprobs", "dpo", "vllm")
# Seconds each part may take on a GPU (model building included). Their sum bounds the run:
# with start-up it stays under 8 minutes.
BUDGETS = {"sampling": 70, "scoring": 60, "logprobs": 30, "dpo": 120, "vllm": 160}
RESPONSE = ("There is a red circle in the top left of the image. There is a blue square in the center. "
            "There are two green triangles in the bottom right. ")


class Check:
    """What the parts share: the shape, device, config directory, the HF backend, inputs."""

    def __init__(self, shape: LlavaShape, device: torch.device, dtype: torch.dtype, config_dir: str, opts: dict):
        self.shape, self.device, self.dtype, self.config_dir, self.opts = shape, device, dtype, config_dir, opts
        self.config = write_config(shape, config_dir)
        self.model_cfg = ModelConfig(path=config_dir, dtype=str(dtype).removeprefix("torch."),
                                     batch_size=opts["questions"], gpu_memory_utilization=0.5)
        self.backend: HFBackend | None = None
        self.images = noise_images(max(opts["prompts"], opts["images"]), shape.image_size)
        self.questions = claim_questions(opts["questions"])
        self.prompts = [Prompt(image, "Describe the image in detail.") for image in self.images[: opts["prompts"]]]
        self.seeds = [[1000 * i + j for j in range(opts["n"])] for i in range(opts["prompts"])]
        self.params = SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=opts["max_new_tokens"])
        self.baseline_seconds: dict[str, float] = {}

    def hf(self) -> HFBackend:
        if self.backend is None:
            model = build_model(self.config, self.device, self.dtype)
            self.backend = HFBackend(self.config_dir, self.model_cfg, model=model)
        return self.backend

    def close_hf(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def processor(self):
        return AutoProcessor.from_pretrained(self.config_dir)

    def score_items(self) -> list[ImageQuestions]:
        """Every scored image with all the questions: one score_yes_no call, as a stage makes."""
        return [ImageQuestions(image, self.questions) for image in self.images[: self.opts["images"]]]

    def best(self, fn, deadline: float) -> float:
        """Best of the repeats; the caller has run fn once already (warm-up)."""
        return best_seconds(fn, self.opts["repeats"], self.device, deadline)


def sampling(check: Check, deadline: float) -> dict:
    backend, n = check.hf(), check.opts["n"]
    tokens = sum(c.n_tokens for row in backend.sample(check.prompts, check.seeds, check.params) for c in row)
    torch.manual_seed(0)
    baseline_tokens = generate_n(backend, check.prompts, n, check.params)
    engine_s = check.best(lambda: backend.sample(check.prompts, check.seeds, check.params), deadline)
    baseline_s = check.best(lambda: generate_n(backend, check.prompts, n, check.params), deadline)
    check.baseline_seconds["sampling"] = baseline_s / baseline_tokens  # per token, for vLLM's ratio
    return {"prompts": len(check.prompts), "n": n, "max_new_tokens": check.params.max_new_tokens,
            "engine_seconds": round(engine_s, 3), "engine_tokens": tokens,
            "baseline_seconds": round(baseline_s, 3), "baseline_tokens": baseline_tokens,
            "engine_tokens_per_s": round(tokens / engine_s, 1), "baseline_tokens_per_s": round(baseline_tokens / baseline_s, 1),
            "ratio": round((tokens / engine_s) / (baseline_tokens / baseline_s), 2)}


def scoring(check: Check, deadline: float) -> dict:
    backend, images, questions = check.hf(), check.images[: check.opts["images"]], check.questions
    batch, items = check.opts["baseline_batch"], check.score_items()
    engine = backend.score_yes_no(items)
    baseline = full_prefill_yes_no(backend, images, questions, batch)
    gap = max(abs(a - b) for e, f in zip(engine, baseline) for pe, pf in zip(e, f) for a, b in zip(pe, pf))
    engine_s = check.best(lambda: backend.score_yes_no(items), deadline)
    baseline_s = check.best(lambda: full_prefill_yes_no(backend, images, questions, batch), deadline)
    scored = len(images) * len(questions)
    check.baseline_seconds["scoring"] = baseline_s / scored
    return {"images": len(images), "questions_per_image": len(questions), "baseline_batch": batch,
            "engine_seconds": round(engine_s, 3), "baseline_seconds": round(baseline_s, 3),
            "engine_questions_per_s": round(scored / engine_s, 1), "baseline_questions_per_s": round(scored / baseline_s, 1),
            "ratio": round(baseline_s / engine_s, 2), "max_abs_diff": float(f"{gap:.2e}"),
            **prefix_flop_limit(backend.processor, images[0], questions)}


def logprobs(check: Check, deadline: float) -> dict:
    backend = check.hf()
    items = [prompt for prompt in check.prompts for _ in range(check.opts["n"])]
    responses = [RESPONSE] * len(items)
    tokens = sum(n for _, n in backend.logprobs(items, responses))
    seconds = check.best(lambda: backend.logprobs(items, responses), deadline)
    return {"sequences": len(items), "response_tokens": tokens, "batch_size": backend.batch_size,
            "seconds": round(seconds, 3), "sequences_per_s": round(len(items) / seconds, 1),
            "response_tokens_per_s": round(tokens / seconds, 1)}


def dpo(check: Check, deadline: float) -> dict:
    check.close_hf()  # the training model needs the memory
    shape = check.shape.with_layers(min(check.opts["dpo_layers"], check.shape.layers))
    config = write_config(shape, tempfile.mkdtemp(prefix="dpo-shape-"))
    build = functools.partial(build_model, config, check.device, torch.float32)  # fp32 master weights, as the trainer
    processor = check.processor()
    rows = dpo_step.pair_rows(check.images[: check.opts["dpo_pairs"]], "Describe the image in detail.", RESPONSE,
                              RESPONSE[::-1].strip())
    n_params = parameters(build_model(config, torch.device("meta"), torch.float32))
    stages = dpo_step.step_per_zero_stage(build, processor, rows, check.device, (0, 1, 2, 3), deadline)
    return {"text_layers": shape.layers, "parameters_billion": round(n_params / 1e9, 3), "pairs_per_step": len(rows),
            **stages}


def vllm(check: Check, deadline: float) -> dict:
    check.close_hf()
    import vllm as vllm_module

    from engine.backends.vllm import VLLMBackend

    with dummy_weights(vllm_module):
        backend = VLLMBackend(check.config_dir, check.model_cfg)
    try:
        items = check.score_items()
        tokens = sum(c.n_tokens for row in backend.sample(check.prompts, check.seeds, check.params) for c in row)
        sample_s = check.best(lambda: backend.sample(check.prompts, check.seeds, check.params), deadline)
        backend.score_yes_no(items)  # warm-up
        score_s = check.best(lambda: backend.score_yes_no(items), deadline)
    finally:
        backend.close()
    scored = sum(len(item.questions) for item in items)
    out = {"sample_seconds": round(sample_s, 3), "sample_tokens": tokens, "sample_tokens_per_s": round(tokens / sample_s, 1),
           "score_seconds": round(score_s, 3), "score_questions_per_s": round(scored / score_s, 1)}
    if "sampling" in check.baseline_seconds:
        out["sample_ratio_vs_generate"] = round(check.baseline_seconds["sampling"] * tokens / sample_s, 2)
    if "scoring" in check.baseline_seconds:
        out["score_ratio_vs_full_prefill"] = round(check.baseline_seconds["scoring"] * scored / score_s, 2)
    return out


@contextlib.contextmanager
def dummy_weights(vllm_module):
    """vLLM with random ("dummy") weights: only the config directory exists."""
    original = vllm_module.LLM
    vllm_module.LLM = functools.partial(original, load_format="dummy")
    try:
        yield
    finally:
        vllm_module.LLM = original


PART_FUNCTIONS = {"sampling": sampling, "scoring": scoring, "logprobs": logprobs, "dpo": dpo, "vllm": vllm}
NEEDS = {"dpo": "deepspeed", "vllm": "vllm"}


class PartTimeout(Exception):
    """A part ran past its hard limit (1.5x its budget, or the end of the run's budget)."""


def _alarm(signum, frame):
    raise PartTimeout("ran past its hard time limit")


def missing_module(part: str) -> str | None:
    if part not in NEEDS:
        return None
    try:
        importlib.import_module(NEEDS[part])
    except Exception as exc:  # ImportError, or a broken install
        return f"{NEEDS[part]} not importable ({type(exc).__name__}: {exc})"
    return None


def run_parts(check: Check, parts: tuple[str, ...], skip: tuple[str, ...]) -> dict:
    """Each part in order under its budget; a failing part is reported, the others still run."""
    report: dict = {}
    end = time.monotonic() + sum(BUDGETS[part] for part in parts if part not in skip)
    previous = signal.signal(signal.SIGALRM, _alarm)
    for part in parts:
        remaining = end - time.monotonic()
        reason = ("--skip" if part in skip else missing_module(part)
                  or (None if remaining >= BUDGETS[part] / 2 else "the run's time budget is spent"))
        if reason:
            report[part] = {"skipped": reason}
            continue
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(1.0, min(1.5 * BUDGETS[part], remaining)))
        try:
            report[part] = PART_FUNCTIONS[part](check, started + min(BUDGETS[part], remaining))
        except Exception as exc:  # noqa: BLE001 -- one part failing must not lose the others' figures
            report[part] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        report[part]["part_seconds"] = round(time.monotonic() - started, 1)
    signal.signal(signal.SIGALRM, previous)
    return report


def table(report: dict) -> str:
    parts = report["parts"]
    lines = [f"{'part':<22}{'engine':>22}{'baseline':>22}{'ratio':>8}  note"]

    def line(name, engine="", baseline="", ratio="", note=""):
        lines.append(f"{name:<22}{engine:>22}{baseline:>22}{ratio:>8}  {note}")

    for part in PARTS:
        figures = parts[part]
        if "skipped" in figures or "error" in figures:
            line(part, note=figures.get("skipped") or figures["error"])
        elif part == "sampling":
            line(part, f"{figures['engine_tokens_per_s']} tok/s", f"{figures['baseline_tokens_per_s']} tok/s",
                 str(figures["ratio"]), "baseline: generate(num_return_sequences=n)")
        elif part == "scoring":
            line(part, f"{figures['engine_questions_per_s']} q/s", f"{figures['baseline_questions_per_s']} q/s",
                 str(figures["ratio"]), f"baseline: batched full prefill; FLOP limit {figures['flop_limit']}x")
        elif part == "logprobs":
            line(part, f"{figures['sequences_per_s']} seq/s", note=f"{figures['response_tokens_per_s']} response tok/s")
        elif part == "dpo":
            for stage in range(4):
                step = figures.get(f"zero{stage}", {})
                line(f"dpo zero{stage}", f"{step['step_seconds']} s/step" if "step_seconds" in step else "",
                     note=(f"peak {step['peak_gib']} GiB" if step.get("peak_gib") is not None else "")
                     + (step.get("skipped") or step.get("error") or "")
                     + f" ({figures['parameters_billion']}B params)")
        elif part == "vllm":
            line("vllm sampling", f"{figures['sample_tokens_per_s']} tok/s", ratio=str(figures.get("sample_ratio_vs_generate", "")),
                 note="ratio vs generate")
            line("vllm scoring", f"{figures['score_questions_per_s']} q/s", ratio=str(figures.get("score_ratio_vs_full_prefill", "")),
                 note="ratio vs batched full prefill")
    return "\n".join(lines)


@click.command()
@click.option("--tiny", is_flag=True, help="tiny:llava sizes (the CPU test of this script).")
@click.option("--skip", multiple=True, type=click.Choice(PARTS), help="Parts to leave out (repeatable).")
@click.option("--json", "json_path", default=None, help="Also write the JSON document here.")
@click.option("--dpo-layers", default=8, show_default=True, help="Text layers of the DPO model (7B width).")
def main(tiny, skip, json_path, dpo_layers):
    if not tiny and not torch.cuda.is_available():
        raise click.UsageError("the 7B shapes need a CUDA GPU; --tiny runs the tiny sizes here")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if tiny else LLAVA_7B
    opts = dict(prompts=2 if tiny else 4, n=4 if tiny else 8, max_new_tokens=8 if tiny else 64, images=4 if tiny else 8,
                questions=16, baseline_batch=64, repeats=1 if tiny else 3, dpo_layers=dpo_layers, dpo_pairs=2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as config_dir:
        check = Check(shape, device, dtype, config_dir, opts)
        parts = run_parts(check, PARTS, tuple(skip))
        check.close_hf()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "shape": describe(shape),
              "options": opts, "wall_seconds": round(time.monotonic() - started, 1), "parts": parts}
    document = json.dumps(report, indent=1)
    print(document)
    print(table(report))
    if json_path:
        with open(json_path, "w") as f:
            f.write(document)


if __name__ == "__main__":
    main()
