"""The local Ray a job starts (engine/ray_runtime.py) listens on loopback only and refuses a
client without its token: any process reaching a Ray port could otherwise run code as the job's
user."""

import ipaddress
import os

import grpc
import psutil
import pytest

from engine.errors import ConfigError
from engine.ray_runtime import _lock_down_local_ray


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def test_every_port_of_the_local_ray_listens_on_loopback_only(ray_local):
    ray = ray_local
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker is up: it listens too
    # This process is the driver; GCS, raylet, agents and workers are its descendants.
    driver = psutil.Process()
    listening = [(process.name(), conn.laddr) for process in (driver, *driver.children(recursive=True))
                 for conn in process.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
    names = {name for name, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    exposed = [(name, addr) for name, addr in listening if not _is_loopback(addr.ip)]
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
