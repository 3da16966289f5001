import io

import pytest
import torch
from torch import nn

from recipe import OPTIMIZERS, SCHEDULERS, make_optimizer, make_scheduler, parameter_groups, retarget_scheduler

SCHEDULE = {"epochs": 6, "step_size": 2, "steps": [2, 4], "gamma": 0.5}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def _epoch(model, optimizer, scheduler, epoch):
    generator = torch.Generator().manual_seed(epoch)
    for _ in range(3):
        x = torch.randn(16, 4, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scheduler.step()


def _build(opt, schedule, model=None):
    model = model or _model()
    optimizer = make_optimizer(model, opt, lr=0.1, momentum=0.9, weight_decay=1e-4, norm_weight_decay=0.0)
    return model, optimizer, make_scheduler(optimizer, schedule, **SCHEDULE)


@pytest.mark.parametrize("schedule", SCHEDULERS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_optimizer_and_schedule_resume_exactly(opt, schedule):
    model, optimizer, scheduler = _build(opt, schedule)
    lrs = []
    for epoch in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        _epoch(model, optimizer, scheduler, epoch)

    resumed, optimizer, scheduler = _build(opt, schedule)
    for epoch in range(3):
        _epoch(resumed, optimizer, scheduler, epoch)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    again, optimizer, scheduler = _build(opt, schedule)  # a new process: everything rebuilt, then loaded
    again.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["sched"])
    retarget_scheduler(scheduler, **SCHEDULE)
    for epoch in range(3, 6):
        assert optimizer.param_groups[0]["lr"] == lrs[epoch]
        _epoch(again, optimizer, scheduler, epoch)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_the_schedules_decay_as_named():
    expected = {
        "steplr": [0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
        "multisteplr": [0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
        "cosineannealinglr": [0.1, 0.0933, 0.075, 0.05, 0.025, 0.0067],
    }
    for schedule, lrs in expected.items():
        _, optimizer, scheduler = _build("sgd", schedule)
        seen = []
        for _ in range(6):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert seen == pytest.approx(lrs, abs=1e-4), schedule


def test_norm_layers_get_their_own_weight_decay():
    model = _model()
    (other, norm) = parameter_groups(model, weight_decay=1e-4, norm_weight_decay=0.0)
    assert norm["weight_decay"] == 0.0 and other["weight_decay"] == 1e-4
    assert {id(p) for p in norm["params"]} == {id(p) for p in model[1].parameters()}
    assert len(other["params"]) == 4
    (single,) = parameter_groups(model, weight_decay=1e-4, norm_weight_decay=None)
    assert len(single["params"]) == 6
    model[0].requires_grad_(False)
    assert sum(len(g["params"]) for g in parameter_groups(model, 1e-4, 0.0)) == 4  # frozen parameters are left out


def test_a_changed_epoch_count_moves_the_cosine_end():
    _, optimizer, scheduler = _build("sgd", "cosineannealinglr")
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    retarget_scheduler(scheduler, **{**SCHEDULE, "epochs": 12})
    lrs = []
    for _ in range(9):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] == pytest.approx(0.0, abs=1e-9)
