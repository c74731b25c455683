"""The main job: two real iterations on CPU, fail-fast checks, exact resume after SIGKILL, and
`ray job submit` against a real local cluster (the last two are slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from fixtures_ray import ray_head
from kill_and_resume import any_file, kill_when, stable

from engine.config import load_config
from engine.iterate import run_iterations
from engine.schemas import PAIR_SCHEMA
from engine.storage import read_parquet_dir
from engine.tiny_models import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"
# The smoke config, cut to 8 instructions so two iterations take about a minute each on 2 cores.
FAST = ["input.limit=8", "train.checkpoint_every_steps=2"]


def overrides(out_dir: Path) -> list[str]:
    return [*FAST, f"run.output_dir={out_dir}"]


def pairs_of(run_dir: Path, k: int) -> list[dict]:
    """An iteration's pairs by id, without policy_id (a path under the run directory)."""
    rows = read_parquet_dir(str(run_dir / f"iter_{k}" / "pairs"), PAIR_SCHEMA).drop_columns(["policy_id"]).to_pylist()
    return sorted(rows, key=lambda row: row["pair_id"])


def assert_same_run(a: Path, b: Path) -> None:
    for k in (0, 1):
        pa_, pb = pairs_of(a, k), pairs_of(b, k)
        assert [p["pair_id"] for p in pa_] == [p["pair_id"] for p in pb]
        for x, y in zip(pa_, pb):
            for key in x:
                if key.startswith("ref_"):
                    assert x[key] == pytest.approx(y[key], abs=1e-4), (k, x["pair_id"], key)
                else:
                    assert x[key] == y[key], (k, x["pair_id"], key)
        summary_a = json.loads((a / f"iter_{k}" / "summary.json").read_text())
        summary_b = json.loads((b / f"iter_{k}" / "summary.json").read_text())
        assert stable(summary_a) == stable(summary_b)


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory, ray_local, model_cache):
    out = tmp_path_factory.mktemp("iterate")
    cfg = load_config(SMOKE, [*overrides(out), f"models.cache_dir={model_cache}"])
    summaries = run_iterations(cfg, echo=lambda text: None)
    return cfg, out / cfg.run.name, summaries


def test_two_iterations_and_the_second_samples_from_the_first_checkpoint(two_iterations):
    cfg, run_dir, summaries = two_iterations
    assert [s["iteration"] for s in summaries] == [0, 1]
    first, second = summaries
    assert first["generation"]["pairs"] > 0 and first["train"]["steps"] > 0
    trained = first["train"]["model_dir"]
    assert Path(trained) == run_dir / "iter_0" / "checkpoint" / "model"
    assert second["policy"] == trained
    # Iteration 1's pairs were sampled and reference-scored by that checkpoint...
    assert set(pq.read_table(run_dir / "iter_1" / "pairs" / "part-00000.parquet").column("policy_id").to_pylist()) == {trained}
    # ...whose weights are not the initial model's.
    initial = load_file(Path(resolve_model_path(cfg.models.policy.path, cfg.models.cache_dir)) / "model.safetensors")
    after = load_file(Path(trained) / "model.safetensors")
    assert initial.keys() == after.keys()
    assert any(not initial[key].equal(after[key]) for key in initial)
    for summary in summaries:
        on_disk = json.loads((run_dir / f"iter_{summary['iteration']}" / "summary.json").read_text())
        assert on_disk == summary
        train = summary["train"]
        for metric in ("loss", "rewards/accuracies", "rewards/margins"):
            assert metric in train["metrics"]
        assert set(summary["generation"]["pairs_dropped"]) == {
            "score_gap_too_small", "equal_text", "over_per_instruction_cap", "length_balance"}
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["config"]["input"]["limit"] == 8


def test_a_finished_run_is_not_redone_and_a_changed_config_is_refused(two_iterations):
    cfg, run_dir, summaries = two_iterations
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")}
    assert run_iterations(cfg, echo=lambda text: None) == summaries
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")} == before

    from engine.run_dir import ConfigChanged

    changed = load_config(SMOKE, [*overrides(run_dir.parent), f"models.cache_dir={cfg.models.cache_dir}",
                                 "train.beta=0.2", "sample.temperature=0.9"])
    with pytest.raises(ConfigChanged, match="sample.temperature, train.beta"):
        run_iterations(changed, echo=lambda text: None)


def test_an_iteration_without_pairs_marks_training_skipped_in_the_trainers_result_file(tmp_path):
    from engine.iterate import _train
    from engine.run_dir import RunDir
    from train.trainer import RESULT_FILE, read_result

    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    run = RunDir(cfg)
    result = _train(cfg, run, 0, n_pairs=0)
    assert result["skipped"] == "no pairs" and result["steps"] == 0
    assert result["model_dir"] == cfg.models.policy.path  # the next iteration samples with the same policy
    assert json.loads((Path(run.checkpoint_dir(0)) / RESULT_FILE).read_text()) == result
    assert sorted(path.name for path in Path(run.checkpoint_dir(0)).iterdir()) == [RESULT_FILE]
    assert read_result(run.checkpoint_dir(0)).skipped == "no pairs"
    assert _train(cfg, run, 0, n_pairs=5) == result  # the marker holds: no training on a re-run


