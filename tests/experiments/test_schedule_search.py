import dataclasses
import itertools
import random

import pytest

from ppflow.experiments.schedule_search import Candidate, mirror, schedule_excess, search_schedules, simplest_within
from ppflow.models import create_config
from ppflow.models.flops import schedule_flops

CONFIG = create_config("PPF-mini-2", in_channels=1, num_classes=10, input_size=32, learn_sigma=False)
PATCHES = [(8, 8), (4, 8), (4, 4)]


def brute_force(edges, curves, budget, max_stages, guidance):
    """Every coarse-to-fine schedule on the bin edges, scored directly."""
    B = len(edges) - 1
    base = (4, 4)
    best = []
    for n in range(1, max_stages + 1):
        for cuts in itertools.combinations(range(1, B), n - 1):
            for ps in itertools.product(PATCHES, repeat=n):
                if ps[-1] != base or any(a[0] * a[1] <= b[0] * b[1] for a, b in itertools.pairwise(ps)):
                    continue
                ends = [*cuts, B]
                s = ",".join(f"{edges[j]:g}:{p[0]}x{p[1]}" for j, p in zip(ends, ps))
                scales = None if guidance == "none" else [1.0 if (guidance == "stage" and i == 0) else 2.0
                                                          for i in range(n)]
                f = schedule_flops(dataclasses.replace(CONFIG, schedule=s, level_embedding=None), cfg_scales=scales,
                                   baseline_cfg_scale=None if guidance == "none" else 2.0)["paper_fraction"]
                if f > budget + 1e-12:
                    continue
                starts = [0, *cuts]
                ex = sum((edges[k + 1] - edges[k]) * (curves[p][k] - curves[base][k])
                         for a, b, p in zip(starts, ends, ps) for k in range(a, b))
                best.append((ex, f, s))
    best.sort()
    return [b for b in best if not any(o is not b and o[0] <= b[0] + 1e-12 and o[1] <= b[1] + 1e-12
                                       for o in best)]  # Pareto-optimal only


@pytest.mark.parametrize("seed, guidance", [(0, "none"), (1, "stage"), (2, "all"), (3, "none")])
def test_dp_returns_the_brute_force_optimum(seed, guidance):
    rng = random.Random(seed)
    edges = [k / 6 for k in range(7)]
    curves = {(4, 4): [1.0] * 6}
    curves[(4, 8)] = [1.0 + rng.uniform(-0.05, 0.3) for _ in range(6)]
    curves[(8, 8)] = [1.0 + rng.uniform(-0.05, 0.6) for _ in range(6)]
    for budget in (0.45, 0.6, 0.8, 1.0):
        got = search_schedules(edges, curves, CONFIG, budget, max_stages=3, guidance=guidance, top=3)
        want = brute_force(edges, curves, budget, 3, guidance)
        assert got[0].excess == pytest.approx(want[0][0], abs=1e-12)
        assert got[0].flops_fraction <= budget + 1e-12
        assert [c.excess for c in got] == pytest.approx([w[0] for w in want[:3]], abs=1e-12)


def test_fixed_stage_count_and_excess_of_a_schedule_match_brute_force():
    rng = random.Random(7)
    edges = [k / 6 for k in range(7)]
    curves = {(4, 4): [1.0] * 6, (4, 8): [1.0 + rng.uniform(0, 0.3) for _ in range(6)],
              (8, 8): [1.0 + rng.uniform(0, 0.6) for _ in range(6)]}
    want = brute_force(edges, curves, 0.7, 3, "none")
    for n in (2, 3):
        got = search_schedules(edges, curves, CONFIG, 0.7, num_stages=n, top=50)
        assert got and all(c.num_stages == n for c in got)
        exact = sorted((e, s) for e, _, s in _all_schedules(edges, curves, 0.7, n))
        assert got[0].excess == pytest.approx(exact[0][0], abs=1e-12)
    for c in search_schedules(edges, curves, CONFIG, 0.7, top=10):
        assert schedule_excess(edges, curves, c.schedule) == pytest.approx(c.excess, abs=1e-12)
    assert want[0][0] == pytest.approx(search_schedules(edges, curves, CONFIG, 0.7)[0].excess, abs=1e-12)
    with pytest.raises(ValueError, match="num_stages"):
        search_schedules(edges, curves, CONFIG, 0.7, max_stages=2, num_stages=3)


