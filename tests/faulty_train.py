"""Run train.py as `python train.py ARGS` does, with faults injected at checkpoint writes (for test_faults.py).

    python tests/faulty_train.py ARGS...

FAULT_SLOW_WRITE=S   every checkpoint write writes half its bytes, prints "FAULT: half-written <file>",
                     sleeps S seconds, then writes the rest: a kill then lands mid-write.
FAULT_ENOSPC=NAME:N  the N-th write of the checkpoint named NAME fails half-way with "No space
                     left on device", as a full disk does.
FAULT_HANG=NAME:N    the N-th write of the checkpoint named NAME prints "FAULT: hanging at <file>" and
                     sleeps, before its first byte, until the process is killed: a run that stays
                     live (its folder held) without training or writing more.
"""

from __future__ import annotations

import errno
import io
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tiny_model  # noqa: E402 (tests/: this file's folder)

import utils  # noqa: E402 (after the path)

tiny_model.register()  # its runs may train the tests' own model

real_atomic_write = utils.atomic_write
saves: dict[str, int] = {}


def faulty_atomic_write(path, write, **options):
    name = Path(path).name
    if not name.endswith(".pth"):
        return real_atomic_write(path, write, **options)
    saves[name] = saves.get(name, 0) + 1
    hang_name, _, hang_count = os.environ.get("FAULT_HANG", "").partition(":")
    if hang_name == name and saves[name] == int(hang_count):
        print(f"FAULT: hanging at {name}", flush=True)
        while True:
            time.sleep(60)

    def write_in_two_halves(f):
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        full_name, _, count = os.environ.get("FAULT_ENOSPC", "").partition(":")
        if full_name == name and saves[name] == int(count):
            raise OSError(errno.ENOSPC, "No space left on device")
        if os.environ.get("FAULT_SLOW_WRITE"):
            print(f"FAULT: half-written {name}", flush=True)
            time.sleep(float(os.environ["FAULT_SLOW_WRITE"]))
        f.write(data[len(data) // 2 :])

    return real_atomic_write(path, write_in_two_halves, **options)


utils.atomic_write = faulty_atomic_write
sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
