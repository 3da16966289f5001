import math

import pytest
import torch
from torch import nn

import train
from ema import ModelEMA
from utils import UserError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_average_follows_the_ramped_decay_and_copies_counters():
    model = _net()
    ema = ModelEMA(model, decay=0.9)
    assert ema.ramp == pytest.approx(10)  # the window of a 0.9 decay: 10 steps
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items() if v.is_floating_point()}
    for step in range(1, 4):
        model.train()
        model.zero_grad()
        model(torch.randn(8, 3)).pow(2).sum().backward()  # and BatchNorm's running statistics move
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
        ema.update(model)
        rate = 0.9 * (1 - math.exp(-step / 10))  # small at first: the average follows the weights closely
        current = model.state_dict()
        expected = {k: rate * v + (1 - rate) * current[k] for k, v in expected.items()}
    for key, value in expected.items():
        assert torch.allclose(ema.module.state_dict()[key], value, atol=1e-6), key
        assert not torch.equal(value, model.state_dict()[key]), key  # an average, not the weights themselves
    tracked = "1.num_batches_tracked"
    assert ema.module.state_dict()[tracked] == model.state_dict()[tracked] == 3  # copied, not averaged
    assert ema.updates == 3 and not any(p.requires_grad for p in ema.module.parameters())


def test_a_restored_average_goes_on_as_if_never_stopped():
    model, other = _net(), _net()
    ema = ModelEMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight += 0.5
        ema.update(model)
    checkpoint = {"model": ema.module.state_dict(), **ema.training_state(model)}
    resumed = ModelEMA(other, decay=0.9)  # a resume's model holds the average ("model") at first
    resumed.restore(checkpoint, other)
    assert resumed.updates == 3 and torch.equal(other[0].weight, model[0].weight)  # the raw weights train on
    for run, weights in ((ema, model), (resumed, other)):
        with torch.no_grad():
            weights[0].weight += 0.5
        run.update(weights)
    assert torch.equal(resumed.module[0].weight, ema.module[0].weight)


@pytest.mark.parametrize("decay", ["0", "1", "1.5"])
def test_a_decay_outside_0_and_1_is_refused(decay):
    args, _ = train.parse_args(["--model-ema", "--model-ema-decay", decay])
    with pytest.raises(UserError, match=f"--model-ema-decay {float(decay)}: must lie between 0 and 1"):
        train.check_args(args)
