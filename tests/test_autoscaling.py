"""Autoscaling and node loss on a local multi-node Ray cluster (slow).

The head (1 CPU, no GPU) runs Ray's real autoscaler on the fake multi-node provider
(fixtures_ray.ray_head with worker_types): its A100 "nodes" are local raylets with 1 CPU and
1 logical GPU, 0 to 3 of them. `ray job submit` runs jobs/iterate.py with the model stages
asking for GPU shares of accelerator type A100, as configs/a100.toml does. The GPUs are
logical: torch here is a CPU build, so the hf backend runs on CPU on every node, and the
pairs must equal those of a local run of the same config without GPU requests.

While the job runs the test samples Ray's state API (alive nodes, alive actors per stage) and
the Prometheus export of every node Prometheus would scrape (Ray Data's per-operator actor
counts, the engine's rows counters): the series the dashboard plots. cluster/README.md has the timings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fixtures_ray import ray_head

from engine.pipeline import STAGES
from engine.schemas import PAIR_SCHEMA, instruction_stats_schema
from engine.storage import read_parquet_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
A100_WORKER = {"resources": {"CPU": 1, "GPU": 1, "accelerator_type:A100": 1}, "max_workers": 3}
# A node is idle from its start until an actor lands on it; here a node takes longer than 6 s
# to come up, so with 0.1 the node Ray Data asked for was gone before a pool could grow onto it.
IDLE_TIMEOUT_MINUTES = 0.5
DASHBOARD = REPO / "cluster" / "grafana" / "rlaifv-dashboard.json"
# All 16 smoke instructions, one iteration, a short training, no held-out evaluation; 32
# answers of up to 160 tokens each (a random-weight model nearly always runs to the limit), so
# that the pools' backlog lasts longer than a new node and actor take to start here: with 48
# tokens the pass ended before a second actor came up, and with 8 answers, on an idle box, the
# sample pool's second actor was still pending when the pass ended; 16 answers sufficed until
# the pipeline's own overhead fell (bench/README.md), then the pass was over in 125 s with the
# second actor still pending.
JOB = ["input.limit=16", "run.iterations=1", "eval.enabled=false", "train.epochs=1", "sample.n=32",
       "sample.max_new_tokens=160"]
# sample grows from 1 to 3 actors of half a GPU, split from 1 to 2 of a quarter, score and
# pair keep one of a quarter: 1.25 GPUs (2 nodes) at the minimum, 2.5 (3 nodes) at the
# maximum. One row per sample batch, so the pool has a backlog to grow on.
POOLS = {"sample": (1, 3, 0.5, 1), "split": (1, 2, 0.25, 2), "score": (1, 1, 0.25, 4), "pair": (1, 1, 0.25, 4)}
ON_A100 = [override for stage, (lo, hi, gpus, batch) in POOLS.items() for override in (
    f"{stage}.resources.min_actors={lo}", f"{stage}.resources.max_actors={hi}",
    f"{stage}.resources.num_gpus={gpus}", f"{stage}.resources.batch_size={batch}",
    f"{stage}.resources.accelerator_type=A100")]
# The same pools on a local Ray without GPUs: the reference run.
LOCAL = [override for stage, (lo, hi, _, batch) in POOLS.items() for override in (
    f"{stage}.resources.min_actors={lo}", f"{stage}.resources.max_actors={hi}",
    f"{stage}.resources.batch_size={batch}")]


def panel_metric(title: str) -> str:
    """The series the dashboard's panel `title` plots first: the test reads the same one."""
    rows = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for row in rows for p in (row, *row.get("panels", [])) if p["title"] == title]
    return re.search(r"\bray_\w+", panel["targets"][0]["expr"]).group()


