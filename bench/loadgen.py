"""Closed-loop gRPC load generator (grpc.aio), run as its own process by create_payment.py.

``--concurrency`` coroutines share one channel (one HTTP/2 connection); each sends its next
call as soon as its previous one returns. After ``--warmup`` seconds a window of
``--duration`` seconds opens: a call counts when it *completes* inside the window, and its
latency (client side, ``perf_counter`` around the ``await``) goes into the percentiles. At the
end of the window no new call starts; calls in flight are awaited (each has a deadline).

Modes:
  create  CreatePayment, every call with a new idempotency key (the keys answered OK are
          written to ``--keys-out``, one per line, for a later replay)
  replay  CreatePayment with the keys in ``--keys-in``, cycled over, same parameters
  get     GetPayment with an empty id (for the empty-handler ceiling server)

Prints one JSON object on stdout. CPU use over the window of the processes given with
``--watch LABEL=PID`` and of all processes named ``--watch-comm LABEL=NAME`` (such as the
PostgreSQL backends), of this process, and of the whole machine, comes with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc

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


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot; busy excludes idle and iowait."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already inside user time
    return total - values[3] - values[4], total


@dataclass
class CpuSnapshot:
    wall: float
    pids: dict[str, int | None]
    comms: dict[str, dict[int, int]]
    own: float
    machine_busy: int


def cpu_snapshot(watch: dict[str, int], watch_comm: dict[str, str]) -> CpuSnapshot:
    pids = {label: (s[1] if (s := _proc_stat(pid)) else None) for label, pid in watch.items()}
    comms = {label: _ticks_by_comm(name) for label, name in watch_comm.items()}
    return CpuSnapshot(
        time.perf_counter(), pids, comms, time.process_time(), _machine_ticks()[0]
    )


def cpu_cores(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """Cores used by each watched label, by this process and by the machine over the span;
    ``other`` is what the machine used beyond all of those (foreign load)."""
    wall = end.wall - start.wall
    cores: dict[str, float] = {}
    for label, before in start.pids.items():
        after = end.pids[label]
        if before is not None and after is not None:
            cores[label] = (after - before) / _CLK_TCK / wall
    for label, before_by_pid in start.comms.items():
        ticks = sum(t - before_by_pid.get(pid, 0) for pid, t in end.comms[label].items())
        cores[label] = ticks / _CLK_TCK / wall
    cores["loadgen"] = (end.own - start.own) / wall
    machine = (end.machine_busy - start.machine_busy) / _CLK_TCK / wall
    cores["machine"] = machine
    cores["other"] = machine - sum(v for k, v in cores.items() if k != "machine")
    return {k: round(v, 3) for k, v in cores.items()}


# --- the load -----------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, completed in the window
    ok_in_window: int = 0
    non_ok_in_window: int = 0
    calls: int = 0
    ok: int = 0
    non_ok: Counter[str] = field(default_factory=Counter)
    unexpected_status: Counter[str] = field(default_factory=Counter)
    created_keys: list[str] = field(default_factory=list)


def create_request(key: str) -> pb.CreatePaymentRequest:
    """The same request as tests/e2e/helpers.py::create_request, with a fixed reference so
    that a replay carries exactly the parameters of the first call."""
    return pb.CreatePaymentRequest(
        idempotency_key=key,
        amount=1000,
        currency="USD",
        payment_method="pm_card_visa",
        region="US",
        capture_mode=pb.CAPTURE_MODE_MANUAL,
        reference="bench-order",
    )


class KeySource:
    """New keys (create) or the given ones round-robin (replay); one event loop, no locks."""

    def __init__(self, mode: str, replay_keys: list[str]) -> None:
        self.mode = mode
        self.replay_keys = replay_keys
        self.prefix = f"bench-{secrets.token_hex(6)}"
        self.next = 0

    def take(self) -> str:
        n = self.next
        self.next += 1
        if self.mode == "replay":
            return self.replay_keys[n % len(self.replay_keys)]
        return f"{self.prefix}-{n}"


async def run_load(args: argparse.Namespace, replay_keys: list[str]) -> dict[str, Any]:
    watch = dict(_label_value(w, int) for w in args.watch)
    watch_comm = dict(_label_value(w, str) for w in args.watch_comm)
    tally = Tally()
    keys = KeySource(args.mode, replay_keys)
    get_request = pb.GetPaymentRequest()
    expect_status = pb.PAYMENT_STATUS_AUTHORIZED

    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=args.connect_timeout)
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
        started = time.perf_counter()
        window_start = started + args.warmup
        window_end = window_start + args.duration
        snapshots: list[CpuSnapshot] = []

        async def sample_cpu() -> None:
            for at in (window_start, window_end):
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                snapshots.append(cpu_snapshot(watch, watch_comm))

        async def worker() -> None:
            while time.perf_counter() < window_end:
                key = ""
                t0 = time.perf_counter()
                try:
                    if args.mode == "get":
                        await stub.GetPayment(get_request, timeout=args.call_timeout)
                    else:
                        key = keys.take()
                        answer = await stub.CreatePayment(
                            create_request(key), timeout=args.call_timeout
                        )
                        if answer.status != expect_status:
                            tally.unexpected_status[pb.PaymentStatus.Name(answer.status)] += 1
                    ok = True
                except grpc.aio.AioRpcError as error:
                    ok = False
                    tally.non_ok[error.code().name] += 1
                t1 = time.perf_counter()
                tally.calls += 1
                if ok:
                    tally.ok += 1
                    if args.mode == "create":
                        tally.created_keys.append(key)
                if window_start <= t1 < window_end:
                    if ok:
                        tally.ok_in_window += 1
                        tally.latencies.append(t1 - t0)
                    else:
                        tally.non_ok_in_window += 1

        # warm-up + window + the last calls' deadline, and a margin: never longer than that
        limit = args.warmup + args.duration + args.call_timeout + 10
        await asyncio.wait_for(
            asyncio.gather(sample_cpu(), *(worker() for _ in range(args.concurrency))),
            timeout=limit,
        )

    if args.keys_out:
        Path(args.keys_out).write_text("".join(f"{k}\n" for k in tally.created_keys))
    latencies = sorted(tally.latencies)
    ms = 1000.0
    return {
        "mode": args.mode,
        "target": args.target,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "window_s": args.duration,
        "completed_in_window": tally.ok_in_window,
        "throughput": tally.ok_in_window / args.duration,
        "p50_ms": nearest_rank(latencies, 50) * ms,
        "p99_ms": nearest_rank(latencies, 99) * ms,
        "mean_ms": (sum(latencies) / len(latencies) * ms) if latencies else math.nan,
        "max_ms": (latencies[-1] * ms) if latencies else math.nan,
        "non_ok_in_window": tally.non_ok_in_window,
        "calls_total": tally.calls,
        "ok_total": tally.ok,
        "non_ok_total": sum(tally.non_ok.values()),
        "non_ok_codes": dict(tally.non_ok),
        "unexpected_status": dict(tally.unexpected_status),
        "keys_created": len(tally.created_keys),
        "cpu_cores": cpu_cores(snapshots[0], snapshots[1]),
    }


def _label_value[T](text: str, kind: type[T]) -> tuple[str, T]:
    label, sep, value = text.partition("=")
    if not sep or not label:
        raise SystemExit(f"expected LABEL=VALUE, got {text!r}")
    return label, kind(value)  # type: ignore[call-arg]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--mode", choices=("create", "replay", "get"), required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=10.0, help="per-call deadline")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--keys-out", help="create: write the keys answered OK here")
    parser.add_argument("--keys-in", help="replay: the keys to replay, one per line")
    parser.add_argument("--watch", action="append", default=[], metavar="LABEL=PID")
    parser.add_argument("--watch-comm", action="append", default=[], metavar="LABEL=NAME")
    args = parser.parse_args(argv)

    replay_keys: list[str] = []
    if args.mode == "replay":
        if not args.keys_in:
            parser.error("--mode replay needs --keys-in")
        replay_keys = Path(args.keys_in).read_text().split()
        if not replay_keys:
            parser.error(f"no keys in {args.keys_in}")
    result = asyncio.run(run_load(args, replay_keys))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