def _all_schedules(edges, curves, budget, n):
    B, base = len(edges) - 1, (4, 4)
    for cuts in itertools.combinations(range(1, B), n - 1):
        for ps in itertools.product(PATCHES, repeat=n):
            if ps[-1] != base or any(a[0] * a[1] <= b[0] * b[1] for a, b in itertools.pairwise(ps)):
                continue
            s = ",".join(f"{edges[j]:g}:{p[0]}x{p[1]}" for j, p in zip([*cuts, B], ps))
            f = schedule_flops(dataclasses.replace(CONFIG, schedule=s, level_embedding=None))["paper_fraction"]
            if f <= budget + 1e-12:
                yield schedule_excess(edges, curves, s), f, s


def test_mirror_transposes_non_square_patches():
    assert mirror("0.5:8x8,0.75:8x4,1:4x4") == "0.5:8x8,0.75:4x8,1:4x4"
    assert mirror("0.3:16x8,0.6:8x4,1:4x4") == "0.3:8x16,0.6:4x8,1:4x4"
    assert mirror("0.5:8x8,1:4x4") == "0.5:8x8,1:4x4"


def test_simplest_within_one_standard_error():
    three = Candidate("0.4:8x8,0.55:4x8,1:4x4", 0.61, 0.0074)
    two = Candidate("0.5:8x8,1:4x4", 0.62, 0.0081)
    # two probes: the 3-stage schedule wins by 0.0007 on average, but by 0.0018 and -0.0004: SE 0.0011
    noisy = {three.schedule: [0.0070, 0.0078], two.schedule: [0.0088, 0.0074]}
    choice = simplest_within([three, two], noisy)
    assert choice.chosen == two and choice.best == three
    assert choice.stderr[two.schedule] == pytest.approx(0.0011, abs=1e-12)
    # the same mean gap resolved by both probes (0.0007 each time): the least excess stands
    sure = {three.schedule: [0.0070, 0.0078], two.schedule: [0.0077, 0.0085]}
    assert simplest_within([three, two], sure).chosen == three
    assert simplest_within([three, two], noisy, tolerance=0.0).chosen == three  # plain minimum
    assert simplest_within([three, two], sure, tolerance=0.001).chosen == two  # fixed tolerance
    one = {three.schedule: [0.0074], two.schedule: [0.0081]}
    assert simplest_within([three, two], one).chosen == three  # one probe: no spread, the minimum
    with pytest.raises(ValueError, match="no candidates"):
        simplest_within([], {})


def test_a_known_switch_point_is_recovered():
    """Coarse patches are free up to t = 0.3 and costly after: at a budget that allows it, switch exactly there."""
    edges = [k / 10 for k in range(11)]
    curves = {(4, 4): [1.0] * 10, (8, 8): [1.0] * 3 + [2.0] * 7}
    best = search_schedules(edges, curves, CONFIG, budget=0.9)[0]
    assert best.schedule == "0.3:8x8,1:4x4" and best.excess == pytest.approx(0.0)
    tight = search_schedules(edges, curves, CONFIG, budget=0.62)[0]  # must go coarse past 0.3: pays for it
    assert tight.flops_fraction <= 0.62 and tight.excess > 0


def test_budget_respected_exactly_and_bad_inputs():
    edges = [0, 0.5, 1]
    curves = {(4, 4): [1.0, 1.0], (8, 8): [1.0, 1.0]}
    ppf2 = schedule_flops(dataclasses.replace(CONFIG, schedule="0.5:8x8,1:4x4"))["paper_fraction"]
    assert search_schedules(edges, curves, CONFIG, budget=ppf2)[0].schedule == "0.5:8x8,1:4x4"
    assert search_schedules(edges, curves, CONFIG, budget=ppf2 - 1e-6) == []  # nothing cheaper on this grid
    with pytest.raises(ValueError, match="one value per bin"):
        search_schedules(edges, {(4, 4): [1.0]}, CONFIG, 0.5)
    with pytest.raises(ValueError, match="guidance"):
        search_schedules(edges, curves, CONFIG, 0.5, guidance="some")


def test_a_budget_no_schedule_can_meet_is_refused_before_any_probe_trains(tmp_path, capsys):
    from ppflow.cli import main
    from ppflow.models import create_model
    from tests.conftest import randomize

    src = tmp_path / "sit"
    randomize(create_model("SiT-tiny/2", schedule="1:2x2", in_channels=1, num_classes=10, input_size=16,
                           learn_sigma=False)).save_pretrained(src)
    argv = ["schedule", "search", "--from", str(src), "--data", "digits", "--budget", "0.1", "--probe-steps", "2",
            "--batch-size", "8", "--num", "16", "--bins", "4", "--out", str(tmp_path / "out"), "--json"]
    assert main(argv) == 2  # 4x4 patches over 3 of 4 bins cost >= 25% + ...: nothing fits 10%
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ("ppflow schedule search: error: no schedule on this grid fits test "
                                                   "FLOPs <= 0.1; raise --budget or add coarser --patches\n")
    assert not (tmp_path / "out" / "probe").exists()  # refused before any probe trained