# The dashboard's series: rows out of each stage (from every node), actors per pool (Ray
# Data's gauge, from the head).
ROWS_OUT = panel_metric("Rows/s per stage")
ACTORS_PER_POOL = panel_metric("Actors per pool")
ACTORS_WAITING = panel_metric("Actors waiting for a node")


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture(scope="module")
def reference_pairs(tmp_path_factory, model_cache) -> list[dict]:
    """The pairs of the same generation pass on a local Ray (its own process, no GPUs)."""
    out = tmp_path_factory.mktemp("local")
    result = subprocess.run([sys.executable, "jobs/generate.py", *sets([*JOB, *LOCAL, f"models.cache_dir={model_cache}"]),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return pairs(out)


@pytest.fixture(scope="module")
def cluster():
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"  # the job's `python` is this venv's
    with ray_head(dashboard=True, num_cpus=1, worker_types={"a100": A100_WORKER},
                  idle_timeout_minutes=IDLE_TIMEOUT_MINUTES, upscaling_speed=1.0,
                  # A node's raylet dies when its agents take longer than this to start (30 s by
                  # default), which a busy 2-core box exceeds.
                  env={"PATH": path, "RAY_metrics_report_interval_ms": "1000",
                       "RAY_agent_register_timeout_ms": "180000"}) as head:
        yield head
    assert not left_running(head), "processes of the test's cluster outlived it"


def left_running(head) -> list[str]:
    """Processes still alive in the cluster's process group or with its temp dir in their command."""
    alive = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:  # dead, waiting for init to reap it
            continue
        try:
            if os.getpgid(process.pid) == head.pgid or head.temp_dir in " ".join(process.info["cmdline"] or []):
                alive.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
        except (psutil.Error, ProcessLookupError):
            pass
    return alive


def pairs(out_dir: Path) -> list[dict]:
    rows = read_parquet_dir(str(out_dir / "pairs"), PAIR_SCHEMA).drop_columns(["policy_id"]).to_pylist()
    return sorted(rows, key=lambda row: row["pair_id"])


def assert_same_pairs(got: list[dict], want: list[dict]) -> None:
    assert [p["pair_id"] for p in got] == [p["pair_id"] for p in want]
    for x, y in zip(got, want):
        for key in x:
            if key.startswith("ref_"):
                assert x[key] == pytest.approx(y[key], abs=1e-4), (x["pair_id"], key)
            else:
                assert x[key] == y[key], (x["pair_id"], key)


# ------------------------------------------------------------------ what the test watches


def scrape(port_or_address) -> list:
    address = port_or_address if isinstance(port_or_address, str) else f"127.0.0.1:{port_or_address}"
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:  # a node that just went away
        return []
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def scrape_targets(head) -> list[str]:
    """Every node's metrics address, from the service-discovery file Ray writes for Prometheus."""
    path = Path(head.temp_dir) / "session_latest" / "prom_metrics_service_discovery.json"
    try:
        return [target for group in json.loads(path.read_text()) for target in group["targets"]]
    except (OSError, ValueError):
        return []


def stage_of(operator: str) -> str | None:
    """The stage a Ray Data operator or actor class runs: MapBatches(SampleStage) -> sample."""
    return next((spec.name for spec in STAGES if f"({spec.stage_class.__name__})" in operator), None)


@dataclass
class Watch:
    """What was seen while a job ran: one entry per sample."""

    worker_nodes: list[int] = field(default_factory=list)
    actors: list[Counter] = field(default_factory=list)  # alive actors per stage (state API)
    data_actors: list[dict] = field(default_factory=list)  # ray_data_num_alive_actors per stage
    data_pending: list[dict] = field(default_factory=list)  # ray_data_num_pending_actors per stage
    data_rows: list[dict] = field(default_factory=list)  # ray_data_output_rows per stage
    rows_out: list[dict] = field(default_factory=list)  # ROWS_OUT per stage, summed over all nodes
    seconds_to_first_worker: float | None = None
    seconds_to_pool_growth: float | None = None  # to a second alive actor in any pool


def state(head, resource: str) -> list[dict]:
    """The alive entries of Ray's state API (`ray list nodes`, `ray list actors`), from the
    dashboard's REST endpoint with the head's token in the request: nothing process-wide to set."""
    request = urllib.request.Request(f"{head.dashboard_url}/api/v0/{resource}?limit=10000",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        entries = json.loads(response.read())["data"]["result"]["result"]
    return [entry for entry in entries if entry["state"] == "ALIVE"]


def worker_nodes(head) -> list[dict]:
    return [node for node in state(head, "nodes") if not node["is_head_node"]]


def stage_actors(head) -> list:
    """(stage, node id, pid) of every alive stage actor."""
    return [(stage_of(a["class_name"]), a["node_id"], a["pid"]) for a in state(head, "actors") if stage_of(a["class_name"])]


def by_stage(samples: list, name: str, label: str) -> dict:
    totals: dict = {}
    for s in samples:
        stage = stage_of(s.labels.get(label, "")) if label == "operator" else s.labels.get(label)
        if s.name == name and stage:
            totals[stage] = totals.get(stage, 0) + s.value
    return totals


def watch(head, job: subprocess.Popen, started: float, watched: Watch, on_sample=None) -> None:
    while job.poll() is None:
        nodes = worker_nodes(head)
        watched.worker_nodes.append(len(nodes))
        if nodes and watched.seconds_to_first_worker is None:
            watched.seconds_to_first_worker = time.monotonic() - started
        watched.actors.append(Counter(stage for stage, _, _ in stage_actors(head)))
        # Every node Prometheus would scrape: Ray Data's stats actor, which exports its gauges,
        # may live on any node, and each stage actor exports its own counters.
        everywhere = [s for target in scrape_targets(head) for s in scrape(target)]
        watched.data_actors.append(by_stage(everywhere, ACTORS_PER_POOL, "operator"))
        watched.data_pending.append(by_stage(everywhere, ACTORS_WAITING, "operator"))
        seen = [*watched.actors[-1].values(), *watched.data_actors[-1].values()]
        if max(seen, default=0) > 1 and watched.seconds_to_pool_growth is None:
            watched.seconds_to_pool_growth = time.monotonic() - started
        watched.data_rows.append(by_stage(everywhere, "ray_data_output_rows", "operator"))
        watched.rows_out.append(by_stage(everywhere, ROWS_OUT, "stage"))
        if on_sample:
            on_sample(nodes)
        time.sleep(2)


def submit(head, out_dir: Path, cache: str, script: str = "jobs/iterate.py") -> tuple[subprocess.Popen, Path]:
    """`ray job submit` of `script` (iterate.py: the run under out_dir; generate.py: one
    generation pass into out_dir) in the background; its output (the job's logs) goes to a file."""
    env = {**os.environ, **head.env}  # `ray job submit` sends the head's token
    env.pop("RAY_ADDRESS", None)
    # Not --working-dir: the fake nodes share the head's temp dir, so a node's runtime-env agent
    # that replaces the unpacked package deletes the working directory of every other node's
    # actors (FileNotFoundError from os.getcwd()). Every node sees this checkout instead.
    out = f"--out {out_dir}" if script == "jobs/generate.py" else f"--set run.output_dir={out_dir}"
    job_args = " ".join([*sets([*JOB, *ON_A100, f"models.cache_dir={cache}"]), out])
    command = [str(BIN / "ray"), "job", "submit", f"--address={head.dashboard_url}",
               "--runtime-env-json", json.dumps({"env_vars": {"PYTHONPATH": str(REPO)}}), "--",
               "bash", "-c", f"cd {REPO} && python {script} {job_args}"]
    log = out_dir / "submit.log"
    for _ in range(60):  # the head answers before its job agent is up: "No available agent"
        with open(log, "w") as sink:
            job = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        time.sleep(3)
        if job.poll() is None or "No available agent" not in log.read_text():
            return job, log
    raise AssertionError("the job agent never came up")


def wait_for_no_workers(head, timeout: float = 180) -> float:
    started = time.monotonic()
    while worker_nodes(head):
        assert time.monotonic() - started < timeout, "idle workers were not terminated"
        time.sleep(1)
    return time.monotonic() - started


def timing(name: str, seconds: float) -> None:
    print(f"[autoscaling] {name}: {seconds:.0f} s", flush=True)


# ------------------------------------------------------------------ the tests


def test_generation_scales_a100_workers_from_zero_and_back(reference_pairs, cluster, model_cache, tmp_path):
    assert not torch.cuda.is_available()  # a logical GPU: every stage computes on CPU
    assert worker_nodes(cluster) == []
    started = time.monotonic()
    job, log = submit(cluster, tmp_path, model_cache)
    watched = Watch()
    watch(cluster, job, started, watched)
    output = log.read_text()
    timing("job", time.monotonic() - started)
    print("[autoscaling] most alive actors per stage:", {stage: max(c[stage] for c in watched.actors) for stage in POOLS}, "state API;",
          {stage: max(d.get(stage, 0) for d in watched.data_actors) for stage in POOLS}, "Ray Data's alive gauge;",
          {stage: max(d.get(stage, 0) for d in watched.data_pending) for stage in POOLS}, "pending", flush=True)
    assert job.returncode == 0 and "succeeded" in output, output[-3000:]
    timing("first worker node", watched.seconds_to_first_worker)

    # The autoscaler started A100 nodes from zero, up to the 3 the pools asked for.
    assert max(watched.worker_nodes) == A100_WORKER["max_workers"], watched.worker_nodes
    # A pool grew past one actor while the pass ran. Both views are samples: Ray's actor table
    # is read every few seconds, and Ray Data updates its gauges when an operator emits a block
    # and exports them every 5 s, so a second actor that lives only for a pool's last blocks
    # can be missed by either; either one seeing it is the growth.
    grown = sorted({stage for counts in [*watched.actors, *watched.data_actors] for stage, n in counts.items() if n > 1})
    assert grown, (watched.actors, watched.data_actors)
    timing(f"a second actor alive ({', '.join(grown)} grew)", watched.seconds_to_pool_growth)
    # Rows per stage and actors per pool, the dashboard's series, were non-zero in the run.
    for stage in POOLS:
        assert max(d.get(stage, 0) for d in watched.data_actors) >= 1, stage
        assert max(d.get(stage, 0) for d in watched.data_rows) > 0, stage
        assert max(d.get(stage, 0) for d in watched.rows_out) > 0, stage
    assert_same_pairs(pairs(tmp_path / "smoke" / "iter_0"), reference_pairs)
    idle = wait_for_no_workers(cluster)
    timing("workers gone after the job", idle)


def kill_node(node_id: str, head) -> int:
    """SIGKILL one fake node's raylet and every process under it, as if the machine died.
    The provider starts each node's raylet with its node id in the environment."""
    for process in psutil.process_iter(["pid", "name"]):
        try:
            if process.info["name"] != "raylet" or os.getpgid(process.pid) != head.pgid:
                continue
            if process.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") != node_id:
                continue
            victims = [process, *process.children(recursive=True)]
        except (psutil.Error, ProcessLookupError):
            continue
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        return len(victims)
    raise AssertionError(f"no raylet for node {node_id}")


def test_losing_a_worker_node_mid_pass_loses_and_repeats_no_instruction(reference_pairs, cluster, model_cache,
                                                                       tmp_path):
    """The generation pass alone (jobs/generate.py): node loss is its concern, not training's."""
    started = time.monotonic()
    job, log = submit(cluster, tmp_path, model_cache, "jobs/generate.py")
    killed: list[str] = []

    def kill_the_busiest_node(nodes) -> None:
        # Once the first rows are durably written, kill the node holding the most stage actors:
        # their pools lose actors mid-batch, and blocks in that node's object store are lost.
        if killed or not any((tmp_path / "rows").glob("*.parquet")):
            return
        on_node = Counter(node for _, node, _ in stage_actors(cluster))
        if on_node:
            (node, actors), = on_node.most_common(1)
            killed.append(node)
            kill_node(node, cluster)
            timing(f"node with {actors} stage actors killed at", time.monotonic() - started)

    watch(cluster, job, started, Watch(), kill_the_busiest_node)
    output = log.read_text()
    timing("generation pass with a node lost", time.monotonic() - started)
    assert killed, "the pass ended before a node could be killed"
    assert job.returncode == 0 and "succeeded" in output, output[-3000:]

    stats = read_parquet_dir(str(tmp_path / "rows"), instruction_stats_schema([spec.name for spec in STAGES]))
    ids = Counter(stats["instruction_id"].to_pylist())
    assert len(ids) == 16 and set(ids.values()) == {1}, ids
    assert_same_pairs(pairs(tmp_path), reference_pairs)
    wait_for_no_workers(cluster)
