import io
import json

import pytest
import torch
from conftest import saves_in_memory
from test_train import run_cli_here, run_lean
from torch import nn

import train
from recipe import (
    OPTIMIZERS,
    RECIPES,
    SCHEDULERS,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    recipe_help,
    recipe_values,
    retarget_scheduler,
)
from utils import UserError

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


# ---------------------------------------------------------------------------
# Named recipes (RECIPES) on train.py's command line.


def test_a_recipe_gives_its_settings_and_typed_flags_win():
    values = recipe_values("cpu-43min", typed={"lr", "data_path"})
    assert "lr" not in values and values["model"] == "maskrcnn_resnet18_fpn" and values["weights"] == "none"
    assert values["time_budget"] == 43 and "epochs" not in values
    # a typed --epochs cancels the budget; a typed --time-budget replaces the recipe's epochs
    assert "time_budget" not in recipe_values("cpu-43min", typed={"epochs"})
    assert "epochs" not in recipe_values("gpu-5min", typed={"time_budget"})
    assert recipe_values("gpu-5min", typed=set())["epochs"] == 40
    # the CPU recipes' levers: a 128-channel pyramid for their ResNet-18, which a typed --model does not take
    for name in ("cpu-12min", "cpu-43min", "cpu-box-20min"):
        assert {k: recipe_values(name, typed=set())[k] for k in ("fpn_channels", "amp")} == {
            "fpn_channels": 128,
            "amp": True,
        }
    assert "fpn_channels" not in recipe_values("cpu-12min", typed={"model"})
    with pytest.raises(UserError, match="--recipe cpu-1min: no such recipe; choose one of cpu-12min, cpu-43min"):
        recipe_values("cpu-1min", typed=set())


def test_every_recipe_names_real_flags_with_valid_values_and_runs_offline():
    parser = train.get_args_parser()
    known = {action.dest: action for action in parser._actions}
    for name, (line, values) in RECIPES.items():
        assert line and values["weights"] == "none", name
        for setting, value in values.items():
            assert setting in known, (name, setting)
            if known[setting].choices and value is not None:
                assert value in known[setting].choices, (name, setting)
    assert all(name in recipe_help() for name in RECIPES)
    assert all(name in parser.format_help() for name in RECIPES)


@pytest.mark.slow
def test_recipe_on_the_command_line_and_after_a_resume(pennfudan, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    # a narrow box head, which the recipe leaves as torchvision's: checkpoints of 13 M parameters, not 20
    small = ["--min-size", 64, "--max-size", 96, "--test-size", 3, "-j", 0, "--epochs", 1, "--box-head", 128]
    # as a user runs it (tests/lean_train.py: checkpoint.pth alone, the one file read); the resume and the refusals
    # after it in this process
    run = run_lean("--data-path", pennfudan, "--recipe", "cpu-12min", "--lr", 0.0001, *small, "--output-dir", out)
    assert run.returncode == 0, run.stderr
    assert "recipe cpu-12min: --model maskrcnn_resnet18_fpn --mask-head 2 128" in run.stdout
    assert "--fpn-channels 128 --amp" in run.stdout and "--amp True" not in run.stdout  # a switch as typed
    args = json.loads((out / "args.json").read_text())
    assert args["recipe"] == "cpu-12min" and args["model"] == "maskrcnn_resnet18_fpn" and args["opt"] == "adamw"
    assert args["lr"] == 0.0001 and "lr" not in args["recipe_settings"]  # the typed flag won
    assert args["min_size"] == 64 and "min_size" not in args["recipe_settings"]
    assert args["time_budget"] is None and args["epochs"] == 1  # the typed --epochs cancelled the budget
    assert args["recipe_settings"]["batch_size"] == 2 and args["batch_size"] == 2
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["args"]["recipe"] == "cpu-12min" and checkpoint["args"]["recipe_settings"]["opt"] == "adamw"

    saved = saves_in_memory(monkeypatch)  # the resumed epoch: its save is looked at, not its file
    resumed = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 2)  # needs no other flag
    assert resumed.returncode == 0, resumed.stderr
    args = json.loads((out / "args.json").read_text())
    assert (args["recipe"], args["lr"], args["epochs"], args["model"]) == (
        "cpu-12min",
        0.0001,
        2,
        "maskrcnn_resnet18_fpn",
    )
    assert [save["epoch"] for save in saved] == [1] and saved[0]["args"]["recipe"] == "cpu-12min"

    other = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--recipe", "cpu-43min", "--epochs", 3)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "--recipe cpu-43min: the run has cpu-12min" in other.stderr
    unknown = run_cli_here(capsys, "--data-path", pennfudan, "--recipe", "fast", "--output-dir", tmp_path / "x")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "choose one of cpu-12min, cpu-43min, cpu-box-20min, gpu-5min" in unknown.stderr
    both = run_cli_here(
        capsys, "--data-path", pennfudan, "--epochs", 2, "--time-budget", 5, "--output-dir", tmp_path / "y"
    )
    assert both.returncode == 2 and "--epochs and --time-budget: give one" in both.stderr


def test_adamw_is_the_fused_kernel_on_a_cpu_and_steps_as_the_plain_one():
    def net():  # no BatchNorm: a bias it cancels has a gradient of rounding noise, which Adam scales up to lr
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    fused_model, plain_model = net(), net()
    fused = make_optimizer(fused_model, "adamw", lr=0.01, weight_decay=0.05)
    plain = torch.optim.AdamW(parameter_groups(plain_model, 0.05, None), lr=0.01)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            loss = model(torch.randn(16, 4, generator=generator)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for key, value in fused_model.state_dict().items():
        assert torch.allclose(value, plain_model.state_dict()[key], atol=1e-6), key
    assert not torch.allclose(fused_model[0].weight, net()[0].weight)  # it stepped
