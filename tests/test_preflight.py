"""What every job checks before Ray starts or a model loads: the config's cross-field rules
(engine.config_check), input and model paths, and that each failure is one line naming the key."""

import re
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from engine import families
from engine.backends import WEIGHT_BACKENDS
from engine.claims import claims_token_estimate
from engine.config import (Config, EvalConfig, ModelConfig, ModelsConfig, Resources, SampleConfig, SplitConfig,
                           actor_gpus, load_config)
from engine.config_check import check_config
from engine.errors import ConfigError, EngineError, InputError, PreflightError
from engine.preflight import check_model_path, preflight

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"


def _smoke(*overrides: str) -> Config:
    return load_config(SMOKE, overrides)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_check_config(path):
    check_config(load_config(path))


def test_errors_share_one_base_class():
    from engine.run_dir import ConfigChanged

    for error in (ConfigError, InputError, PreflightError, ConfigChanged):
        assert issubclass(error, EngineError)


def test_max_actors_below_min_actors_names_both_keys():
    message = "split.resources.max_actors = 1 must be >= split.resources.min_actors = 2"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(_smoke("split.resources.min_actors=2"))
    check_config(_smoke("split.resources.min_actors=2", "split.resources.max_actors=2"))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape", "/abs", "a\\b"])
def test_run_name_must_be_one_safe_path_component(name):
    with pytest.raises(ConfigError, match=r"run\.name = .* must be a single path component"):
        check_config(msgspec.structs.replace(Config(), run=msgspec.structs.replace(Config().run, name=name)))


def test_tensor_parallel_stage_takes_one_gpu_per_rank():
    tp = ["models.labeler.backend=vllm", "models.labeler.tensor_parallel_size=2"]
    with pytest.raises(ConfigError) as err:
        check_config(_smoke(*tp, "score.resources.num_gpus=2"))
    assert "score.resources.num_gpus = 2" in str(err.value) and "must be 1" in str(err.value)
    assert "models.labeler.tensor_parallel_size = 2" in str(err.value)
    with pytest.raises(ConfigError, match=r"score\.resources\.num_gpus = 0\.5 must be 1"):
        check_config(_smoke(*tp, "score.resources.num_gpus=0.5"))
    check_config(_smoke(*tp, "score.resources.num_gpus=1"))
    # hf ignores tensor_parallel_size: a fractional share stays allowed.
    check_config(_smoke("models.labeler.tensor_parallel_size=2", "score.resources.num_gpus=0.5"))


def test_actor_gpus_counts_every_tensor_parallel_rank():
    vllm = ModelConfig(path="m", backend="vllm", tensor_parallel_size=4)
    assert actor_gpus(Resources(num_gpus=1), vllm) == 4
    assert actor_gpus(Resources(num_gpus=0.5), ModelConfig(path="m", backend="vllm")) == 0.5
    assert actor_gpus(Resources(num_gpus=0.5), ModelConfig(path="m", tensor_parallel_size=4)) == 0.5  # hf


def test_sampling_parameters_are_built_once_for_every_stage():
    # A Config built in code skips the decoding-time range checks; check_config still catches it.
    with pytest.raises(ConfigError, match="sample: temperature must be >= 0, got -1"):
        check_config(Config(sample=SampleConfig(confounded_temperatures=[0.5, -1.0])))
    with pytest.raises(ConfigError, match="eval: max_new_tokens must be >= 1, got 0"):
        check_config(Config(eval=EvalConfig(max_new_tokens=0)))


def test_eval_settings_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"eval\.probe_question"):
        check_config(_smoke('eval.probe_question="Is it there?"'))
    with pytest.raises(ConfigError, match=r"eval\.vocabulary"):
        check_config(_smoke('eval.vocabulary=["imagenet"]'))


def test_the_split_budget_must_hold_the_longest_claim_list_of_a_splitter_llm():
    # The defaults: 16 claims x (2 x 200 + 26) + 13 characters of JSON at 4 per token.
    assert claims_token_estimate(16, 200) == 1708 <= Config().split.max_new_tokens
    with pytest.raises(ConfigError, match=r"split\.max_new_tokens = 1707 .* about 1708 tokens"):
        check_config(Config(split=SplitConfig(max_new_tokens=1707)))
    check_config(Config(split=SplitConfig(max_new_tokens=1708)))
    rule_based = ModelsConfig(splitter=ModelConfig(path="toy:scene-grammar", backend="toy-grammar"))
    check_config(Config(models=rule_based, split=SplitConfig(max_new_tokens=1)))


