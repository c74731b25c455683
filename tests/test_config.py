"""Config: strict decoding, overrides, round trips, and the shipped configs."""

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from engine.config import (Config, ConfigError, config_from_dict, config_keys, config_to_dict, config_to_toml, load_config,
                           parse_override)

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_reference_values():
    cfg = Config()
    assert (cfg.sample.n, cfg.sample.temperature, cfg.sample.top_p, cfg.sample.max_new_tokens) == (10, 0.7, 1.0, 512)
    assert (cfg.split.temperature, cfg.split.top_p, cfg.split.max_new_tokens) == (0.2, 0.9, 2048)
    assert cfg.score.question_suffix == " Please answer yes or no."
    assert (cfg.pair.min_score_gap, cfg.pair.pairs_per_instruction) == (1, 2)
    assert (cfg.train.beta, cfg.train.learning_rate, cfg.train.weight_decay, cfg.train.warmup_ratio) == (0.1, 5e-7, 0.01, 0.05)
    assert (cfg.train.gamma, cfg.train.zero_stage, cfg.train.max_length, cfg.train.micro_batch_size) == (1.1, 2, 2048, 1)
    assert (cfg.train.ddpo_mask, cfg.train.ddpo_normalise) == ("released", False)


def test_the_default_ddpo_is_the_released_recipe():
    released = load_config(None, ["train.preset=rlhfv-released"]).train
    assert msgspec.structs.replace(released, preset="") == Config().train


@pytest.mark.parametrize("preset, expected", [
    ("rlhfv-released", (1.1, 0.1, "released", False)),
    ("rlhfv-paper", (5.0, 0.5, "all_edits", True)),
])
def test_a_preset_fills_gamma_beta_mask_and_normalisation(preset, expected, tmp_path):
    path = tmp_path / "preset.toml"
    path.write_text(f'[train]\nloss = "ddpo"\npreset = "{preset}"\n')
    for train in (load_config(path).train, load_config(None, ["train.loss=ddpo", f"train.preset={preset}"]).train):
        assert (train.gamma, train.beta, train.ddpo_mask, train.ddpo_normalise) == expected


def test_an_explicit_key_wins_over_the_preset(tmp_path):
    path = tmp_path / "preset.toml"
    path.write_text('[train]\npreset = "rlhfv-paper"\ngamma = 2.0\n')
    train = load_config(path, ["train.ddpo_normalise=false"]).train
    assert (train.gamma, train.beta, train.ddpo_mask, train.ddpo_normalise) == (2.0, 0.5, "all_edits", False)
    assert config_from_dict(config_to_dict(load_config(path))) == load_config(path)  # round trip keeps it


def test_an_unknown_preset_names_the_key():
    with pytest.raises(ConfigError, match="train.preset"):
        load_config(None, ["train.preset=rlhfv-other"])


