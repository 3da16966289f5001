"""--time-budget MINUTES: train for a wall-clock budget instead of a number of epochs.

The budget runs from the process's start to its exit: start-up, the pre-flight read,
training, evaluation and checkpoint saves all count, as bench.py measures a recipe. The run
times its first epoch (training and evaluation), sets the number of epochs that fit in what
is left, and stretches its lr schedule over them (a cosine ends at the last of them; step
decays move in proportion), before it saves that epoch: every checkpoint holds the plan, so
a resume from any of them continues it. It plans once more in the second epoch (timed with
the first epoch's saves), whose time is free of the first's one-off costs (the first batch's
picture, the slow evaluation of an untrained model that finds 100 objects everywhere): on a
2-core CPU the first epoch of cpu-12min took 121 s and the next ones 104 to 115. After every
later epoch the number of epochs is revised from the mean time of the epochs after the first
(on an AMD EPYC, cpu-12min's second epoch took 122 s and the next ones 88-111: planned from
the second alone, the run ended at 9.3 of its 12 minutes): a cosine is stretched over the
revised number, and step decays stay where the second plan put them (moving them later would
undo a decay already taken). An epoch that would end past the budget is cut where the
budget ends, before any of it is saved: the run ends with its last complete epoch, whose
checkpoint was written whole. A resume keeps the budget's end: it is given what the earlier
processes left of it, and the epochs they chose.
"""

from __future__ import annotations

import math
import os
import time

PLANS = 2  # plans from one epoch's time, after the first epoch and the second; revisions after every later one
MARGIN = 0.02  # of the budget, kept for the run's exit (the summary, the last writes) and for slower epochs


class OutOfTime(Exception):
    """The time budget ended in the middle of an epoch: the epoch is dropped, the last complete one stands."""


def process_start_time() -> float:
    """When this process started, in time.time() seconds (Linux: from /proc; elsewhere: when this module loaded)."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): start time after boot, in clock ticks
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _LOADED


_LOADED = time.time()


class TimeBudget:
    """`minutes` of wall clock from this process's start, less the `spent` seconds of the run's earlier processes."""

    def __init__(self, minutes: float, spent: float = 0.0, started: float | None = None) -> None:
        self.seconds = minutes * 60
        self.spent_before = spent
        self.started = process_start_time() if started is None else started

    def spent(self) -> float:
        """Seconds of the budget used so far, by this process and the run's earlier ones."""
        return self.spent_before + time.time() - self.started

    def deadline(self) -> float:
        """The time.time() at which the budget ends."""
        return self.started + self.seconds - self.spent_before

    def epochs(self, done: int, epoch_seconds: float) -> int:
        """How many epochs the run has in all, `done` of them done, when each takes `epoch_seconds`; at least `done`."""
        left = self.seconds * (1 - MARGIN) - self.spent()
        return done + max(0, math.floor(left / max(epoch_seconds, 1e-6)))


def stretched_steps(nominal: int, epochs: int, step_size: int, steps: list[int] | None) -> tuple[int, list[int] | None]:
    """A step schedule planned for `nominal` epochs, moved in proportion to a run of `epochs`."""
    scale = epochs / max(nominal, 1)
    moved = [max(1, round(step * scale)) for step in steps] if steps else steps
    return max(1, round(step_size * scale)), moved
