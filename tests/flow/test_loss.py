import pytest
import torch

from ppflow.flow import drop_labels, flow_matching_loss, sample_times
from ppflow.models import create_model
from tests.conftest import randomize


def tiny(name, **kw):
    kw = {"in_channels": 2, "num_classes": 5, "input_size": 8, **kw}
    return randomize(create_model(name, **kw)).double()


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name, counts", [("PPF-tiny-2", [5, 2]), ("PPF-tiny-3", [1, 4, 2]), ("PPF-tiny-3", [3, 0, 1])])
def test_packed_batch_equals_per_sample_outputs_and_gradients(name, counts):
    model = tiny(name)
    sched = model.schedule
    stage = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    perm = torch.randperm(len(stage))
    stage = stage[perm]  # stages interleaved in the batch, uneven counts
    t = torch.stack([sched.stages[s].t_start + torch.rand(()) * sched.stages[s].span for s in stage.tolist()]).double()
    n = len(stage)
    x1, noise = torch.randn(n, 2, 8, 8, dtype=torch.float64), torch.randn(n, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 6, (n,))

    out = flow_matching_loss(model, x1, t, stage, y, noise)
    out.loss.backward()
    packed = grads(model)
    model.zero_grad()
    per = [flow_matching_loss(model, x1[i:i + 1], t[i:i + 1], stage[i:i + 1], y[i:i + 1], noise[i:i + 1])
           for i in range(n)]
    (sum(o.loss for o in per) / n).backward()
    single = grads(model)

    torch.testing.assert_close(out.per_sample, torch.cat([o.per_sample for o in per]), rtol=1e-12, atol=1e-12)
    assert packed.keys() == single.keys()
    for k in packed:
        torch.testing.assert_close(packed[k], single[k], rtol=1e-9, atol=1e-12, msg=k)
    # stages absent from the batch get no gradient in their projections, present ones do
    for s, c in enumerate(counts):
        g = model.x_embedder[s].proj.weight.grad
        assert (g is None or not g.any()) if c == 0 else g.abs().sum() > 0


def test_pinned_stage_overrides_the_stage_of_t():
    model = tiny("PPF-tiny-2")
    x1, noise = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randn(2, 2, 8, 8, dtype=torch.float64)
    t = torch.full((2,), 0.5, dtype=torch.float64)  # boundary: stage_of gives stage 0
    pinned = flow_matching_loss(model, x1, t, torch.tensor([1, 1]), None, noise).per_sample
    free = flow_matching_loss(model, x1, t, None, None, noise).per_sample
    stage0 = flow_matching_loss(model, x1, t, torch.tensor([0, 0]), None, noise).per_sample
    torch.testing.assert_close(free, stage0)
    assert not torch.allclose(pinned, free)


def test_exact_velocity_gives_zero_loss():
    data = torch.randn(1, 1, 4, 4)

    def oracle(x_t, t, y=None, stage=None):  # the true velocity towards a single data point
        return (data - x_t) / (1 - t).view(-1, 1, 1, 1)

    t = torch.tensor([0.0, 0.3, 0.9])
    out = flow_matching_loss(oracle, data.expand(3, -1, -1, -1), t, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)


def test_stage_sums_for_logging():
    model = tiny("PPF-tiny-3")
    ts = sample_times(model.schedule, 8, torch.Generator().manual_seed(0))
    out = flow_matching_loss(model, torch.randn(8, 2, 8, 8, dtype=torch.float64), ts.t.double(), ts.stage)
    sums, counts = out.stage_sums(3)
    assert counts == [4, 2, 2]
    assert sum(sums) == pytest.approx(out.per_sample.sum().item())


def test_label_dropout():
    model = tiny("PPF-tiny-2")
    y = torch.arange(5)
    assert torch.equal(drop_labels(model, y, 1.0), torch.full((5,), 5))
    assert drop_labels(model, y, 0.0) is y
    g = torch.Generator().manual_seed(0)
    dropped = drop_labels(model, torch.zeros(4000, dtype=torch.long), 0.1, g)
    assert (dropped == 5).double().mean().item() == pytest.approx(0.1, abs=0.015)
    assert drop_labels(tiny("PPF-tiny-2", num_classes=0), None, 0.1) is None
