import torch
from torch import nn

from ppflow.train.ema import EMA


def test_ema_is_an_exact_moving_average():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)
    ema.update(model, step=1)
    # 0 -> 0.1 -> 0.19
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 0.19))


def test_ema_warmup_follows_the_model_early_then_uses_the_decay():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999, warmup=True)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(10**6) == 0.999
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)  # decay 0.1: 0 -> 0.9
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 0.9))