def test_schedule_search_cli_probe_profile_search(tmp_path, capsys, monkeypatch):
    import json

    from ppflow.cli import main
    from ppflow.models import create_model
    from ppflow.models.schedule import PyramidSchedule
    from tests.conftest import randomize

    src = tmp_path / "sit"
    randomize(create_model("SiT-tiny/2", schedule="1:2x2", in_channels=1, num_classes=10, input_size=16,
                           learn_sigma=False)).save_pretrained(src)
    argv = ["schedule", "search", "--from", str(src), "--data", "digits", "--budget", "0.7", "--probe-steps", "2",
            "--batch-size", "8", "--num", "16", "--bins", "4", "--out", str(tmp_path / "out"), "--json",
            "--verify", "0"]  # the probes' choice; verified below
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["curves"]) == {"4x4", "2x4", "4x2", "2x2"} and len(res["curves"]["2x2"]) == 4
    best = res["schedules"][0]
    assert best["flops_fraction"] <= 0.7 and PyramidSchedule.from_string(best["schedule"]).base_patch == (2, 2)
    assert (tmp_path / "out" / "search.png").exists() and (tmp_path / "out" / "probe" / "checkpoints" / "last.pt").exists()
    # the probe run itself, profiled again: its raw weights, as the probe above (its EMA is mostly the start)
    again = ["schedule", "search", "--from", str(tmp_path / "out" / "probe"), *argv[4:8], "--probe-steps", "0",
             *argv[10:16], "--out", str(tmp_path / "again"), "--json"]
    assert main(again) == 0
    first = json.loads((tmp_path / "out" / "profile.json").read_text())["loss"]  # per probe; res: their mean
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curves"]
    assert got == {k: pytest.approx(first[f"probe [{k}]"], rel=1e-12) for k in res["curves"]}
    assert res["probes"] == 2 and (tmp_path / "out" / "probe-2" / "checkpoints" / "last.pt").exists()
    assert res["curves"]["2x2"] == pytest.approx([(a + b) / 2 for a, b in zip(first["probe [2x2]"],
                                                                                first["probe-2 [2x2]"])])
    assert res["chosen"]["schedule"] in {r["schedule"] for r in res["schedules"]}
    assert main([*argv[:6], "--budget", "0.7", "--tolerance", "some"]) == 2
    assert "--tolerance 'some' is neither" in capsys.readouterr().err
    assert main([*again[:8], "--probe-steps", "0", "--probe-seeds", "2"]) == 2
    assert "--probe-steps 0 profiles one model" in capsys.readouterr().err
    text = ["schedule", "search", "--from", str(src), *argv[4:16], "--out", str(tmp_path / "out"),
            "--verify", "0", "--tolerance", "1"]  # probes reused; any excess within 1: the fewest stages
    import ppflow.eval.profile as profile_module

    calls = []
    real = profile_module.loss_profile
    monkeypatch.setattr(profile_module, "loss_profile", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(text) == 0
    assert calls == []  # the same probes, data and bins: their profile is reused, not recomputed
    printed = capsys.readouterr().out
    assert "schedule for test FLOPs <= 0.7" in printed and "use it: ppflow train --model.schedule" in printed
    chosen = printed.split("guidance): ")[1].split()[0]
    assert chosen.count(",") + 1 == min(r["num_stages"] for r in res["schedules"])
    hand = "0.5:4x4,1:2x2"  # a user's own schedule, trained and ranked beside the searched ones
    verify = [*text[:-2], "--verify", "2", "--verify-steps", "2", "--compare", hand, "--json"]  # probes reused
    assert main(verify) == 0
    v = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    losses = {r["schedule"]: r["verified_loss"] for r in v["schedules"] if r["verified_loss"] is not None}
    assert len(losses) >= 2 and v["chosen"]["schedule"] == min(losses, key=losses.get) and v["verify_steps"] == 2
    assert hand in losses and [r["compared"] for r in v["schedules"]].count(True) == 1
    searched = [r["schedule"] for r in v["schedules"] if not r["mirror"]]  # least excess first
    twins = [r["schedule"] for r in v["schedules"] if r["mirror"]]  # the 2 least-excess ones transposed, trained too
    assert twins == [mirror(t) for t in searched[:2] if mirror(t) not in searched] and all(t in losses for t in twins)
    assert twins  # this tiny search has a non-square stage among its two best
    tiny = dataclasses.replace(create_model("SiT-tiny/2", schedule=hand, in_channels=1, num_classes=10,
                                            input_size=16, learn_sigma=False).config, level_embedding=None)
    assert next(r for r in v["schedules"] if r["schedule"] == hand)["flops_fraction"] == pytest.approx(
        schedule_flops(tiny)["paper_fraction"], rel=1e-12)
    assert main([*text[:-2], "--compare", "0.25:4x4,1:2x2"]) == 2  # 81% > 70%
    assert "--compare 0.25:4x4,1:2x2 needs" in capsys.readouterr().err
    assert main([*text[:-2], "--compare", "0.5:8x8,1:2x2"]) == 2
    assert "not candidates; add them to --patches" in capsys.readouterr().err
    assert len(list((tmp_path / "out" / "verify").glob("*-init"))) == len(losses)
    assert main([*text[:-4], "--verify-steps", "2", "--json"]) == 0  # a one-stage --from: verified by default
    v = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(r["verified_loss"] is not None for r in v["schedules"]) >= 3 and v["verify_steps"] == 2
    assert main([*again[:-1], "--verify", "1"]) == 2
    assert "--verify adapts --from to each schedule" in capsys.readouterr().err
    assert main([*argv[:6], "--budget", "0"]) == 2
    assert "--budget 0.0 must be a fraction" in capsys.readouterr().err
    assert main([*argv[:6], "--budget", "0.5", "--patches", "4x4"]) == 2
    assert "base patch 2x2" in capsys.readouterr().err


def test_schedule_search_scored_by_distillation_against_the_source(tmp_path, capsys):
    """--score distill: an adapter probe (every candidate patch at every t, data-free) scored by its velocity error
    against the source on held-out teacher trajectories; the finest patch is the source (0); coarse patches cannot
    run beyond the trajectories' range."""
    import json

    import torch

    import ppflow
    from ppflow.cli import main
    from ppflow.experiments.schedule_search import OUT_OF_RANGE
    from ppflow.models import create_model
    from ppflow.models.schedule import PyramidSchedule
    from tests.conftest import randomize

    src = tmp_path / "sit"
    randomize(create_model("SiT-tiny/2", schedule="1:2x2", in_channels=1, num_classes=10, input_size=16,
                           learn_sigma=False)).save_pretrained(src)
    out = tmp_path / "out"
    argv = ["schedule", "search", "--from", str(src), "--data", "digits", "--budget", "0.7", "--score", "distill",
            "--probe-steps", "3", "--probe-seeds", "1", "--batch-size", "8", "--num", "8", "--trajectory-steps", "4",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1  # --json: the probe's training log goes to stderr
    res = json.loads(printed[0])
    assert res["score"] == "distill" and res["bin_edges"] == [0.0, 0.1875, 0.375, 0.5625, 0.75, 1.0]  # 4 steps, beyond
    assert res["curves"]["2x2"] == [0.0] * 5 and all(res["curves"][p][-1] == OUT_OF_RANGE for p in ("4x4", "2x4"))
    for r in res["schedules"]:
        sched = PyramidSchedule.from_string(r["schedule"])
        assert r["flops_fraction"] <= 0.7 and all(s.t_end <= 0.75 for s in sched.stages[:-1])
    probe = ppflow.load_model(out / "probe" / "ema").eval()  # the curve is the probe's error, recomputed here
    from safetensors.torch import load_file

    states = load_file(out / "held-out-states.safetensors")
    s0 = probe.schedule.patches.index((4, 4))
    with torch.no_grad():
        pred = probe(states["states"][:, 2], torch.full((8,), 0.375), states["labels"], stage=s0)
    want = float((pred - states["cond"][:, 2]).square().mean(dim=(1, 2, 3)).mean())
    assert res["curves"]["4x4"][2] == pytest.approx(want, rel=1e-5)
    rolled = {r["schedule"]: r["verified_loss"] for r in res["schedules"]}  # the rollouts' end-image errors
    assert all(v is not None and v >= 0 for v in rolled.values()) and res["chosen"]["schedule"] == min(rolled,
                                                                                                        key=rolled.get)
    from ppflow.experiments.schedule_search import rollout_errors
    from ppflow.train.teacher import TeacherStates

    held = TeacherStates(states["states"], states["cond"], states["uncond"], states["labels"],
                         torch.linspace(0, 0.75, 5))
    fine_only = "1:2x2"  # the source's own rollout: no error
    assert rollout_errors(probe, held, [fine_only])[fine_only] == 0.0
    assert main([*argv[:-1], "--verify", "1"]) == 2
    assert "--verify fine-tunes each schedule" in capsys.readouterr().err
