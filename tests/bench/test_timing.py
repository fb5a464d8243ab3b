"""The one benchmark timer: warm-up rounds, a rotating order, the estimator, the time budget."""

import time

import torch

from ppflow.bench.timing import alternate


def test_alternate_warms_up_rotates_the_order_and_keeps_only_timed_runs():
    calls = []

    def run(label: str, r: int) -> float:
        calls.append((label, r))
        return {"a": 1.0, "b": 2.0, "c": 3.0}[label] + r

    t = alternate(["a", "b", "c"], run, repeats=2, warmup=1)
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2)]
    assert t.rounds == 2 and t.times == {"a": [2.0, 3.0], "b": [3.0, 4.0], "c": [4.0, 5.0]}
    assert t.summary("a") == {"seconds": 2.5, "median": 2.5, "min": 2.0, "times": [2.0, 3.0]}
    assert t.summary("a", "min")["seconds"] == 2.0


def test_alternate_stops_after_the_first_timed_round_past_the_budget():
    said = []
    t = alternate(["a", "b"], lambda label, r: 0.1, repeats=5, warmup=1, name="bench x", budget_s=1.0,
                  began=time.monotonic() - 2.0, log=said.append)
    assert t.rounds == 1 and t.times == {"a": [0.1], "b": [0.1]}
    assert said[-1] == "bench x: time budget 1 s reached after 1 timed round(s)"
    assert said[0] == "warm-up 1/1 a: 0.100s" and "repeat 1/5 b: 0.100s" in said


def test_executed_flops_counts_the_matmuls_that_ran_and_no_gradients():
    from ppflow.bench.timing import executed_flops

    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    assert executed_flops(layer, x) == 2 * 2 * 4 * 3  # one (2, 4) @ (4, 3); a bias add is not a FLOP counted
    assert executed_flops(lambda v: layer(layer(v) @ torch.ones(3, 4)), x) == 2 * (2 * 2 * 4 * 3) + 2 * 2 * 3 * 4
    assert torch.is_grad_enabled()
