"""A run's output folder: an earlier run is never overwritten by accident, a live run's folder is never shared,
and a killed run never leaves it locked (run_folder.py, as train.py uses it)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, stand_in_training
from test_train import FAST, run_cli, run_cli_here, run_main

import run_folder

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(result, *expected):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


@pytest.mark.slow
def test_a_new_run_stops_before_an_earlier_run_s_folder(pennfudan, tmp_path, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "out"
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out)
    saved = {name: _digest(out / name) for name in ("checkpoint.pth", "best.pth", "metrics.jsonl")}
    result = run_cli("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out)  # the up arrow, pressed
    best = json.loads((out / "metrics.jsonl").read_text())["segm"][0]
    _one_line_error(
        result,
        f"--output-dir {out} holds a run (1 epoch, best mask AP {best:.3f} at epoch 0)",
        f"continue it with --resume {out / 'checkpoint.pth'}",
        "choose another --output-dir",
        "or start over there with --overwrite",
    )
    assert "Read " not in result.stdout  # before any work
    assert {name: _digest(out / name) for name in saved} == saved


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_s_files_and_only_those(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "out"
    first = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--tensorboard")
    assert first.returncode == 0, first.stderr
    (out / "notes.txt").write_text("mine")
    (out / "tensorboard" / "mine.txt").write_text("mine too")
    old_events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    result = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--seed", 1,
                          "--overwrite")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--overwrite: removed the earlier run's checkpoint.pth, best.pth, metrics.jsonl" in result.stdout
    assert (out / "notes.txt").read_text() == "mine" and (out / "tensorboard" / "mine.txt").exists()
    assert not any(path.exists() for path in old_events)
    assert json.loads((out / "args.json").read_text())["seed"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_a_folder_with_other_files_is_fine_and_overwrite_needs_a_new_run(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out)
    result = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 2, "--overwrite")
    _one_line_error(result, "--overwrite starts a new run over an earlier one; drop it to --resume a run")
    # A resume that writes into another run's folder is a new run's write there: refused alike.
    other = tmp_path / "other"
    shutil.copytree(out, other)  # a run of its own there (the copy's files name no folder of their own)
    result = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 2, "--output-dir", other)
    _one_line_error(result, f"--output-dir {other} holds a run (1 epoch")


@pytest.mark.slow
def test_a_live_run_holds_its_folder_and_a_killed_one_lets_go(pennfudan, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    args = ["--data-path", pennfudan, *FAST, "--epochs", 30, "--output-dir", out, "--print-freq", 1]
    # A live run that, once epoch 0 is saved, stays at epoch 1's save without writing or training more (so it holds
    # its folder without competing for the cores): train.py through tests/faulty_train.py.
    live = subprocess.Popen([sys.executable, "-u", "tests/faulty_train.py", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "FAULT_HANG": "checkpoint.pth:2"})  # fmt: skip
    try:
        for line in live.stdout:
            if line.startswith("FAULT: hanging at checkpoint.pth"):  # epoch 0 is saved, epoch 1 trained
                break
        holder = f"another run is writing there (process {live.pid} on "
        for command in (
            ["--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--overwrite"],  # a second run
            ["--resume", out / "checkpoint.pth", "--epochs", 40],  # a resume of the live run
            ["--resume", out / "checkpoint.pth", "--test-only"],  # an evaluation that writes eval.json there
        ):
            # in this process: the lock is the operating system's, held by the live run's process
            _one_line_error(run_cli_here(capsys, *command), f"--output-dir {out}: {holder}", "wait for it to end")
        elsewhere_eval = run_cli_here(
            capsys, "--resume", out / "checkpoint.pth", "--test-only", "--output-dir", elsewhere
        )
        assert elsewhere_eval.returncode == 0, elsewhere_eval.stderr
        assert (elsewhere / "eval.json").is_file() and live.poll() is None
    finally:
        live.send_signal(signal.SIGKILL)  # no clean-up of its own: the lock must end with the process
        live.communicate()
    resumed = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 2)
    assert resumed.returncode == 0, resumed.stderr


# Windows has neither: runs there are not guarded against a second one (run_folder.hold)
posix_only = pytest.mark.skipif(not hasattr(os, "fork") or run_folder.fcntl is None, reason="fork and flock")


def _hold_in_a_fork(folder):
    """run_folder.hold(`folder`) in a process of its own (forked: no start-up), as another run would take it: its exit
    status, 0 where it held the folder, 2 where it was refused naming the process that holds it, 1 otherwise."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            run_folder.hold(folder)
            code = 0
        except run_folder.UserError as error:
            code = 2 if "another run is writing there (process" in str(error) else 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@posix_only
def test_the_lock_is_per_folder_and_ends_with_its_holder(tmp_path):
    held = run_folder.hold(tmp_path / "out")
    try:
        assert _hold_in_a_fork(tmp_path / "other") == 0
        assert _hold_in_a_fork(tmp_path / "out") == 2
    finally:
        held.close()
    assert _hold_in_a_fork(tmp_path / "out") == 0


@posix_only
def test_a_process_forked_by_the_run_does_not_keep_its_folder(tmp_path):
    """A DataLoader's workers are forked while the run holds its folder, and the test loader's persistent ones can
    outlive the run (train.main called again in one process, as a notebook does): the folder is free once the run
    lets go, while they live."""
    held = run_folder.hold(tmp_path / "out")
    read, write = os.pipe()
    worker = os.fork()
    if worker == 0:  # lives until the test lets it end
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    try:
        os.close(read)
        held.close()
        assert _hold_in_a_fork(tmp_path / "out") == 0
        run_folder.hold(tmp_path / "out").close()  # and in the run's own process
    finally:
        os.close(write)
        os.waitpid(worker, 0)


@pytest.mark.parametrize("epochs", [0, 2])
def test_how_to_continue_names_the_last_saved_epoch(tmp_path, epochs):
    import torch

    if epochs:
        torch.save({"epoch": epochs - 1, "metrics": []}, tmp_path / "checkpoint.pth")
        expected = f"the last good checkpoint (epoch 1) is intact: continue with --resume {tmp_path / 'checkpoint.pth'}"
    else:
        expected = "no epoch was saved yet: run the command again"
    assert run_folder.how_to_continue(tmp_path) == expected
    assert run_folder.how_to_continue(tmp_path / "gone").startswith(f"when {tmp_path / 'gone'} is back, continue")
