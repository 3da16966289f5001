"""Logging, checkpoints, seeding, distributed helpers: what the other modules share.

This module imports nothing from the project, so every other module can import it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix (a path, a file, a flag): train.py prints it as one line."""


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    A worker re-raises with the whole remote traceback as the message; its last line
    is "module.UserError: <message>", and only the message is for the user.
    """
    text = str(error).strip()
    last = text.splitlines()[-1] if text else type(error).__name__
    name = type(error).__name__
    for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last


# ---------------------------------------------------------------------------
# Progress logging (the shape of torchvision's references, written small).


class SmoothedValue:
    """A series of numbers: the median and mean over a window, and the mean over all."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})") -> None:
        self.window: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(value)
        self.count += n
        self.total += value * n

    @property
    def median(self) -> float:
        return float(np.median(self.window)) if self.window else 0.0

    @property
    def avg(self) -> float:
        return float(np.mean(self.window)) if self.window else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.window[-1] if self.window else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Collects named SmoothedValues and prints a progress line every `print_freq` steps."""

    def __init__(self, delimiter: str = "  ") -> None:
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            self.meters[name].update(float(value.item() if isinstance(value, torch.Tensor) else value))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "") -> Iterator:
        """Yield from `iterable`, printing ETA, meters, step and data time, and peak memory."""
        total = len(iterable)  # type: ignore[arg-type]
        width = len(str(total))
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        start = end = time.time()
        for i, item in enumerate(iterable):
            data_time.update(time.time() - end)
            yield item
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - 1 - i)))
                print(
                    self.delimiter.join(
                        [
                            f"{header} [{i:>{width}}/{total}]",
                            f"eta: {eta}",
                            str(self),
                            f"time: {iter_time}",
                            f"data: {data_time}",
                            f"max mem: {peak_memory_mb():.0f} MB",
                        ]
                    ),
                    flush=True,
                )
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        print(f"{header} Total time: {elapsed} ({(time.time() - start) / max(total, 1):.4f} s / it)", flush=True)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by PyTorch when CUDA is in use, else the process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------
# Data loading and seeding.


def available_cpus() -> int:
    """The CPU cores this process may use (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def collate_fn(batch: list[tuple[Any, Any]]) -> tuple[tuple, tuple]:
    """Detection batches are lists: images differ in size and targets in length."""
    return tuple(zip(*batch, strict=True))  # type: ignore[return-value]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (every device) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Files: written atomically, read safely.


# Writes that fail for want of space (or quota), or because the folder's disk went away: said in one line.
NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
FOLDER_GONE = (errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ENODEV, errno.ENXIO)


class WriteFailed(UserError):
    """A file could not be written for want of space or quota, or because its folder's disk is gone.

    `reason` says which in a user's words ("no space left on device"); the message names the
    file, about how much it needed and how much is free.
    """

    def __init__(self, path: Path, reason: str, needed: int, free: int | None) -> None:
        self.path, self.reason, self.needed, self.free = path, reason, needed, free
        room = f"it needs about {megabytes(needed)}" + (f", {megabytes(free)} free" if free is not None else "")
        super().__init__(f"{reason} while writing {path} ({room})")


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size < 10 * 2**20 else f"{size / 2**20:.0f} MB"


def free_bytes(folder: str | Path) -> int | None:
    """The bytes this process may still write in `folder`'s file system; None if it cannot be asked."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one it was raised from (torch.save turns a full disk into a
    RuntimeError raised while handling the OSError of the write)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


def atomic_write(path: str | Path, data: bytes | Any, size: int | None = None) -> None:
    """Write `data` (bytes, or a function that writes to a binary file) through a temporary file in the same folder,
    then rename it over `path`.

    os.replace is atomic on POSIX, so a kill at any moment leaves either the old file
    or the new one, never half of one. A full disk, an exceeded quota or a vanished mount
    raise WriteFailed (a UserError), the old file intact; `size` is the expected size of
    what a function writes, for that message.
    """
    path = Path(path)
    write = data if callable(data) else (lambda f: f.write(data))
    needed = len(data) if isinstance(data, bytes) else (size or 0)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_name, path)
    except BaseException as error:
        written = 0
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                written = os.stat(tmp_name).st_size
            with contextlib.suppress(OSError):
                Path(tmp_name).unlink(missing_ok=True)
        cause = _os_error_in(error)
        if cause is not None and (cause.errno in NO_SPACE or cause.errno in FOLDER_GONE):
            reason = NO_SPACE.get(cause.errno) or f"the folder's disk is gone ({cause.strerror})"
            raise WriteFailed(path, reason, max(needed, written), free_bytes(path.parent)) from error
        raise
    folder = os.open(path.parent, os.O_RDONLY)  # the rename survives a power cut once the folder is on disk too
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def writable_folder(path: str | Path, flag: str = "--output-dir") -> Path:
    """Create folder `path` if need be and check that a file can be written in it; a UserError names `flag` if not.

    Called before any work starts, so that a run does not train for hours and then fail to save.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError as error:
        raise UserError(f"{flag} {path}: is a file, not a folder; choose another {flag}") from error
    except OSError as error:  # a file on the way (NotADirectoryError), no permission, a read-only disk, ...
        reason = error.strerror or type(error).__name__
        raise UserError(f"{flag} {path}: cannot write there ({reason}); choose another {flag}") from error
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that atomic_write leaves behind when its process is killed (kill -9 cannot be
    caught): `.NAME.XXXXXXXX.tmp`. Call it before writing into `folder`; returns what it deleted."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a nest of dicts, lists and tuples: about what torch.save writes of it."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save, atomically; a full disk raises WriteFailed and any other failure a UserError, the old file
    intact either way."""
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f), size=tensor_bytes(checkpoint))
    except OSError as error:
        raise UserError(f"could not write checkpoint {path}: {error}; the previous checkpoint is unchanged") from error


def load_checkpoint(path: str | Path) -> Any:
    """torch.load with weights_only=True: tensors and plain types load, code never runs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors have no common base class
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{path}: refused to load it with weights_only=True ({reason}); it is not a plain checkpoint"
        raise UserError(message) from error


def write_json(data: Any, path: str | Path) -> None:
    """json.dump, atomically."""
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file; a torn last line (a kill mid-write) is dropped."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> None:
    """Rewrite a JSON-lines file atomically (used to append: records are few and small)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without one, in one line naming --device."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")


def default_device() -> str:
    """cuda when a GPU is there, else cpu: the --device default of every command."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX, as Linux lists its flags): only there does
    bfloat16 autocast train faster than float32 (1.31x per image on a 2-core AMD EPYC with AVX512-BF16); elsewhere,
    or where nothing says, False."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def exit_with_user_error(error: BaseException) -> None:
    """Print one line to stderr and exit with status 2 (every rank prints: the error may be one rank's alone)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    where = f"[rank {torch.distributed.get_rank()}] " if distributed and torch.distributed.get_world_size() > 1 else ""
    sys.stderr.write(f"{where}error: {one_line(error)}\n")
    raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler's preemption, docker stop, kill): a run stops as it does on Ctrl-C."""


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in this process, wherever it is (an atomic write then keeps the old
    file). Processes forked from it (DataLoader workers) still die of SIGTERM at once, as they would without."""
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def in_fresh_process(function: Any, *args: Any) -> Any:
    """Run function(*args) in a new Python process and return its result (its errors are raised here)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
