"""Speed-adapter distillation: the target is a teacher forward of the source, the data-free cache resumes exactly,
the run resumes exactly and exports an adapter folder whose fine stage is the source, the compute is counted."""

import contextlib

import pytest
import torch

import ppflow
from ppflow.models.flops import forward_flops
from ppflow.sampling.guidance import guided_velocity
from ppflow.train import TrainConfig, train
from ppflow.train.distill import AdaptConfig, AdaptTask, adapt_train, cache_steps, conversion_flops
from ppflow.train.parallel import DistInfo
from ppflow.train.teacher import teacher_states


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "sit"
    cfg = TrainConfig(batch_size=16, max_steps=12, log_every=6, save_every=12, out=str(out), progress=False,
                      tensorboard=False)
    cfg.model.name, cfg.data.name, cfg.sample.every = "SiT-tiny/2", "digits", 0
    return train(cfg).ema_dir


def _cfg(source, out, **adapter):
    cfg = AdaptConfig(batch_size=8, max_steps=4, log_every=1, save_every=2, out=str(out), progress=False,
                      tensorboard=False)
    cfg.model.init, cfg.data.name, cfg.sample.every = str(source), "digits", 0
    cfg.adapter.trajectories, cfg.adapter.trajectory_steps, cfg.adapter.rank = 24, 4, 4
    for k, v in adapter.items():
        setattr(cfg.adapter, k, v)
    return cfg


@pytest.mark.parametrize("guided", [None, 3.0])
def test_the_target_is_a_teacher_forward_of_the_source(source, tmp_path, guided):
    task = AdaptTask(_cfg(source, tmp_path / "t", guided=guided, data_free=False), DistInfo())
    task.setup(None, True, print)
    src = ppflow.load_model(source).eval()
    x, t, y = torch.randn(5, 1, 16, 16), torch.full((5,), 0.3), torch.tensor([1, 2, 3, 10, 5])  # 10: null label
    want = guided_velocity(src, x, t, y, guided or 1.0) if guided else src(x, t, y)
    torch.testing.assert_close(task.teacher(x, t, y), want, atol=1e-6, rtol=1e-6)


def test_mix_1_trains_on_the_flow_matching_target_without_a_teacher_forward(source, tmp_path):
    from ppflow.train.batches import MicroBatch

    task = AdaptTask(_cfg(source, tmp_path / "fm", data_free=False, mix=1.0), DistInfo())
    task.setup(None, True, print)
    task.teacher = lambda *args: pytest.fail("mix 1 needs no teacher forward")
    x, y = task.data.get_batch(torch.arange(8))[:2]
    loss, _sums, counts = task.loss(MicroBatch(0, 0, x, y), contextlib.nullcontext)
    assert torch.isfinite(loss) and counts[-1] == 0 and sum(counts) == 8  # coarse stages only


