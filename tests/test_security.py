"""The local Ray a job starts (engine/ray_runtime.py) listens on loopback only and refuses a
client without its token: any process reaching a Ray port could otherwise run code as the job's
user."""

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from engine.errors import ConfigError
from engine.ray_runtime import _lock_down_local_ray

REPO = Path(__file__).resolve().parent.parent


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


LISTENING = """
import json, psutil, ray
from engine.config import RayConfig
from engine.ray_runtime import init_ray

init_ray(RayConfig(num_cpus=1, object_store_mb=128))
assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker is up: it listens too
driver = psutil.Process()  # GCS, raylet, agents and workers are the driver's descendants

def listening(p):  # a short-lived worker may exit between the listing and the look
    try:
        return [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
        return []

print(json.dumps([port for p in (driver, *driver.children(recursive=True)) for port in listening(p)]))
ray.shutdown()
"""


def test_every_port_of_the_local_ray_listens_on_loopback_only():
    """A job's local Ray in a process of its own, as a job starts it: this test process may hold
    sockets of other tests (a torch.distributed store) that are no Ray port."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", LISTENING], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in listening}, listening
    exposed = [(name, ip, port) for name, ip, port in listening if not _is_loopback(ip)]
    assert not exposed, f"listening beyond loopback: {exposed}"


def _list_nodes(gcs_address: str, token: str | None):
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        return stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=10)


@pytest.mark.parametrize("token", [None, "0" * 64], ids=["no-token", "wrong-token"])
def test_the_local_ray_refuses_a_client_without_its_token(ray_local, token):
    gcs_address = ray_local.get_runtime_context().gcs_address
    with pytest.raises(grpc.RpcError) as refused:
        _list_nodes(gcs_address, token)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The same call with the run's token is answered: the refusal is the token's.
    assert len(_list_nodes(gcs_address, os.environ["RAY_AUTH_TOKEN"]).node_info_list) == 1


def test_a_local_ray_without_authentication_is_refused(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=disabled"):
        _lock_down_local_ray()
