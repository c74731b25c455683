"""cluster/: the launcher YAMLs pass the checks `ray up` makes before it touches a cloud, the
KubeRay manifests are what the operator and its autoscaler read, every resource request of
configs/a100.toml fits their A100 node types, and the Grafana dashboard queries only metrics
engine/metrics.py defines."""

import copy
import json
import math
import os
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

from engine.config import Resources, load_config
from engine.metrics import COUNTERS, RAY_DATA_GAUGES, TRAIN_COUNTERS, TRAIN_GAUGES, prometheus_name, prometheus_names
from engine.pipeline import STAGES, generation_models, stage_resources

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = sorted(CLUSTER.glob("*.yaml"))
A100_CONFIG = ROOT / "configs" / "a100.toml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _launcher_node_types(path: Path) -> dict:
    config = prepare_config(_load(path))
    validate_config(config)
    return config["available_node_types"]


def _kuberay_node_types() -> dict:
    # What the KubeRay autoscaler derives from the RayCluster (and validates with Ray's schema).
    return _derive_autoscaling_config_from_ray_cr(_load(CLUSTER / "kuberay" / "raycluster.yaml"))["available_node_types"]


def _gpu_types(node_types: dict) -> dict:
    """The worker types that can actually start (max_workers > 0) and have GPUs."""
    return {name: t for name, t in node_types.items()
            if t.get("max_workers", 0) > 0 and t["resources"].get("GPU", 0) > 0}


def test_there_are_aws_and_gcp_launcher_configs():
    assert {p.name for p in LAUNCHER_YAMLS} >= {"aws-a100.yaml", "gcp-a100.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_validates_against_rays_schema(path):
    raw = _load(path)
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    jsonschema.validate(raw, json.loads(Path(schema_path).read_text()))
    # What `ray up` does before any cloud call: fill in defaults, validate again, check node types.
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert config["provider"]["type"] in ("aws", "gcp")


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_has_cpu_head_and_a100_workers_from_zero(path):
    raw = _load(path)
    node_types = raw["available_node_types"]
    head = node_types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = _gpu_types(node_types)
    assert gpu_types, "no GPU worker type can start"
    for name, node_type in gpu_types.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["resources"]["accelerator_type:A100"] == 1, name
        assert node_type["max_workers"] <= raw["max_workers"], name
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-port=8265" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert any("pip install" in command and "--no-deps -r \"$HOME/rlaifv/requirements-gpu-lock.txt\"" in command
               for command in raw["setup_commands"])


def test_the_gpu_lock_pins_vllm_and_every_project_dependency_within_its_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "requirements-gpu-lock.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    assert pins["vllm"] == "0.33.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in map(Requirement, project):
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name]), (requirement, pins.get(name))
    assert "--no-deps -r /home/ray/rlaifv/requirements-gpu-lock.txt" in (CLUSTER / "Dockerfile").read_text()


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_starts_every_node_with_token_authentication(path):
    raw = _load(path)
    token_path = "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [command for command in raw[key] if "ray start" in command]
        assert "RAY_AUTH_MODE=token" in start and token_path in start, key
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_kuberay_raycluster_autoscales_a100_workers():
    cluster = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    worker = _kuberay_node_types()[group["groupName"]]
    assert worker["resources"]["GPU"] == 8
    assert worker["resources"]["accelerator_type:A100"] == 1
    assert (worker["min_workers"], worker["max_workers"]) == (0, group["maxReplicas"])


def test_kuberay_raycluster_wants_a_token():
    spec = _load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    assert spec["authOptions"] == {"mode": "token"}


def test_dockerfile_runs_as_a_non_root_user():
    users = re.findall(r"^USER\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_kuberay_rayjob_runs_iterate_on_the_raycluster():
    job = _load(CLUSTER / "kuberay" / "rayjob.yaml")
    cluster = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["python", "jobs/iterate.py"]
    config = entrypoint[entrypoint.index("--config") + 1]
    assert (ROOT / config).is_file()
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]


