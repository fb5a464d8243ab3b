import torch

from ppflow.models import create_model
from ppflow.train.bench import time_train_steps


def test_time_train_steps_trains_the_model():
    model = create_model("PPF-tiny-3", input_size=8, in_channels=2, num_classes=5)
    before = [p.detach().clone() for p in model.parameters()]
    times = time_train_steps(model, batch=4, steps=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved)  # every stage's projections got an update (stratified batch of 4 covers 3 stages)
