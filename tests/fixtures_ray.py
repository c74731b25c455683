"""A real Ray head for tests that need one (`ray job submit`, the Prometheus export, the
autoscaler).

It runs in its own process group with its own temp dir and its own free ports (the agents'
too: conftest's in-process ray_local may hold the default ones), so it shares nothing with
other Ray instances on the machine, and stopping it kills its processes only (`ray stop`
would kill every Ray on the machine, the test session's included).

With `worker_types` the head runs Ray's autoscaler on the fake multi-node provider: its worker
"nodes" are local raylets with the declared resources, started and stopped by the real
autoscaler (a child of the head, so in the head's process group, whose end is theirs).
Ray's AutoscalingCluster does the same but runs `ray stop --force` and reads an example.yaml
the wheel does not ship, hence the config written here.

Like a job's local Ray (engine/ray_runtime.py) it wants its own token: clients run with
RayHead.env. Without worker nodes it also binds loopback only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    address: str  # GCS address, for RAY_ADDRESS
    metrics_port: int
    dashboard_url: str | None  # the job submission server, when the dashboard runs
    env: dict[str, str]  # what a client (driver, `ray job submit`) adds to its environment
    pgid: int  # the process group of every process the head started, worker nodes' included
    temp_dir: str  # logs under session_latest/logs (monitor.log: the autoscaler's decisions)


FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's node type


def fake_cluster_config(gcs_address: str, head_resources: dict, worker_types: dict, **settings) -> dict:
    """A complete autoscaler config for the fake multi-node provider (the monitor validates it
    but fills in no defaults). `settings`: idle_timeout_minutes, upscaling_speed, ..."""
    return {
        "cluster_name": "fake-multinode", "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "upscaling_speed": 1.0, "idle_timeout_minutes": 1.0, **settings,
        # Every node shares 127.0.0.1: the autoscaler tells them apart by node id instead.
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {FAKE_HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
                                 **{name: {"node_config": {}, "min_workers": 0, **t} for name, t in worker_types.items()}},
        "head_node_type": FAKE_HEAD_TYPE, "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def ray_head(dashboard: bool = False, env: dict[str, str] | None = None, num_cpus: int = 2,
             worker_types: dict | None = None, **autoscaler_settings):
    port, metrics_port, dashboard_port = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # short: unix socket paths <= 107 bytes
    log_path = Path(temp_dir) / "ray-start.log"
    env = dict(env or {})
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    if not worker_types:  # Ray's single-machine mode: every server on loopback (no other node may join)
        auth_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    command = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
               f"--metrics-export-port={metrics_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-port={dashboard_port}",
               "--dashboard-host=127.0.0.1", f"--include-dashboard={str(dashboard).lower()}",
               f"--num-cpus={num_cpus}", "--object-store-memory=268435456", "--disable-usage-stats",
               f"--temp-dir={temp_dir}"]
    if worker_types:
        config_path = Path(temp_dir) / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(fake_cluster_config(
            f"127.0.0.1:{port}", {"CPU": num_cpus}, worker_types, **autoscaler_settings)))
        command.append(f"--autoscaling-config={config_path}")
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", **env}
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env={**os.environ, **auth_env, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{port}", metrics_port, f"http://127.0.0.1:{dashboard_port}" if dashboard else None,
                      auth_env, head.pid, temp_dir)
    finally:
        # Workers run in process groups of their own: taken by id from the process tree first.
        started = _descendants(head.pid)
        # SIGTERM lets the raylet stop its workers; the autoscaler monitor and `ray start
        # --block` itself linger after it, so the group is killed once that had a moment.
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(head.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=5)
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        for process in psutil.wait_procs(started, timeout=5)[1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
