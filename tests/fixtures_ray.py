"""A real Ray head for tests that need one (`ray job submit`, the Prometheus export).

It runs in its own process group with its own temp dir and its own free ports (the agents'
too: conftest's in-process ray_local may hold the default ones), so it shares nothing with
other Ray instances on the machine, and stopping it kills its processes only (`ray stop`
would kill every Ray on the machine, the test session's included). Like a job's local Ray
(engine/ray_runtime.py) it binds loopback only and wants its own token: clients run with
RayHead.env.
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


@contextlib.contextmanager
def ray_head(dashboard: bool = False, env: dict[str, str] | None = None):
    port, metrics_port, dashboard_port = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # short: unix socket paths <= 107 bytes
    log_path = Path(temp_dir) / "ray-start.log"
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # node IP 127.0.0.1: every server on loopback
    command = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
               f"--metrics-export-port={metrics_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-port={dashboard_port}",
               "--dashboard-host=127.0.0.1", f"--include-dashboard={str(dashboard).lower()}",
               "--num-cpus=2", "--object-store-memory=268435456", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env={**os.environ, **auth_env, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{port}", metrics_port,
                      f"http://127.0.0.1:{dashboard_port}" if dashboard else None, auth_env)
    finally:
        # SIGTERM lets the raylet stop its workers; the autoscaler monitor and `ray start
        # --block` itself linger after it, so the group is killed once that had a moment.
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(head.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=5)
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
