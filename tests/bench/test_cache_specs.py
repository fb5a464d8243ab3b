"""Cache specs ("name:key=value,..."): defaults kept, settings parsed, wrong names/keys/values named."""

import pytest

from ppflow.bench.diffusers import cache_config, parse_cache, split_caches

pytest.importorskip("diffusers")


def test_names_keep_their_defaults():
    ts = cache_config("taylorseer")
    assert (ts.cache_interval, ts.disable_cache_before_step, ts.max_order) == (2, 3, 1)
    assert ts.cache_identifiers is None and not ts.use_lite_mode
    assert cache_config("first_block").threshold == 0.05


def test_settings_are_parsed():
    ts = cache_config("taylorseer:interval=3,warmup=1,order=2,stop=12,scope=blocks")
    assert (ts.cache_interval, ts.disable_cache_before_step, ts.max_order, ts.disable_cache_after_step) == (3, 1, 2, 12)
    assert ts.cache_identifiers and not ts.use_lite_mode
    assert cache_config("taylorseer:scope=lite").use_lite_mode
    assert cache_config("first_block:threshold=0.3").threshold == 0.3
    assert parse_cache(" taylorseer:interval=4:warmup=2 ") == ("taylorseer", {"interval": 4, "warmup": 2})


def test_a_list_of_specs_splits_at_names():
    assert split_caches("taylorseer,first_block") == ("taylorseer", "first_block")
    assert split_caches("taylorseer:interval=3,warmup=2,scope=blocks, first_block:threshold=0.2,taylorseer") == (
        "taylorseer:interval=3,warmup=2,scope=blocks", "first_block:threshold=0.2", "taylorseer")


@pytest.mark.parametrize("spec, message", [
    ("magic", "unknown cache 'magic'"),
    ("taylorseer:speed=2", "unknown key 'speed'"),
    ("first_block:interval=2", "unknown key 'interval'"),
    ("taylorseer:interval=x", "interval='x' cannot be read as int"),
    ("first_block:threshold", "is not key=value"),
    ("taylorseer:scope=all", "scope 'all'"),
    ("taylorseer:warmup=0", "must be >= 1"),
])
def test_wrong_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        cache_config(spec)
    with pytest.raises(ValueError, match=message):
        split_caches(f"taylorseer,{spec}")
