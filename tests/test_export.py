"""The training engine as a worker builds it, exported before any step: in the training
precision (bf16 safetensors from a bf16 run) and, under ZeRO-3, from a model that was loaded
straight into its partitions, so the export must equal the init weights."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config import TrainConfig


@pytest.fixture(scope="module")
def one_rank():
    """The one-rank gloo process group Ray Train gives a single worker."""
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                           "LOCAL_RANK": "0"}.items():
            patch.setenv(key, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()
    # DeepSpeed keeps a clone of the world group from its first engine; after the group is
    # destroyed, the next test's engine would broadcast over the dead clone.
    from deepspeed.utils import groups

    groups._WORLD_GROUP = None


@pytest.mark.parametrize("stage", [2, 3])
def test_a_bf16_engine_exports_bf16_weights_equal_to_the_init(stage, one_rank, tiny_llava_dir, tmp_path, monkeypatch):
    import deepspeed

    from train import trainer
    from train.export import export_model

    loaded_partitioned = []
    initialize = deepspeed.initialize

    def spy(*, model, **kwargs):
        loaded_partitioned.append(all(hasattr(param, "ds_id") for param in model.parameters()))
        return initialize(model=model, **kwargs)

    monkeypatch.setattr(deepspeed, "initialize", spy)
    train_cfg = TrainConfig(zero_stage=stage, gradient_checkpointing=False)
    ds_engine = trainer._deepspeed_engine(train_cfg, tiny_llava_dir, SimpleNamespace(total_steps=1), bf16=True,
                                          multimodal=True, trained_model=lambda model: model)
    assert loaded_partitioned == [stage == 3]  # ZeRO-3: partitioned by from_pretrained, before DeepSpeed
    export_model(ds_engine, tiny_llava_dir, str(tmp_path / "model"))

    exported = tmp_path / "model" / "model.safetensors"
    with safe_open(str(exported), framework="pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"BF16"}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    init, after = load_file(str(Path(tiny_llava_dir) / "model.safetensors")), load_file(str(exported))
    assert init.keys() == after.keys()
    assert all(torch.equal(init[key].to(torch.bfloat16), after[key]) for key in init)