def test_check_config_is_fast_and_loads_no_model_library():
    code = ("import sys, time; t = time.perf_counter()\n"
            "from engine.config import load_config; from engine.preflight import preflight\n"
            "preflight(load_config('configs/smoke.toml'))\n"
            "assert time.perf_counter() - t < 5, time.perf_counter() - t\n"
            "heavy = {'ray', 'torch', 'transformers', 'vllm', 'deepspeed'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_model_paths_are_checked_only_for_backends_that_load_weights(tmp_path):
    check_model_path("models.splitter.path", ModelConfig(path="toy:scene-grammar", backend="toy-grammar"))
    check_model_path("models.policy.path", ModelConfig(path="tiny:llava"))
    check_model_path("models.policy.path", ModelConfig(path=str(tmp_path)))
    for backend in ("hf", "vllm"):
        with pytest.raises(PreflightError, match=r"models\.labeler\.path '/no/such/model' does not exist"):
            check_model_path("models.labeler.path", ModelConfig(path="/no/such/model", backend=backend))


def test_preflight_names_the_key_of_a_missing_path():
    with pytest.raises(PreflightError, match=r"input\.path 'nope\.parquet' does not exist"):
        preflight(_smoke("input.path=nope.parquet"))
    with pytest.raises(PreflightError, match=r"eval\.heldout_path 'nope\.parquet' does not exist"):
        preflight(_smoke("eval.heldout_path=nope.parquet"))  # smoke evaluates every iteration
    models = ModelsConfig(splitter=ModelConfig(path="/no/splitter"))
    with pytest.raises(PreflightError, match=r"models\.splitter\.path '/no/splitter'"):
        preflight(msgspec.structs.replace(_smoke(), models=models))
    with pytest.raises(PreflightError, match="not reachable"):
        preflight(_smoke("input.path=nosuchprotocol://x"))


# Per job: arguments it needs besides the failure under test, a bad config value, and a missing
# input and model path with the key (or option) the error must name.
def _job_cases(tmp: Path) -> dict[str, dict]:
    pairs = tmp / "pairs"
    pairs.mkdir(exist_ok=True)
    out = ["--out", str(tmp / "out")]
    return {
        "iterate": dict(args=[], bad=("sample.n=1", "sample.n = 1 is out of range: must be >= 2"),
                        missing_input=(["--set", "input.path=/no/input.parquet"], "input.path"),
                        missing_model=(["--set", "models.labeler.path=/no/model"], "models.labeler.path")),
        "generate": dict(args=out, bad=("sample.temperature=-1", "sample.temperature = -1 is out of range"),
                         missing_input=(["--set", "input.path=/no/input.parquet"], "input.path"),
                         missing_model=(["--set", "models.splitter.path=/no/model"], "models.splitter.path")),
        "train": dict(args=[*out, "--pairs", str(pairs)], bad=("train.learning_rate=0", "train.learning_rate = 0"),
                      missing_input=(["--pairs", "/no/pairs"], "--pairs"),
                      missing_model=(["--init", "/no/model"], "--init")),
        "bon": dict(args=out, bad=("bon.top_p=0", "bon.top_p = 0 is out of range: must be in (0, 1]"),
                    missing_input=(["--input", "/no/input.parquet"], "input.path"),
                    missing_model=(["--policy", "/no/model"], "bon.policy")),
        "evaluate": dict(args=out, bad=("eval.max_new_tokens=0", "eval.max_new_tokens = 0"),
                         missing_input=(["--heldout", "/no/heldout.parquet"], "eval.heldout_path"),
                         missing_model=(["--model", "/no/model"], "--model")),
    }


JOBS = ("iterate", "generate", "train", "bon", "evaluate")


@pytest.fixture
def no_ray(monkeypatch):
    """Fails a job that gets as far as starting Ray."""
    import engine.ray_runtime

    def init_ray(*args, **kwargs):
        raise AssertionError("Ray started before preflight failed")

    monkeypatch.setattr(engine.ray_runtime, "init_ray", init_ray)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("case", ["bad", "missing_input", "missing_model", "cross_field"])
def test_every_job_fails_in_one_line_before_ray_starts(job, case, tmp_path, no_ray):
    import importlib

    spec = _job_cases(tmp_path)[job]
    if case == "bad":
        extra, expected = ["--set", spec["bad"][0]], spec["bad"][1]
    elif case == "cross_field":
        extra, expected = ["--set", "score.resources.min_actors=3"], "score.resources.max_actors = 1 must be >= "
    else:
        extra, key = spec[case]
        expected = f"{key} '/no/"
    main = importlib.import_module(f"jobs.{job}").main
    line = _one_line_error(CliRunner().invoke(main, [*spec["args"], *extra]))
    assert expected in line


@pytest.mark.parametrize("job", JOBS)
def test_job_script_reports_a_bad_value_in_seconds(job, tmp_path):
    spec = _job_cases(tmp_path)[job]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, f"jobs/{job}.py", *spec["args"], "--set", spec["bad"][0]],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert out.returncode == 1 and out.stdout == "", (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and spec["bad"][1] in out.stderr
    assert elapsed < 10, f"{job} took {elapsed:.1f} s to report a bad value"


def test_repeated_instruction_ids_are_refused_naming_a_few(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b", "a", "c", "b", "a"], "prompt": ["Describe."] * 6})
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(InputError, match=r"repeats instruction ids \('a' x3, 'b' x2; 2 repeated in all\)"):
        preflight(_smoke(f"input.path={tmp_path / 'rows.parquet'}"))
    preflight(_smoke(f"input.path={tmp_path / 'rows.parquet'}", "input.limit=2"))  # the rows a pass reads
    with pytest.raises(InputError, match="cannot tell the format"):
        preflight(_smoke(f"input.path={tmp_path}"))


def test_jsonl_ids_are_read_as_the_reader_reads_them(tmp_path):
    lines = ['{"id": 7, "prompt": "Describe."}', '{"id": "7", "prompt": "x", "image": "' + "A" * 100_000 + '"}',
             '{"id": "8", "prompt": "Desc', '{"id": "8"}', "", '{"id": true}', '{"prompt": "no id"}', '{"prompt": "no id"}']
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"\('7' x2; 1 repeated in all\)"):  # the cut line's id is not read
        preflight(_smoke(f"input.path={path}"))


def test_a_tiny_family_is_refused_where_it_cannot_serve(monkeypatch):
    with pytest.raises(ConfigError, match=r"models\.policy\.path: unknown tiny model 'tiny:gpt'"):
        check_config(_smoke("models.policy.path=tiny:gpt"))
    with pytest.raises(ConfigError, match=r"models\.labeler\.path = 'tiny:qwen25' is a text-only family, but the "
                                          r"labeler reads images"):
        check_config(_smoke("models.labeler.path=tiny:qwen25"))
    check_config(_smoke("models.splitter.path=tiny:qwen2vl"))  # a multimodal model can split text
    refusing = families.Family("engine.families.qwen2vl:build", multimodal=True, refused={"vllm": "no kernel"})
    monkeypatch.setitem(families.FAMILIES, "qwen2vl", refusing)
    with pytest.raises(ConfigError, match=r"models\.policy: backend = 'vllm' cannot serve 'tiny:qwen2vl': no kernel"):
        check_config(_smoke("models.policy.path=tiny:qwen2vl", "models.policy.backend=vllm"))
    check_config(_smoke("models.policy.path=tiny:qwen2vl"))  # hf serves it


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_a_tiny_family_passes_in_every_role_and_backend_it_serves(name):
    family = families.FAMILIES[name]
    roles = ("policy", "labeler", "splitter") if family.multimodal else ("splitter",)
    for role in roles:
        for backend in sorted(set(WEIGHT_BACKENDS) - set(family.refused)):
            check_config(_smoke(f"models.{role}.path=tiny:{name}", f"models.{role}.backend={backend}"))