def test_every_field_round_trips_through_toml():
    # A config with every field set away from its default survives dict and TOML round trips.
    cfg = load_config(REPO / "configs" / "smoke.toml", ["train.accelerator_type=A100", "sample.resources.num_gpus=0.5"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(tomllib.loads(config_to_toml(cfg))) == cfg


def _dotted_keys(data: dict, prefix: str = ""):
    for key, value in data.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def test_every_key_has_a_description():
    # A key added without Meta(description=...) fails here; a table may describe itself by its
    # Struct's docstring. Every key of the config, nested tables included, is checked.
    docs = config_keys(Config())
    assert [doc.key for doc in docs] == list(_dotted_keys(config_to_dict(Config())))
    assert {"sample.resources.num_gpus", "models.policy.backend", "eval.resources"} <= {doc.key for doc in docs}
    undocumented = [doc.key for doc in docs if not doc.description.strip()]
    assert not undocumented, f"config keys without a description: {undocumented}"


def test_every_shipped_config_loads():
    paths = sorted((REPO / "configs").glob("*.toml"))
    assert paths
    for path in paths:
        load_config(path)


def test_misspelt_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sample]\ntempature = 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "tempature" in str(err.value) and str(path) in str(err.value) and "sample" in str(err.value)


def test_unknown_table_is_an_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sampel]\nn = 3\n")
    with pytest.raises(ConfigError, match="sampel"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nbeta = "high"\n')
    with pytest.raises(ConfigError, match=r"train\.beta"):
        load_config(path)


def test_bad_literal_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nzero_stage = 4\n")
    with pytest.raises(ConfigError, match=r"train\.zero_stage"):
        load_config(path)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[sample\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_overrides_apply_with_toml_types():
    cfg = load_config(None, ["sample.n=3", "train.beta=0.25", "pair.length_balance=false",
                             "run.name=abc", 'models.policy.path="some/dir"', "train.zero_stage=3"])
    assert (cfg.sample.n, cfg.train.beta, cfg.pair.length_balance, cfg.run.name) == (3, 0.25, False, "abc")
    assert cfg.models.policy.path == "some/dir" and cfg.train.zero_stage == 3


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"sample\.nn"):
        load_config(None, ["sample.nn=3"])
    with pytest.raises(ConfigError, match=r"sample\.n"):
        load_config(None, ["sample.n=many"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("sample.n")
    with pytest.raises(ConfigError, match="not a table"):
        load_config(None, ["run.seed=1", "run.seed.x=2"])


def test_config_is_immutable():
    with pytest.raises(AttributeError):
        Config().sample.n = 3  # type: ignore[misc]
    assert isinstance(Config(), msgspec.Struct)


@pytest.mark.parametrize("key, bad, allowed", [
    ("sample.n", "1", ">= 2"),  # one answer makes no pair
    ("sample.n", "0", ">= 2"),
    ("sample.n", "-1", ">= 2"),
    ("sample.temperature", "-1", ">= 0"),
    ("sample.top_p", "0", "in (0, 1]"),
    ("sample.top_p", "1.5", "in (0, 1]"),
    ("sample.max_new_tokens", "0", ">= 1"),
    ("split.temperature", "-0.5", ">= 0"),
    ("split.top_p", "2", "in (0, 1]"),
    ("split.max_claims", "0", ">= 1"),
    ("split.max_claim_chars", "0", ">= 1"),
    ("split.max_retries", "-1", ">= 0"),
    ("pair.min_score_gap", "0", ">= 1"),
    ("pair.pairs_per_instruction", "0", ">= 1"),
    ("pair.balance_ratio_step", "0", "in (0, 1)"),
    ("pair.balance_ratio_step", "1", "in (0, 1)"),
    ("models.labeler.gpu_memory_utilization", "0", "in (0, 1]"),
    ("models.labeler.gpu_memory_utilization", "1.1", "in (0, 1]"),
    ("models.policy.tensor_parallel_size", "0", ">= 1"),
    ("models.splitter.max_model_len", "0", ">= 1"),
    ("sample.resources.min_actors", "0", ">= 1"),
    ("score.resources.max_actors", "0", ">= 1"),
    ("split.resources.num_cpus", "-1", ">= 0"),
    ("pair.resources.num_gpus", "-0.5", ">= 0"),
    ("bon.resources.batch_size", "0", ">= 1"),
    ("eval.resources.batch_size", "-1", ">= 1"),
    ("validate.max_image_bytes", "0", ">= 1"),
    ("validate.max_image_pixels", "-1", ">= 1"),  # would divert every row
    ("validate.max_prompt_chars", "0", ">= 1"),
    ("train.learning_rate", "0", "> 0"),
    ("train.beta", "0", "> 0"),
    ("train.gamma", "0.5", ">= 1"),
    ("train.sft_weight", "-1", ">= 0"),
    ("train.weight_decay", "-0.01", ">= 0"),
    ("train.warmup_ratio", "1.5", "in [0, 1]"),
    ("train.epochs", "0", ">= 1"),
    ("train.micro_batch_size", "0", ">= 1"),
    ("train.gradient_accumulation_steps", "0", ">= 1"),
    ("train.max_grad_norm", "-1", ">= 0"),
    ("train.max_length", "0", ">= 1"),
    ("train.num_workers", "0", ">= 1"),
    ("train.cpus_per_worker", "-1", ">= 0"),
    ("train.checkpoint_every_steps", "-1", ">= 0"),
    ("bon.n", "0", ">= 1"),
    ("bon.beta", "-0.1", "> 0"),
    ("bon.temperature", "-1", ">= 0"),
    ("bon.top_p", "0", "in (0, 1]"),
    ("bon.max_new_tokens", "0", ">= 1"),
    ("eval.temperature", "-1", ">= 0"),
    ("eval.max_new_tokens", "0", ">= 1"),
    ("eval.probes_per_image", "-1", ">= 0"),
    ("eval.limit", "-1", ">= 0"),
    ("input.limit", "-1", ">= 0"),
    ("run.seed", "-1", "in [0, 4294967295]"),
    ("run.iterations", "0", ">= 1"),
    ("ray.num_cpus", "-2", ">= 0"),
    ("ray.object_store_mb", "10", ">= 75"),
])
def test_out_of_range_value_names_key_value_and_range(key, bad, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "smoke.toml", [f"{key}={bad}"])
    assert f"{key} = {bad} is out of range: must be {allowed}" in str(err.value)


def test_out_of_range_list_item_names_its_index():
    message = "sample.confounded_temperatures[1] = -1 is out of range: must be >= 0"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["sample.confounded_temperatures=[0.5, -1]"])


def test_out_of_range_in_a_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sample]\ntemperature = -1.0\n")
    message = f"{path}: sample.temperature = -1.0 is out of range: must be >= 0"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_values_at_the_edges_of_their_ranges_load():
    cfg = load_config(REPO / "configs" / "smoke.toml", [
        "sample.n=2", "sample.temperature=0", "sample.top_p=1", "models.policy.gpu_memory_utilization=1",
        "sample.resources.num_gpus=0", "train.warmup_ratio=0", "train.gamma=1", "train.max_grad_norm=0",
        "split.max_retries=0", "eval.probes_per_image=0", "run.seed=4294967295"])
    assert (cfg.sample.n, cfg.train.gamma, cfg.run.seed) == (2, 1, 2**32 - 1)
