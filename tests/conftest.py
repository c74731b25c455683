"""Test-wide setup: offline, quiet, one capped local Ray cluster per session."""

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402

# Session-scoped tiny models and backends, usable in every test module without an import.
pytest_plugins = ["fixtures_models"]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray capped for a 2-core CI box (started once: it costs 3-7 s)."""
    import ray

    from engine.config import RayConfig
    from engine.ray_runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=256))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One cache of tiny models shared by the whole session."""
    return str(tmp_path_factory.mktemp("tiny-models"))
