"""A pytest plugin that measures what the test suite costs: each test's seconds and the bytes it wrote to disk (Linux's
/proc/self/io write_bytes around it; a process a test starts and reaps counts in it). With pytest-xdist each worker
measures its own tests and the figures travel to the main process in the reports.

    PYTHONPATH=.ci python -m pytest -q -n 2 --dist loadgroup -p suite_cost     # the full suite, as CI runs it
    PYTHONPATH=.ci python -m pytest -q -m "not slow" -p suite_cost             # the fast part

At the end: the total, the ten slowest tests, the ten that wrote most, and each test file's share; with
SUITE_COST_JSON=PATH also every test's figures, as a json list of {"test", "seconds", "bytes"}, to compare two runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import pytest

STARTED = pytest.StashKey[tuple[float, int]]()


def _written() -> int:
    try:
        with open("/proc/self/io") as io:
            return int(next(line for line in io if line.startswith("write_bytes:")).split()[1])
    except (OSError, StopIteration):  # not Linux
        return 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    item.stash[STARTED] = (time.perf_counter(), _written())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.when == "teardown":
        started, written = item.stash[STARTED]
        report.user_properties.append(("cost", (time.perf_counter() - started, _written() - written)))


def pytest_terminal_summary(terminalreporter) -> None:
    costs = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", []):
                if key == "cost":
                    costs[report.nodeid] = value
    if not costs:
        return
    if os.environ.get("SUITE_COST_JSON"):
        rows = [{"test": nodeid, "seconds": round(s, 2), "bytes": b} for nodeid, (s, b) in sorted(costs.items())]
        with open(os.environ["SUITE_COST_JSON"], "w") as out:
            json.dump(rows, out, indent=0)
    write = terminalreporter.write_line
    terminalreporter.section("suite cost (.ci/suite_cost.py): seconds and bytes written a test")
    write(f"{len(costs)} tests, {sum(s for s, _ in costs.values()):.0f} s of tests, "
          f"{sum(b for _, b in costs.values()) / 1e9:.2f} GB written")  # fmt: skip
    for title, index in (("slowest", 0), ("most written", 1)):
        write(f"-- the ten {title}:")
        for nodeid, (seconds, written) in sorted(costs.items(), key=lambda kv: -kv[1][index])[:10]:
            write(f"{seconds:7.1f} s {written / 1e6:8.0f} MB  {nodeid}")
    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for nodeid, (seconds, written) in costs.items():
        share = files[nodeid.split("::")[0]]
        share[0], share[1], share[2] = share[0] + seconds, share[1] + written, share[2] + 1
    write("-- each file:")
    for name, (seconds, written, count) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        write(f"{seconds:7.1f} s {written / 1e6:8.0f} MB {count:4d} tests  {name}")