def test_a_cut_data_free_cache_resumes_to_the_same_states(source, tmp_path):
    src = ppflow.load_model(source).eval()
    args = {"count": 70, "steps": 3, "t_end": 0.5, "cfg_scale": 2.0, "seed": 0, "shape": (1, 16, 16),
            "num_classes": 10, "stage": 0}
    full = teacher_states(src, "id", tmp_path / "a.safetensors", **args)
    teacher_states(src, "id", tmp_path / "b.safetensors", **args, limit=64)  # cut after the first chunk
    resumed = teacher_states(src, "id", tmp_path / "b.safetensors", **args)
    assert torch.equal(resumed.states, full.states) and torch.equal(resumed.labels, full.labels)
    assert full.states.shape == full.cond.shape == full.uncond.shape == (70, 4, 1, 16, 16)
    # the stored states are the teacher's Euler trajectory; between two of them state_at is that straight line
    x0, y = full.states[:2, 0], full.labels[:2]
    with torch.no_grad():
        x1 = x0 + (0.5 / 3) * guided_velocity(src, x0, torch.zeros(2), y, 2.0)
    torch.testing.assert_close(full.states[:2, 1], x1, atol=1e-5, rtol=1e-5)
    mid = full.state_at(full.states[:2], torch.tensor([0.5 / 6, 0.5 / 6]))
    torch.testing.assert_close(mid, (x0 + x1) / 2, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the cached targets are the teacher's conditional and unconditional velocities there
        torch.testing.assert_close(full.cond[:2, 1], src(x1, torch.full((2,), 0.5 / 3), y), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full.uncond[:2, 1], src(x1, torch.full((2,), 0.5 / 3), torch.full((2,), 10)),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="other settings \\(teacher\\)"):
        teacher_states(src, "another", tmp_path / "b.safetensors", **args)


def test_a_data_free_run_resumes_exactly_and_its_adapter_keeps_the_source_fine_stage(source, tmp_path):
    straight = adapt_train(_cfg(source, tmp_path / "a", guided=2.0))
    part = adapt_train(_cfg(source, tmp_path / "b", guided=2.0), overrides={"max_steps": 2})
    rest = adapt_train(resume=part.run_dir, overrides={"max_steps": 4})
    assert part.losses + rest.losses == straight.losses
    model, src = ppflow.load_model(straight.ema_dir).eval(), ppflow.load_model(source).eval()
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(model(x, torch.full((3,), 0.75), y), src(x, torch.full((3,), 0.75), y))
        assert not torch.allclose(model(x, torch.full((3,), 0.25), y), src(x, torch.full((3,), 0.25), y))


def test_finish_steps_keep_each_trajectorys_teacher_sample_and_sample_mix_trains_on_them(source, tmp_path):
    src = ppflow.load_model(source).eval()
    args = {"count": 3, "steps": 2, "t_end": 0.5, "cfg_scale": 2.0, "seed": 0, "shape": (1, 16, 16),
            "num_classes": 10, "stage": 0}
    plain = teacher_states(src, "id", None, **args)
    held = teacher_states(src, "id", tmp_path / "s.safetensors", **args, finish_steps=2)
    assert torch.equal(held.states, plain.states) and plain.samples is None and held.samples.shape == (3, 1, 16, 16)
    x, y = held.states[:, -1], held.labels  # Euler on to t = 1: from t_end with the cached velocity, then at 0.75
    x = x + 0.25 * (held.uncond[:, -1] + 2.0 * (held.cond[:, -1] - held.uncond[:, -1]))
    with torch.no_grad():
        x = x + 0.25 * guided_velocity(src, x, torch.full((3,), 0.75), y, 2.0)
    torch.testing.assert_close(held.samples, x, atol=1e-5, rtol=1e-5)
    packed, _ = held.get_batch(torch.tensor([2, 0]))
    assert torch.equal(held.samples_of(packed), held.samples[[2, 0]])
    assert all(torch.equal(a, b[[2, 0]]) for a, b in zip(held.split(packed), (held.states, held.cond, held.uncond)))
    with pytest.raises(ValueError, match="other settings \\(finish\\)"):  # another finish_steps: another cache
        teacher_states(src, "id", tmp_path / "s.safetensors", **args)
    res = adapt_train(_cfg(source, tmp_path / "mix", finish_steps=2, sample_mix=0.5), overrides={"max_steps": 3})
    assert res.step == 3 and all(0 < v < 10 for v in res.losses)
    with pytest.raises(Exception, match="sample_mix"):  # flow matching on teacher samples needs them cached
        adapt_train(_cfg(source, tmp_path / "bad", sample_mix=0.5), overrides={"max_steps": 1})


def test_the_rollout_loss_is_zero_for_a_student_that_is_the_teacher_and_trains(source, tmp_path):
    from ppflow.train.batches import MicroBatch

    cfg = _cfg(source, tmp_path / "roll", rollout=2, trajectory_cfg=2.0)
    task = AdaptTask(cfg, DistInfo())
    task.setup(None, True, print)
    task.model = lambda x, t, y, stage: task.raw(x, t, y, stage=task.fine)  # the source's own velocity
    x, y = task.data.get_batch(torch.arange(8))
    with torch.no_grad():
        loss, _sums, counts = task.loss(MicroBatch(0, 0, x, y), contextlib.nullcontext)
    assert loss < 1e-8 and sum(counts) == 8
    res = adapt_train(_cfg(source, tmp_path / "train", rollout=2, trajectory_cfg=2.0), overrides={"max_steps": 3})
    assert res.step == 3 and all(0 < v < 10 for v in res.losses)
    with pytest.raises(Exception, match="adapter.rollout 5"):  # longer than the cached trajectories (4 steps)
        adapt_train(_cfg(source, tmp_path / "bad", rollout=5), overrides={"max_steps": 1})


def test_cache_steps_follow_the_time_power():
    uniform = cache_steps(8, 4, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(0)))  # as before
    k = cache_steps(200_000, 4, 2.0, torch.Generator().manual_seed(0))
    cdf = torch.stack([(k <= j).double().mean() for j in range(5)])
    torch.testing.assert_close(cdf, ((torch.arange(5) + 1) / 5).double() ** 2, atol=5e-3, rtol=0)


@pytest.mark.parametrize("teacher", ["cache", "forward"])
def test_a_data_free_run_trains_from_either_teacher_target(source, tmp_path, teacher):
    res = adapt_train(_cfg(source, tmp_path / teacher, teacher=teacher), overrides={"max_steps": 3})
    assert res.step == 3 and all(0 < v < 10 for v in res.losses)


