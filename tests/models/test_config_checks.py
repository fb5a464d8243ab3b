import dataclasses

import pytest

from ppflow.models.backbone import ModelConfig
from ppflow.models.config_checks import FIELD_CHECKS, model_field_problem


def test_every_model_config_field_has_a_check_and_defaults_pass():
    assert set(FIELD_CHECKS) == {f.name for f in dataclasses.fields(ModelConfig)}
    for key, value in ModelConfig().to_dict().items():
        assert model_field_problem(key, value) is None, key


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("depth", 0, "depth must be an integer >= 1, got 0"),
    ("depth", True, "depth must be an integer >= 1, got True"),
    ("input_size", [32, 0], "input_size must be a size >= 1 or [height, width], got [32, 0]"),
    ("mlp_ratio", float("nan"), "mlp_ratio must be a positive number, got nan"),
    ("level_embedding", "yes", "level_embedding must be true, false or null, got 'yes'"),
    ("stage_init", "bogus", "stage_init 'bogus' is not one of ('independent', 'pooled')"),
    ("time_map", 3, "time_map 3 is not one of ('identity', 'dit')"),
    ("coarse_output", "y", "coarse_output 'y' is not one of ('v', 'x', 'noise_skip', 'snr')"),
])
def test_bad_values_are_named_with_what_is_valid(key, value, problem):
    assert model_field_problem(key, value) == problem


def test_valid_values_and_unknown_keys_pass():
    assert model_field_problem("input_size", [32, 16]) is None and model_field_problem("input_size", 32) is None
    assert model_field_problem("stage_init", "pooled") is None and model_field_problem("schedule", {"a": 1}) is None
    assert model_field_problem("not_a_field", object()) is None
