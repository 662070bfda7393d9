"""What the benchmark reads about the server process from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessSample", "loadavg", "parse_loadavg", "sample"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float  # user + system time so far
    rss_kib: int
    threads: int


def parse_stat(text: str) -> float:
    """User+system CPU seconds from the contents of /proc/PID/stat.

    The command name (field 2) is in parentheses and may contain spaces or parentheses,
    so fields are counted from the last ')'. Raises `ValueError` if it is malformed.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime(14) stime(15): indexes 11 and 12 of `rest`.
    return (int(rest[11]) + int(rest[12])) / _TICKS


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS in KiB, thread count) from the contents of /proc/PID/status."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["Threads"]


def sample(pid: int, proc: Path = Path("/proc")) -> ProcessSample:
    """Read the process now. Raises `OSError` if it is gone, `ValueError` if /proc is odd."""
    rss, threads = parse_status((proc / str(pid) / "status").read_text())
    return ProcessSample(parse_stat((proc / str(pid) / "stat").read_text()), rss, threads)


def parse_loadavg(text: str) -> float:
    """The 1-minute load average from the contents of /proc/loadavg. Raises `ValueError`."""
    return float(text.split()[0])


def loadavg(proc: Path = Path("/proc")) -> float | None:
    """The machine's 1-minute load average now, or None where /proc has none.

    A benchmark notes it before and after a run: on shared cores, a busy machine makes
    every figure worse, and the reader should know.
    """
    try:
        return parse_loadavg((proc / "loadavg").read_text())
    except (OSError, ValueError, IndexError):
        return None