def test_conversion_compute_counts_teacher_student_and_cache(source, tmp_path):
    mc = ppflow.adapt(ppflow.load_model(source), "ppf2").config
    fine, coarse = forward_flops(mc, 1).total, forward_flops(mc, 0).total
    forward = conversion_flops(mc, _cfg(source, tmp_path, guided=2.0, teacher="forward").adapter, batch=8, steps=10)
    assert forward["step"] == 8 * (2 * fine + 3 * coarse)  # guided: two teacher forwards per sample
    cached = conversion_flops(mc, _cfg(source, tmp_path, guided=2.0).adapter, batch=8, steps=10)
    assert cached["step"] == 8 * 3 * coarse  # the targets come from the cache: the student alone
    assert cached["cache"] == 24 * 5 * fine * 2 and cached["total"] == 10 * cached["step"] + cached["cache"]
    data = conversion_flops(mc, _cfg(source, tmp_path, data_free=False).adapter, batch=8, steps=10)
    assert data["cache"] == 0 and data["step"] == 8 * (fine + 3 * coarse)
    fm = conversion_flops(mc, _cfg(source, tmp_path, data_free=False, mix=1.0).adapter, batch=8, steps=10)
    assert fm["cache"] == 0 and fm["step"] == 8 * 3 * coarse  # the flow-matching target alone: no teacher
    rolled = conversion_flops(mc, _cfg(source, tmp_path, rollout=3).adapter, batch=8, steps=10)
    assert rolled["step"] == 8 * 3 * coarse * 6  # 3 unrolled steps, a conditional and an unconditional forward each
    finished = conversion_flops(mc, _cfg(source, tmp_path, finish_steps=3).adapter, batch=8, steps=10)
    assert finished["cache"] == 24 * (5 + 2) * fine * 2  # 3 steps to t = 1: the first reuses the velocity at t_end
    assert coarse < fine / 3  # 4x fewer tokens


def test_the_adapt_command_sizes_the_run_by_budget_and_never_writes_over_its_source(source, tmp_path, capsys):
    from ppflow import cli

    out = tmp_path / "cli"
    args = ["adapt", "--method", "lora-distill", "--from", str(source), "--out", str(out), "--budget", "0.5",
            "--trajectories", "16", "--trajectory-steps", "2", "--rank", "4", "--batch-size", "8", "--threads", "1"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "% of the base)" in printed and "ppflow.load_model(" in printed
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    mc = ppflow.adapt(ppflow.load_model(source), "ppf2").config
    f = conversion_flops(mc, AdaptConfig(batch_size=8).adapter.__class__(trajectories=16, trajectory_steps=2), 8, 1)
    source_flops = 12 * 16 * f["source_step_per_sample"]  # the source: 12 steps at batch 16 (its run folder says)
    assert ckpt["step"] == int((0.5 * source_flops - f["cache"]) // f["step"])
    link = tmp_path / "link"
    link.symlink_to(source)
    for target in (str(source), str(link)):  # the source itself, also through a symlink: refused before anything
        assert cli.main([*args[:5], "--out", target, "--steps", "1"]) == 2
        assert "would destroy it" in capsys.readouterr().err


def test_a_few_shot_adapter_trains_on_its_images_by_flow_matching_and_checks_its_samples_for_copies(
        source, tmp_path, capsys):
    import json

    from ppflow import cli
    from ppflow.train.config import load_config

    out = tmp_path / "few"
    args = ["adapt", "--method", "lora-distill", "--from", str(source), "--out", str(out), "--steps", "3",
            "--data", "digits", "--images", "40", "--copy-check", "8", "--rank", "4", "--batch-size", "8",
            "--threads", "1"]
    assert cli.main(args) == 0
    cfg = load_config(out / "config.yaml", AdaptConfig)
    assert cfg.data.limit == 40 and cfg.adapter.mix == 1.0 and not cfg.adapter.data_free
    check = json.loads((out / "copy-check.json").read_text())
    assert check["samples"] == 8 and check["images"] == 40 and check["holdout"] > 0
    assert "copy check over 8 samples" in capsys.readouterr().out
    assert cli.main([*args[:5], "--out", str(tmp_path / "x"), "--steps", "1", "--images", "40"]) == 2
    assert "--images needs --data" in capsys.readouterr().err
    everything = [*args[:5], "--out", str(tmp_path / "all"), "--steps", "1", "--data", "digits", "--images", "5000"]
    assert cli.main(everything) == 0  # digits has 1797 images: all of them trained on, none left to hold out
    assert "copy check skipped: the copy check needs held-out images" in capsys.readouterr().out
    assert cli.main([*args[:5], "--out", str(tmp_path / "g"), "--steps", "1", "--data", "digits", "--guided", "2"]) == 2
    assert "drop --guided, or give --mix below 1" in capsys.readouterr().err
