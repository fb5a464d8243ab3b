"""`ppflow bench diffusers` on tiny random FLUX and Wan: rows, the base row, FLOPs bounds from executed FLOPs."""

import pytest

from ppflow.bench.diffusers import DiffusersBenchConfig, bench_diffusers, format_table

pytest.importorskip("diffusers")


def test_rows_and_bounds():
    result = bench_diffusers(DiffusersBenchConfig(steps=4, repeats=1, warmup=0, tiny=True, caches=("taylorseer",)))
    rows = {(r["family"], r["schedule"], r["cache"]): r for r in result["rows"]}
    assert set(rows) == {("flux", "base", None), ("flux", "ppf2", None), ("flux", "base", "taylorseer"),
                         ("flux", "ppf2", "taylorseer"), ("wan", "base", None), ("wan", "ppf3-video", None),
                         ("wan", "base", "taylorseer"), ("wan", "ppf3-video", "taylorseer")}
    base = rows[("flux", "base", None)]
    assert base["base"] and base["speedup"] == 1.0 and base["flops_bound"] == 1.0
    assert rows[("flux", "ppf2", None)]["flops_bound"] > 1.1 and rows[("wan", "ppf3-video", None)]["flops_bound"] > 2
    assert {"prompt_accuracy", "fid"} <= set(base) and "direction_accuracy" in rows[("wan", "base", None)]
    assert format_table(result).count("\n") == len(rows) + 1


def test_bench_diffusers_cache_specs_are_checked_before_anything_runs(capsys):
    from ppflow.cli import main

    assert main(["bench", "diffusers", "--caches", "taylorseer:interval=3,foo=1"]) == 2
    assert "--caches: cache 'taylorseer': unknown key 'foo'" in capsys.readouterr().err