def test_a100_config_loads_with_real_models_on_a100_gpus():
    cfg = load_config(A100_CONFIG)
    assert cfg.models.policy.path == "llava-hf/llava-1.5-7b-hf"
    assert all(getattr(cfg.models, role).backend == "vllm" for role in ("policy", "labeler", "splitter"))
    requests = {spec.name: stage_resources(spec, cfg, generation_models(cfg)) for spec in STAGES}
    for stage, resources in requests.items():
        assert resources.accelerator_type == "A100" and resources.num_gpus > 0, stage
    assert any(resources.num_gpus < 1 for resources in requests.values()), "no fractional GPU share"
    # vLLM's tensor-parallel workers use the GPUs Ray gives the score actor: derived, not repeated.
    assert requests["score"].num_gpus == cfg.models.labeler.tensor_parallel_size > 1
    t = cfg.train
    assert (t.num_workers, t.use_gpu, t.zero_stage, t.precision, t.accelerator_type) == (8, True, 3, "bf16", "A100")


def _fits(resources: Resources, node: dict) -> bool:
    return (math.ceil(resources.num_gpus) <= node.get("GPU", 0) and resources.num_cpus <= node.get("CPU", 0)
            and node.get(f"accelerator_type:{resources.accelerator_type}", 0) > 0)


@pytest.mark.parametrize("source", [*(p.name for p in LAUNCHER_YAMLS), "kuberay"])
def test_a100_config_requests_fit_the_gpu_node_types(source):
    """Every actor of every stage, and the training workers, can be placed on a node the
    autoscaler can start: otherwise Ray waits forever for a node that never comes."""
    node_types = _kuberay_node_types() if source == "kuberay" else _launcher_node_types(CLUSTER / source)
    nodes = [t["resources"] for t in _gpu_types(node_types).values()]
    cfg = load_config(A100_CONFIG)
    for spec in STAGES:
        resources = stage_resources(spec, cfg, generation_models(cfg))
        assert any(_fits(resources, node) for node in nodes), (source, spec.name)
    t = cfg.train
    worker = Resources(num_cpus=t.cpus_per_worker, num_gpus=1, accelerator_type=t.accelerator_type)
    capacity = sum(t_["max_workers"] * min(t_["resources"]["GPU"], t_["resources"]["CPU"] // t.cpus_per_worker)
                   for t_ in _gpu_types(node_types).values() if _fits(worker, t_["resources"]))
    assert capacity >= t.num_workers, source


def _dashboard_queries(dashboard: dict) -> list[str]:
    panels = [p for row in dashboard["panels"] for p in (row, *row.get("panels", []))]
    queries = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    return queries + [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_grafana_dashboard_queries_only_engine_and_ray_data_metrics():
    dashboard = json.loads((CLUSTER / "grafana" / "rlaifv-dashboard.json").read_text())
    used = {name for query in _dashboard_queries(dashboard) for name in re.findall(r"\bray_\w+", query)}
    known = prometheus_names() | set(RAY_DATA_GAUGES)
    assert used <= known, used - known
    wanted = {"rows_out", "tokens", "questions", "pairs", "rejects", "train_loss", "train_reward_accuracy"}
    assert {prometheus_name(name) for name in wanted} | {"ray_data_num_alive_actors"} <= used
    # Counters are plotted as rates, gauges as values.
    for query in _dashboard_queries(dashboard):
        for name in re.findall(r"\bray_\w+", query):
            is_counter = name.endswith("_total")
            assert is_counter == ("rate(" in query or "increase(" in query or "label_values" in query), query


def test_prometheus_names_follow_rays_export_rules():
    # Verified against a real Ray head by tests/test_metrics_export.py.
    assert prometheus_name("rows_out") == "ray_rlaifv_rows_out_total"
    assert prometheus_name("train_loss") == "ray_rlaifv_train_loss"
    assert len(prometheus_names()) == len(COUNTERS) + len(TRAIN_GAUGES) + len(TRAIN_COUNTERS)