def job_args(out_dir: Path, cache: str) -> list[str]:
    return [sys.executable, "jobs/iterate.py", *[a for o in overrides(out_dir) for a in ("--set", o)],
            "--set", f"models.cache_dir={cache}"]


def run_job(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/iterate.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, named", [
    (["--set", "sample.temprature=0.5"], "sample.temprature"),
    (["--set", "models.policy.path=/no/such/model"], "models.policy.path '/no/such/model' does not exist"),
    (["--set", "input.path=/no/such/instructions.parquet"], "'/no/such/instructions.parquet' does not exist"),
    (["--set", "input.path=nosuchproto://bucket/x.parquet"], "'nosuchproto://bucket/x.parquet' is not reachable"),
])
def test_bad_configs_fail_fast_naming_the_problem_before_any_model_loads(args, named, tmp_path):
    started = time.perf_counter()
    result = run_job(*args, "--set", f"run.output_dir={tmp_path}")
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for sign_of_work in ("Started a local Ray instance", "Loading weights"):
        assert sign_of_work not in result.stderr + result.stdout
    assert not (tmp_path / "smoke").exists()
    assert time.perf_counter() - started < 60


def test_stage_pools_that_cannot_fit_the_local_cluster_are_an_error_not_a_hang(ray_local, model_cache, tmp_path):
    from engine.config import ConfigError
    from engine.pipeline import generate_pairs

    cfg = load_config(SMOKE, [f"run.output_dir={tmp_path}", f"models.cache_dir={model_cache}",
                              "score.resources.min_actors=2", "score.resources.max_actors=2",
                              "score.resources.num_cpus=1"])
    with pytest.raises(ConfigError, match=r"need 2.75 CPU \(sample 0.25, split 0.25, score 2, pair 0.25\) but this local Ray has 2"):
        generate_pairs(cfg, 0, str(tmp_path / "out"))


def test_pools_that_leave_no_cpu_for_ray_datas_own_tasks_are_an_error_not_a_hang(ray_local, model_cache, tmp_path):
    from engine.config import ConfigError
    from engine.pipeline import generate_pairs

    cfg = load_config(SMOKE, [f"run.output_dir={tmp_path}", f"models.cache_dir={model_cache}",
                              "score.resources.num_cpus=1"])  # 1.75 of 2 CPUs: fits, but validation cannot run
    with pytest.raises(ConfigError, match=r"leave 0.25 of this local Ray's 2 CPUs for Ray Data's read and validation"):
        generate_pairs(cfg, 0, str(tmp_path / "out"))


# ------------------------------------------------------------------ crash-resume (slow)


KILL_POINTS = {
    "mid-generation": lambda it: any_file(it / "rows", "*.parquet"),
    "between-stages": lambda it: (it / "generation.json").exists(),
    "mid-training": lambda it: any_file(it / "checkpoint" / "ds_checkpoint", "checkpoint_*"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_ends_with_the_uninterrupted_runs_pairs_and_summaries(point, two_iterations, tmp_path,
                                                                                 model_cache):
    _, reference, _ = two_iterations
    run_dir = tmp_path / "smoke"
    kill_when(lambda: KILL_POINTS[point](run_dir / "iter_0"), job_args(tmp_path, model_cache))
    assert not (run_dir / "iter_0" / "summary.json").exists()
    result = subprocess.run(job_args(tmp_path, model_cache), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, run_dir)


# ------------------------------------------------------------------ ray job submit (slow)


@pytest.mark.slow
def test_ray_job_submit_runs_the_main_job_on_a_local_cluster(tmp_path, model_cache):
    bin_dir = Path(sys.executable).parent
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    # The entrypoint's `python` is found on the head's PATH, as on a cluster node: this venv's.
    with ray_head(dashboard=True, env={"PATH": path}) as head:
        env = {**os.environ, **head.env, "PATH": path}  # `ray job submit` sends the head's token
        env.pop("RAY_ADDRESS", None)
        submit = [str(bin_dir / "ray"), "job", "submit", f"--address={head.dashboard_url}", "--working-dir", ".",
                  "--", "python", "jobs/iterate.py", "--config", "configs/smoke.toml",
                  *job_args(tmp_path, model_cache)[2:]]
        for _ in range(60):  # the head answers before its job agent is up: "No available agent"
            submitted = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
            if "No available agent" not in submitted.stderr:
                break
            time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    assert "iteration 1: training" in submitted.stdout
    assert (tmp_path / "smoke" / "iter_1" / "summary.json").exists()
