"""A run's output folder: who holds it, what an earlier run left in it, and what a stopped run tells its user.

A run holds its --output-dir for its lifetime (hold): a second run, a resume or --test-only
that would write there stops at once, naming the process that holds it. The lock is the
operating system's (flock), so it ends with its process however that ends, kill -9 and power
cuts included: a killed run never leaves a folder stuck. The processes a run forks (its
DataLoader's workers) get no share of it.

A new run never writes over an earlier run's checkpoint.pth: it stops (refuse_earlier_run)
unless --overwrite, which removes that run's files (RUN_FILES) and nothing else.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import IO, Any

import torch

from coco_eval import ap_line, best_epoch, has_ground_truth
from utils import UserError, free_bytes, megabytes, writable_folder

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded against a second one
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"  # kept after the run: removing a lock file lets two later runs lock two different files
RUN_FILES = (
    "checkpoint.pth", "best.pth", "metrics.jsonl", "args.json", "split.json", "eval.json", "curves.png",
    "first_batch.png", "best_predictions.png", "results_bbox.json", "results_segm.json", "results_keypoints.json",
    "confusion_matrix.png", "pr_curves.png", "errors.json",
)  # fmt: skip
TENSORBOARD_FILES = "tensorboard/events.out.tfevents.*"
_HELD: weakref.WeakSet[IO[str]] = weakref.WeakSet()  # the lock files this process holds open


def _let_go_in_child() -> None:
    """In a process forked while a folder is held (a DataLoader's worker): its copy of the lock's descriptor is
    pointed at /dev/null. A forked copy shares the lock, and the test loader's persistent workers can outlive the run
    (train.main called again in one process, a notebook's): the lock must end when the run lets go."""
    for handle in list(_HELD):
        if not handle.closed:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, handle.fileno())
            os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


def hold(folder: str | Path, flag: str = "--output-dir") -> IO[str] | None:
    """Create `folder` if need be and lock it for as long as the returned file stays open (close it to let go).

    A UserError names the folder and the process holding it when another one does. Returns
    None where the system has no flock (Windows).
    """
    folder = Path(folder)
    if fcntl is None:
        writable_folder(folder, flag)
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the run's lifetime)
    except OSError:
        writable_folder(folder, flag)  # says why in one line
        raise
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that is starting"
        handle.close()
        raise UserError(
            f"{flag} {folder}: another run is writing there ({holder}); wait for it to end, or choose another {flag}"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M")
    handle.write(f"process {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}\n")
    handle.flush()
    writable_folder(folder, flag)  # after the lock: a check must not race a live run's writes
    _HELD.add(handle)
    return handle


def describe_run(folder: Path) -> str:
    """What the checkpoint.pth in `folder` holds, in a few words: "3 epochs, best mask AP 0.412 (epoch 2)"."""
    try:  # mmap: the metrics are read, not the weights
        checkpoint = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True, mmap=True)
        epochs, history = checkpoint["epoch"] + 1, checkpoint.get("metrics", [])
    except Exception:  # any unreadable file: it is still a run's, and still not to be overwritten
        return "a checkpoint that does not load"
    trained = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    best = best_epoch(history)
    if best is None or not has_ground_truth(best):
        return trained
    return f"{trained}, best {ap_line(best)} at epoch {best['epoch']}"


def refuse_earlier_run(folder: str | Path, resumed: str | Path | None, overwrite: bool) -> bool:
    """Stop a run (UserError) whose `folder` holds another run's checkpoint.pth, unless `overwrite`.

    `resumed`: the checkpoint this run continues (its own folder is not another run's).
    Returns whether there is an earlier run to remove (with `overwrite`).
    """
    checkpoint = Path(folder) / "checkpoint.pth"
    if not checkpoint.is_file() or (resumed and checkpoint.resolve() == Path(resumed).resolve()):
        return False
    if overwrite:
        return True
    raise UserError(
        f"--output-dir {folder} holds a run ({describe_run(Path(folder))}); continue it with --resume {checkpoint}, "
        "choose another --output-dir, or start over there with --overwrite"
    )


def remove_earlier_run(folder: str | Path) -> list[str]:
    """Delete what an earlier run wrote in `folder` (RUN_FILES and its TensorBoard logs), nothing else; returns
    the names it deleted."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    found += sorted(folder.glob(TENSORBOARD_FILES))
    for path in found:
        path.unlink()
    return [str(path.relative_to(folder)) for path in found]


def saved_epoch(folder: str | Path) -> int | None:
    """The epoch the checkpoint.pth in `folder` ends, or None if there is none that loads."""
    try:
        checkpoint = torch.load(Path(folder) / "checkpoint.pth", map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["epoch"])
    except Exception:  # none yet, or unreadable (a vanished disk): nothing to resume from
        return None


def how_to_continue(folder: str | Path, first: str = "") -> str:
    """The end of the line a stopped run prints: what was kept, and the command that continues (after `first`,
    such as "free some space")."""
    checkpoint = Path(folder) / "checkpoint.pth"
    if not os.path.isdir(folder):  # its disk is gone: what it holds cannot be known from here
        return f"when {folder} is back, continue with --resume {checkpoint}"
    epoch = saved_epoch(folder)
    then = f"{first}, then " if first else ""
    if epoch is None:
        return f"no epoch was saved yet: {then}run the command again"
    return f"the last good checkpoint (epoch {epoch}) is intact: {then}continue with --resume {checkpoint}"


def warn_if_little_space(folder: str | Path, checkpoint_size: int) -> None:
    """Warn (once, at the start) when `folder` has room for fewer than two checkpoints of `checkpoint_size` bytes:
    a checkpoint is written beside the last one before it replaces it."""
    free = free_bytes(folder)
    if free is not None and free < 2 * checkpoint_size:
        print(
            f"warning: --output-dir {folder} has {megabytes(free)} free, less than two checkpoints of this model "
            f"(2 x {megabytes(checkpoint_size)}); free some space, or the run stops when the disk is full"
        )


def output_folder(arguments: Any, typed: set[str]) -> Path:
    """The folder a run of train.py writes to: --output-dir, or a resumed checkpoint's own folder."""
    if arguments.resume and "output_dir" not in typed:
        return Path(arguments.resume).parent
    return Path(arguments.output_dir)
