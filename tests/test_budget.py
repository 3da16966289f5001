"""--time-budget: a run that ends on time, with its schedule stretched over the epochs that fit (budget.py)."""

import json
import math
import os
import time
import types

import pytest
import torch
from conftest import keep_each_epoch, last_epoch, saves_in_memory, stand_in_training
from test_train import FAST, run_main

import budget
import engine
import train

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


class FakeClock:
    """time.time() for train.py, engine.py and budget.py, where nothing takes time but a training step, which takes
    `seconds(step)`: a run's timing is the same on any machine. Each run starts its process's clock (its budget).
    The steps and the evaluation are stand-ins (a constant loss, no gradient, no update; a constant AP): these tests
    are of the plan, the schedule and the checkpoints, not of learning, and real ones would cost real seconds."""

    def __init__(self, monkeypatch, seconds):
        self.now, self.steps = 1_000_000.0, 0
        fake = types.SimpleNamespace(time=lambda: self.now)
        for module in (train, engine, budget):
            monkeypatch.setattr(module, "time", fake)
        monkeypatch.setattr(budget, "process_start_time", lambda: self.now)

        def step():
            self.steps += 1
            self.now += seconds(self.steps)

        stand_in_training(monkeypatch, step)
        monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {"bbox": [0.1] * 12, "segm": [0.1] * 12})


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _cosine(epochs):
    return [0.001 * (1 + math.cos(math.pi * k / epochs)) / 2 for k in range(epochs)]


def test_a_time_budget_ends_the_run_on_time_with_its_schedule_complete(pennfudan, tmp_path, monkeypatch, capsys):
    clock = FakeClock(monkeypatch, lambda step: 1.0)  # 4 steps an epoch: 4 s
    saves_in_memory(monkeypatch, written=last_epoch)  # the checkpoint.pth the run ends with, the one read
    started, out = clock.now, tmp_path / "out"
    run_main("--data-path", pennfudan, "--time-budget", 0.3, "--lr-scheduler", "cosineannealinglr",
             *FAST, "--output-dir", out)  # fmt: skip
    assert clock.now - started <= 0.3 * 60
    epochs = json.loads((out / "args.json").read_text())["epochs"]
    assert "epochs in all" in capsys.readouterr().out and epochs == 4  # 17.6 s less the first 4: 3 more of 4 s
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(epochs))  # every planned epoch ran
    assert [r["lr"] for r in records] == pytest.approx(_cosine(epochs), rel=1e-6)  # stretched to what fit
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["lr_scheduler"]["T_max"] == checkpoint["lr_scheduler"]["last_epoch"] == epochs
    assert checkpoint["args"]["time_budget"] == 0.3 and checkpoint["budget"]["plans"] == epochs  # one each epoch
    assert checkpoint["budget"]["epoch_seconds"] == [4.0] * epochs


@pytest.mark.slow
def test_a_resume_from_any_epoch_s_checkpoint_keeps_the_plan_and_ends_by_the_budget(pennfudan, tmp_path, monkeypatch):
    FakeClock(monkeypatch, lambda step: 1.0)
    kept = keep_each_epoch(monkeypatch, tmp_path / "kept")
    common = ["--data-path", pennfudan, "--lr-scheduler", "cosineannealinglr", *FAST]
    run_main(*common, "--time-budget", 0.22, "--output-dir", tmp_path / "straight")
    straight = _records(tmp_path / "straight")
    assert len(straight) == 3  # 13.2 s: 4 s an epoch, planned in the first and again in the second
    for epoch in range(len(straight)):
        folder = tmp_path / f"from{epoch}"
        folder.mkdir()
        os.link(kept / f"straight-{epoch}.pth", folder / "checkpoint.pth")
        assert torch.load(folder / "checkpoint.pth", weights_only=True)["args"]["epochs"] == 3  # the plan, saved
        run_main("--resume", folder / "checkpoint.pth")
        resumed = torch.load(folder / "checkpoint.pth", weights_only=True)
        assert resumed["epoch"] == 2 and resumed["budget"]["spent"] <= 0.22 * 60
        assert [r["lr"] for r in _records(folder)] == pytest.approx([r["lr"] for r in straight], rel=1e-9)


def test_epochs_slower_than_planned_end_at_the_budget_with_the_last_complete_one(
    pennfudan, tmp_path, monkeypatch, capsys
):
    clock = FakeClock(monkeypatch, lambda step: 1.0 if step <= 8 else 10.0)  # 4 steps an epoch: slow from the third
    started, out = clock.now, tmp_path / "out"
    run_main("--data-path", pennfudan, "--time-budget", 0.4, *FAST, "--output-dir", out)
    assert clock.now - started <= 0.4 * 60 + 10  # the budget, and at most the step that crossed it
    printed = capsys.readouterr().out
    assert "the time budget ended in epoch 2, at iteration 2" in printed and "is dropped" in printed
    records, planned = _records(out), json.loads((out / "args.json").read_text())["epochs"]
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == records[-1]["epoch"] == 1 and planned == 5

    # A resume keeps the budget's end: what the run had left and the epochs it planned.
    run_main("--resume", out / "checkpoint.pth")
    assert len(_records(out)) == len(records)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == checkpoint["epoch"]


def test_a_slow_second_epoch_does_not_leave_the_budget_unused(pennfudan, tmp_path, monkeypatch, capsys):
    clock = FakeClock(monkeypatch, lambda step: 2.0 if 5 <= step <= 8 else 1.0)  # epochs of 4 s, the second 8 s
    saves_in_memory(monkeypatch, written=last_epoch)
    started, out = clock.now, tmp_path / "out"
    run_main("--data-path", pennfudan, "--time-budget", 0.5, "--lr-scheduler", "cosineannealinglr",
             *FAST, "--output-dir", out)  # fmt: skip
    # Planned from the second epoch alone, 4 epochs would end at 16 s of 30; revised from the mean of the epochs
    # after the first (8, 4, 4, ...), the plan grows to 5 and then 6, which end at 28 s.
    assert 0.5 * 60 - 4 <= clock.now - started <= 0.5 * 60
    assert "so 4 epochs in all" in capsys.readouterr().out
    records, planned = _records(out), json.loads((out / "args.json").read_text())["epochs"]
    assert planned == len(records) == 6
    assert records[-1]["lr"] == pytest.approx(_cosine(6)[-1], rel=1e-6)  # the cosine ends with the run
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["lr_scheduler"]["T_max"] == 6 and len(checkpoint["budget"]["epoch_seconds"]) == 6


def test_stretched_steps_move_in_proportion():
    assert budget.stretched_steps(10, 20, 3, None) == (6, None)
    assert budget.stretched_steps(30, 15, 8, [16, 22]) == (4, [8, 11])
    assert budget.TimeBudget(1.0, spent=30.0, started=100.0).deadline() == 130.0
    assert budget.TimeBudget(1.0, started=time.time() - 20).epochs(1, 10.0) == 4  # 40 s left less 2%: 3 more
