"""Join the Ray cluster the job was submitted to, or start a local one capped to the machine."""

from __future__ import annotations

import os

from engine.config import RayConfig

# A local run (laptop, tests) loads local model directories only: never reach for a hub.
LOCAL_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def init_ray(ray_cfg: RayConfig) -> None:
    """Idempotent. `ray job submit` sets RAY_ADDRESS, so the job joins that cluster and uses its
    GPUs; with no address a local cluster is started with the configured CPU/object-store caps."""
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # A submitted job's runtime_env (working_dir, env vars) is the cluster's; keep it.
        ray.init(address=address)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(
            num_cpus=ray_cfg.num_cpus or None,
            object_store_memory=ray_cfg.object_store_mb * 2**20,
            include_dashboard=False,
            runtime_env={"env_vars": {key: os.environ[key] for key in LOCAL_ENV}},
        )
