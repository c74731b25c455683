"""Join the Ray cluster the job was submitted to, or start a local one capped to the machine."""

from __future__ import annotations

import logging
import os
import secrets

from engine.config import ConfigError, RayConfig, Resources
from engine.progress import QUIET_WORKER_ENV, quiet_ray_data

# A local run (laptop, tests) loads local model directories only: never reach for a hub.
LOCAL_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# True once this process started its own local cluster: a fixed size, with no autoscaler.
_started_local = False


def init_ray(ray_cfg: RayConfig) -> None:
    """Idempotent. `ray job submit` sets RAY_ADDRESS, so the job joins that cluster and uses its
    GPUs; with no address a local cluster is started with the configured CPU/object-store caps."""
    import ray

    global _started_local
    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    log_level = logging.INFO if ray_cfg.verbose else logging.WARNING
    if not ray_cfg.verbose:
        quiet_ray_data()
    if address:
        # A submitted job's runtime_env (working_dir, env vars) is the cluster's; keep it.
        ray.init(address=address, logging_level=log_level)
    else:
        _started_local = True
        _lock_down_local_ray()
        worker_env = {} if ray_cfg.verbose else QUIET_WORKER_ENV
        for key, value in {**LOCAL_ENV, **worker_env}.items():
            os.environ.setdefault(key, value)
        ray.init(
            # "local": a new cluster even when `ray start` left one on this machine, which a
            # bare ray.init() would join, uncapped and with another job's settings.
            address="local",
            num_cpus=ray_cfg.num_cpus or None,
            object_store_memory=ray_cfg.object_store_mb * 2**20,
            include_dashboard=False,
            logging_level=log_level,
            runtime_env={"env_vars": {key: os.environ[key] for key in (*LOCAL_ENV, *worker_env)}},
        )


def _lock_down_local_ray() -> None:
    """Any process that reaches a Ray port can run code as this job's user, so the local Ray
    listens on loopback only and wants a token. Ray's single-machine mode (its default on macOS)
    gives the node IP 127.0.0.1, from which every Ray server binds loopback; the token is new
    per run and passed in the environment, which only this user's processes can read. A local
    ray.init() turns token auth on itself unless RAY_AUTH_MODE says otherwise."""
    from ray._private import ray_constants

    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        raise ConfigError(f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: the local Ray always runs with token "
                          "authentication; unset RAY_AUTH_MODE")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for Ray's own processes
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read the variable when it imported ray
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def check_pools_fit(pools: dict[str, Resources]) -> None:
    """On a local cluster this job started, the actor pools' minimum sizes must fit at once and
    leave a CPU for Ray Data's own tasks (reading, validation), or Ray Data waits forever for
    actors or tasks that can never be placed. (On a cluster the autoscaler may add nodes, so
    nothing is checked there.)"""
    import ray

    if not _started_local:
        return
    available = ray.cluster_resources()
    for resource, per_actor in (("CPU", lambda r: r.num_cpus), ("GPU", lambda r: r.num_gpus)):
        need = {name: r.min_actors * per_actor(r) for name, r in pools.items()}
        if sum(need.values()) > available.get(resource, 0) + 1e-9:
            asked = ", ".join(f"{name} {value:g}" for name, value in need.items() if value)
            raise ConfigError(
                f"the stages' minimum actor pools need {sum(need.values()):g} {resource} ({asked}) but this "
                f"local Ray has {available.get(resource, 0):g}: lower <stage>.resources.num_{resource.lower()}s "
                "or min_actors, or raise ray.num_cpus"
            )
    left = available.get("CPU", 0) - sum(r.min_actors * r.num_cpus for r in pools.values())
    if left < 1 - 1e-9:
        raise ConfigError(
            f"the stages' minimum actor pools leave {left:g} of this local Ray's {available.get('CPU', 0):g} CPUs "
            "for Ray Data's read and validation tasks, which need 1 each: lower <stage>.resources.num_cpus "
            "or min_actors, or raise ray.num_cpus"
        )
