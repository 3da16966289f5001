"""--time-budget: a run that ends on time, with its schedule stretched over the epochs that fit (budget.py)."""

import json
import math
import time

import pytest
import torch
from test_train import FAST, run_main

import budget
import engine


def _slowed(monkeypatch, seconds):
    """Every training step takes `seconds(step)` longer: a slow machine, made on purpose."""
    step, real = [0], engine.backward_and_step

    def slow(*args, **kwargs):
        step[0] += 1
        time.sleep(seconds(step[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "backward_and_step", slow)
    started = time.time()  # the budget runs from this process's start: here, the test's
    monkeypatch.setattr(budget, "process_start_time", lambda: started)
    return started


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_time_budget_ends_the_run_on_time_with_its_schedule_complete(pennfudan, tmp_path, monkeypatch, capsys):
    # 0.2 s more a step (4 steps an epoch): an epoch of FAST takes 3 to 7 s on the 2-core CPU, by the day, so
    # 3 to 9 epochs fit in the half minute, never the default 10.
    started = _slowed(monkeypatch, lambda step: 0.2)
    out = tmp_path / "out"
    run_main("--data-path", pennfudan, "--time-budget", 0.5, "--lr-scheduler", "cosineannealinglr",
             *FAST, "--output-dir", out)  # fmt: skip
    assert time.time() - started <= 0.5 * 60
    epochs = json.loads((out / "args.json").read_text())["epochs"]
    assert "epochs in all" in capsys.readouterr().out and 3 <= epochs < 10  # not the default 10: what fit
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(epochs))  # every planned epoch ran
    cosine = [0.001 * (1 + math.cos(math.pi * k / epochs)) / 2 for k in range(epochs)]
    lrs = [r["lr"] for r in records]  # (epoch 1's lr is the first plan's, which the second may have changed)
    assert lrs[:1] + lrs[2:] == pytest.approx(cosine[:1] + cosine[2:], rel=1e-6)  # stretched to what fit
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["lr_scheduler"]["T_max"] == checkpoint["lr_scheduler"]["last_epoch"] == epochs
    assert checkpoint["args"]["time_budget"] == 0.5 and checkpoint["budget"]["plans"] == 2


def test_epochs_slower_than_planned_end_at_the_budget_with_the_last_complete_one(
    pennfudan, tmp_path, monkeypatch, capsys
):
    started = _slowed(monkeypatch, lambda step: 0.1 if step <= 8 else 2.5)  # 4 steps an epoch: slow from the third
    out = tmp_path / "out"
    run_main("--data-path", pennfudan, "--time-budget", 0.4, *FAST, "--output-dir", out)
    assert time.time() - started <= 0.4 * 60 + 4  # the budget, and at most the step that crossed it and the exit
    printed = capsys.readouterr().out
    assert "the time budget ended in epoch" in printed and "is dropped" in printed
    records, planned = _records(out), json.loads((out / "args.json").read_text())["epochs"]
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == records[-1]["epoch"] == len(records) - 1 < planned - 1

    # A resume keeps the budget's end: what the run had left (nothing) and the epochs it planned.
    _slowed(monkeypatch, lambda step: 2.5)
    run_main("--resume", out / "checkpoint.pth")
    assert len(_records(out)) == len(records)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == checkpoint["epoch"]


def test_stretched_steps_move_in_proportion():
    assert budget.stretched_steps(10, 20, 3, None) == (6, None)
    assert budget.stretched_steps(30, 15, 8, [16, 22]) == (4, [8, 11])
    assert budget.TimeBudget(1.0, spent=30.0, started=100.0).deadline() == 130.0
    assert budget.TimeBudget(1.0, started=time.time() - 20).epochs(1, 10.0) == 4  # 40 s left less 2%: 3 more
