"""Shared by the bench scripts: nearest-rank percentiles and CPU accounting from /proc."""

from __future__ import annotations

import argparse
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def nearest_rank(sorted_values: list[float], percent: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --- CPU accounting from /proc ------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(comm, utime + stime in ticks) of a process, all its threads; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def _ticks_by_comm(name: str) -> dict[int, int]:
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] == name:
                found[int(entry.name)] = stat[1]
    return found


def _machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks of all CPUs since boot. busy excludes idle and iowait and
    includes steal (the hypervisor running someone else), which no process is charged for.
    (With tick-based accounting, irq and softirq ticks are charged to the interrupted
    process as well, so they need no correction.)"""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already inside user time
    return total - values[3] - values[4], total, values[7]


@dataclass
class CpuSnapshot:
    wall: float
    pids: dict[str, int | None]
    comms: dict[str, dict[int, int]]
    own: float
    machine: tuple[int, int, int]


def cpu_snapshot(watch: dict[str, int], watch_comm: dict[str, str]) -> CpuSnapshot:
    pids = {label: (s[1] if (s := _proc_stat(pid)) else None) for label, pid in watch.items()}
    comms = {label: _ticks_by_comm(name) for label, name in watch_comm.items()}
    return CpuSnapshot(time.perf_counter(), pids, comms, time.process_time(), _machine_ticks())


def cpu_cores(start: CpuSnapshot, end: CpuSnapshot, own_label: str = "self") -> dict[str, float]:
    """Cores used over the span by each watched label, by this process, by steal and by the
    machine in all; ``other`` is the rest of the machine's use: other
    processes (another job) and kernel threads (such as the file system journal)."""
    wall = end.wall - start.wall
    cores: dict[str, float] = {}
    for label, before in start.pids.items():
        after = end.pids[label]
        if before is not None and after is not None:
            cores[label] = (after - before) / _CLK_TCK / wall
    for label, before_by_pid in start.comms.items():
        ticks = sum(t - before_by_pid.get(pid, 0) for pid, t in end.comms[label].items())
        cores[label] = ticks / _CLK_TCK / wall
    cores[own_label] = (end.own - start.own) / wall
    processes = sum(cores.values())
    busy, _, steal = (
        (after - before) / _CLK_TCK / wall
        for before, after in zip(start.machine, end.machine, strict=True)
    )
    cores["steal"] = steal
    cores["machine"] = busy
    cores["other"] = busy - processes - steal
    return {k: round(v, 3) for k, v in cores.items()}


def machine_busy_fraction(interval: float = 0.5) -> float:
    """How busy all CPUs together were over ``interval`` seconds (0.0 to 1.0)."""
    busy0, total0, _ = _machine_ticks()
    time.sleep(interval)
    busy1, total1, _ = _machine_ticks()
    return (busy1 - busy0) / max(1, total1 - total0)


def add_machine_arguments(
    parser: argparse.ArgumentParser, *, postgres_default: str | None = None
) -> None:
    """The options every benchmark shares: the quiet-machine gate, noise warnings, start-up
    limits, keeping temporary files, and (where PostgreSQL is used) the admin database."""
    if postgres_default is not None:
        parser.add_argument(
            "--postgres-url",
            default=os.environ.get(
                "PAYORCH_BENCH_POSTGRES_URL",
                os.environ.get("PAYORCH_TEST_POSTGRES_URL", postgres_default),
            ),
            help="admin database for CREATE/DROP DATABASE (env PAYORCH_BENCH_POSTGRES_URL)",
        )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.10,
        help="before each window, wait until the machine is at most this busy (0-1)",
    )
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="... for at most this")
    parser.add_argument(
        "--noise-cores", type=float, default=0.25, help="warn above this much foreign CPU"
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--keep-tmp", action="store_true", help="keep logs and stores")


def label_pairs(items: list[str]) -> dict[str, str]:
    """``LABEL=VALUE`` command-line items as a dict (the load generators' ``--watch``)."""
    pairs: dict[str, str] = {}
    for text in items:
        label, sep, value = text.partition("=")
        if not sep or not label or not value:
            raise SystemExit(f"expected LABEL=VALUE, got {text!r}")
        pairs[label] = value
    return pairs


def stop_event_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set: how the ceiling servers know to shut down."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
