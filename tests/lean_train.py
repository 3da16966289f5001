"""Run train.py as `python train.py ARGS` does, writing checkpoint.pth only after the run's last epoch, and no best.pth.

    python tests/lean_train.py ARGS...

For the tests that compare where runs end (a resume against a straight run, in processes of their own): they read
the last checkpoint.pth of each run and nothing before it, and the tests of checkpoints write every epoch's.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tiny_model  # noqa: E402 (tests/: this file's folder)

import checkpoint  # noqa: E402 (after the path)

tiny_model.register()  # its runs may train the tests' own model

real_save_epoch = checkpoint.save_epoch


def save_the_last_epoch(output_dir: Path, weights: dict, is_best: bool, *state: object) -> None:
    if weights["epoch"] == weights["args"]["epochs"] - 1:
        real_save_epoch(output_dir, weights, False, *state)


checkpoint.save_epoch = save_the_last_epoch  # before train.py's `from checkpoint import save_epoch`
sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
