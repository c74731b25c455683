"""bench/gpu_check.py at the tiny sizes on CPU, so the GPU check runs correctly the first time
it meets a GPU: every part but vLLM (whose CPU start-up alone takes minutes) runs through
the same code and reports sane figures. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoProcessor

from bench.baselines import prefix_flop_limit
from bench.inputs import claim_questions, noise_images
from bench.llava_shapes import LLAVA_7B, write_config

REPO = Path(__file__).resolve().parent.parent


def test_every_part_reports_its_figures_at_tiny_shapes(tmp_path):
    out = tmp_path / "check.json"
    subprocess.run([sys.executable, "-m", "bench.gpu_check", "--tiny", "--skip", "vllm", "--json", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=900)
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == {"sampling", "scoring", "logprobs", "dpo", "vllm"}
    sampling = parts["sampling"]
    assert sampling["engine_tokens"] > 0 and sampling["baseline_tokens"] > 0 and sampling["ratio"] > 0
    scoring = parts["scoring"]
    assert scoring["ratio"] > 0 and scoring["max_abs_diff"] < 1e-5
    assert scoring["prefix_tokens"] > 16 and 1 < scoring["flop_limit"] < scoring["questions_per_image"]
    logprobs = parts["logprobs"]
    assert logprobs["sequences_per_s"] > 0 and logprobs["response_tokens"] > logprobs["sequences"]
    for stage in range(4):
        step = parts["dpo"][f"zero{stage}"]
        assert step["step_seconds"] > 0 and step["peak_gib"] is None, (stage, step)  # no GPU memory on CPU
    assert parts["vllm"] == {"skipped": "--skip"}


def test_the_flop_limit_of_prefix_reuse_at_llava_7b_shapes(tmp_path):
    """576 image tokens plus the chat header against 16 questions of about 30 tokens."""
    write_config(LLAVA_7B, tmp_path)
    limit = prefix_flop_limit(AutoProcessor.from_pretrained(tmp_path), noise_images(1, 336)[0], claim_questions(16))
    assert 576 < limit["prefix_tokens"] < 600
    assert 25 < limit["mean_question_tokens"] < 35
    assert 9 < limit["flop_limit"] < 10
