"""Config: strict decoding, overrides, round trips, and the shipped configs."""

import tomllib
from pathlib import Path

import msgspec
import pytest

from engine.config import Config, ConfigError, config_from_dict, config_to_dict, config_to_toml, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_reference_values():
    cfg = Config()
    assert (cfg.sample.n, cfg.sample.temperature, cfg.sample.top_p, cfg.sample.max_new_tokens) == (10, 0.7, 1.0, 512)
    assert (cfg.split.temperature, cfg.split.top_p, cfg.split.max_new_tokens) == (0.2, 0.9, 256)
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
