"""The machine a benchmark ran on, and how busy it was: printed with every benchmark's figures.

Two heavy jobs on the same cores slow each other by up to 10x, so a timing means little without the
load it was taken under. Each benchmark reads the 1-minute load average before and after its runs and
prints :func:`load_line`, which says so when other processes competed for the cores.
"""

from __future__ import annotations

import os
import platform


def load_average() -> float:
    """The 1-minute load average (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 0.0


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_line(before: float, after: float) -> str:
    """``machine: <CPU>, 2 cores; 1-min load average 0.1 before, 1.9 after.`` (a warning if it was busy)."""
    cores = os.cpu_count() or 1
    line = f"machine: {cpu_name()}, {cores} cores; 1-min load average {before:.1f} before, {after:.1f} after"
    # The benchmark's own threads raise the load to about the core count; more means others competed.
    if max(before, after) > cores + 0.5:
        return line + f" (above {cores} cores: other processes competed, the timings are pessimistic)."
    return line + "."
