"""Configuration: resolution order, presets, and errors that name the setting and what is allowed."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import yaml

from grpo.config import (ALGORITHM_FIELDS, DEMO_DEFAULTS, FIELDS, PRESETS, ConfigError, TrainConfig, load_yaml,
                         resolve)

MODEL = {"model": "some/model"}        # a named model: no demo defaults


def write_yaml(path, values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def from_yaml(path, overrides=None, **kw) -> TrainConfig:
    return resolve(load_yaml(path), overrides, yaml_path=path, **kw)


# ------------------------------------------------------------------ resolution order
def test_field_defaults_when_nothing_is_given_except_a_model():
    cfg = resolve(overrides=MODEL)
    for name, f in FIELDS.items():
        if name not in ALGORITHM_FIELDS and name != "model":
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert getattr(cfg, name) == default, name
    assert cfg.preset == "seed"
    assert {k: getattr(cfg, k) for k in PRESETS["seed"]} == PRESETS["seed"]


def test_yaml_overrides_preset_and_flags_override_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"preset": "dapo", "epsilon_high": 0.3, "beta": 0.1,
                                              "group_size": 6, "model": "some/model"})
    cfg = from_yaml(path, {"beta": 0.2})
    assert cfg.preset == "dapo"
    assert cfg.loss_aggregation == "token_mean"          # from the preset
    assert cfg.filter_zero_variance_groups is True       # from the preset
    assert cfg.epsilon_high == 0.3                       # YAML beats the preset's 0.28
    assert cfg.group_size == 6                           # YAML beats the field default
    assert cfg.beta == 0.2                               # the flag beats YAML (and the preset's 0)


def test_flag_preset_beats_yaml_preset_but_not_yaml_values(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"preset": "dapo", "gamma": 0.95, "model": "m"})
    cfg = from_yaml(path, {"preset": "deepseekmath"})
    assert cfg.preset == "deepseekmath"
    assert cfg.kl_estimator == "k3" and cfg.beta == 0.04 and cfg.epsilon_high is None
    assert cfg.gamma == 0.95                             # YAML still beats the (flag-chosen) preset


def test_demo_defaults_apply_only_without_a_model(tmp_path):
    demo = resolve()
    for k, v in DEMO_DEFAULTS.items():
        assert getattr(demo, k) == v, k
    assert {k: getattr(demo, k) for k in PRESETS["dr_grpo"]} == PRESETS["dr_grpo"]

    named = resolve(overrides=MODEL)
    assert named.preset == "seed"
    assert named.group_size == FIELDS["group_size"].default and named.lr == FIELDS["lr"].default

    # a model named in the YAML file counts too
    path = write_yaml(tmp_path / "m.yaml", MODEL)
    assert from_yaml(path).lr == FIELDS["lr"].default


def test_yaml_and_flags_override_demo_defaults(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"group_size": 4, "lr": 3e-4})
    cfg = from_yaml(path, {"lr": 2e-4, "preset": "seed"})
    assert cfg.model is None
    assert cfg.group_size == 4 and cfg.lr == 2e-4
    assert cfg.prompts_per_step == DEMO_DEFAULTS["prompts_per_step"]       # demo sizes kept
    assert cfg.preset == "seed" and cfg.token_credit == "discounted"       # the flag's preset, not the demo's


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_field_lands_in_the_config(preset):
    cfg = resolve(overrides={**MODEL, "preset": preset})
    assert cfg.preset == preset
    for k, v in PRESETS[preset].items():
        assert getattr(cfg, k) == v, f"{preset}.{k}"


def test_every_preset_sets_every_algorithm_field():
    # so a preset alone defines the algorithm, whatever the previous preset was
    for name, bundle in PRESETS.items():
        assert set(bundle) == set(ALGORITHM_FIELDS), name
    assert len({tuple(sorted(b.items(), key=str)) for b in PRESETS.values()}) == len(PRESETS)


# ------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("name, value, allowed", [
    ("group_size", 1, ">= 2"),
    ("temperature", 0, "> 0"),
    ("temperature", -1.0, "> 0"),
    ("epsilon", 1.5, "<= 1"),
    ("epsilon", 1.0, "< 1"),
    ("top_p", 2, "<= 1"),
    ("lr", 0, "> 0"),
    ("max_steps", 0, ">= 1"),
    ("adam_beta2", 1.0, "< 1"),
    ("lr", float("nan"), "finite"),
])
def test_out_of_range_value_names_field_and_bound(name, value, allowed):
    with pytest.raises(ConfigError) as e:
        resolve(overrides={**MODEL, name: value})
    msg = str(e.value)
    assert msg.startswith(name) and allowed in msg, msg


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="min_new_tokens.*max_new_tokens"):
        resolve(overrides={**MODEL, "min_new_tokens": 9, "max_new_tokens": 8})
    with pytest.raises(ConfigError, match="minibatches.*prompts_per_step"):
        resolve(overrides={**MODEL, "minibatches": 3, "prompts_per_step": 2})


@pytest.mark.parametrize("name, value, expected", [
    ("lr", "abc", "float"),
    ("group_size", 1.5, "int"),
    ("group_size", "four", "int"),
    ("group_size", True, "int"),
    ("token_norm", "maybe", "bool"),
    ("preset", "grpo", "seed, deepseekmath, dr_grpo, dapo, gspo, trl"),
    ("kl_estimator", "k4", "k1, k2, k3, full"),
])
def test_wrong_type_names_field_and_expected_type(name, value, expected):
    with pytest.raises(ConfigError) as e:
        resolve(overrides={**MODEL, name: value})
    msg = str(e.value)
    assert msg.startswith(name) and expected in msg and repr(value) in msg, msg


def test_string_values_from_flags_are_converted():
    cfg = resolve(overrides={**MODEL, "lr": "1e-3", "group_size": "8", "token_norm": "false",
                             "epsilon_high": "none", "top_p": "0.9"})
    assert cfg.lr == 1e-3 and cfg.group_size == 8 and cfg.token_norm is False
    assert cfg.epsilon_high is None and cfg.top_p == 0.9


def test_unknown_yaml_key_names_file_and_suggests_the_close_match(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", {"group_szie": 4})
    with pytest.raises(ConfigError) as e:
        load_yaml(path)
    msg = str(e.value)
    assert path in msg and "group_szie" in msg and "did you mean 'group_size'" in msg, msg


def test_unknown_override_suggests_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        resolve(overrides={"temprature": 0.7})


def test_yaml_bad_value_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"model": "m", "group_size": "lots"})
    with pytest.raises(ConfigError) as e:
        from_yaml(path)
    msg = str(e.value)
    assert "group_size" in msg and path in msg and "int" in msg, msg

    path = write_yaml(tmp_path / "bad_choice.yaml", {"model": "m", "loss_aggregation": "sum"})
    with pytest.raises(ConfigError, match="loss_aggregation") as e:
        from_yaml(path)
    assert path in str(e.value)

    # out of range (checked after all layers are merged) still names the file it came from
    path = write_yaml(tmp_path / "bad_range.yaml", {"model": "m", "group_size": 1})
    with pytest.raises(ConfigError) as e:
        from_yaml(path)
    assert str(e.value) == f"group_size (in {path}): must be >= 2, got 1"


def test_yaml_that_is_not_a_mapping_or_missing_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_yaml(str(path))
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_yaml(str(tmp_path / "nowhere.yaml"))


# -------------------------------------------------------------------- group size
@pytest.mark.parametrize("G", [2, 3])
def test_small_groups_warn(G):
    with pytest.warns(UserWarning, match=f"group_size={G}"):
        cfg = resolve(overrides={**MODEL, "group_size": G})
    assert cfg.group_size == G


def test_group_of_four_does_not_warn_and_one_is_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(overrides={**MODEL, "group_size": 4})
    with pytest.raises(ConfigError, match="group_size"):
        resolve(overrides={**MODEL, "group_size": 1})
