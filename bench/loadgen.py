"""Closed-loop gRPC load generator (grpc.aio), run as its own process by create_payment.py.

``--concurrency`` coroutines share one channel (one HTTP/2 connection); each sends its next
call as soon as its previous one returns. With several targets (``--target a,b``), one channel
each, and the coroutines are dealt over them in turn (bench/processes.py: one load over two
``payorch serve`` processes). After ``--warmup`` seconds a window of
``--duration`` seconds opens: a call counts when it *completes* inside the window, and its
latency (client side, ``perf_counter`` around the ``await``) goes into the percentiles. At the
end of the window no new call starts; calls in flight are awaited (each has a deadline).

Modes:
  create  CreatePayment, every call with a new idempotency key (the keys answered OK are
          written to ``--keys-out``, one per line, for a later replay)
  replay  CreatePayment with the keys in ``--keys-in``, cycled over, same parameters
  get     GetPayment with an empty id (for the empty-handler ceiling server)
  health  grpc.health.v1 Health/Check of the whole server (service ""): the ceiling of the
          same payorch server, measured in the same run (its cheapest unary call)

Prints one JSON object on stdout. CPU use over the window of the processes given with
``--watch LABEL=PID`` and of all processes named ``--watch-comm LABEL=NAME`` (such as the
PostgreSQL backends), of this process, and of the whole machine, comes with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from benchlib import CpuSnapshot, cpu_cores, cpu_snapshot, label_pairs, nearest_rank
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc

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
    watch = {label: int(pid) for label, pid in label_pairs(args.watch).items()}
    watch_comm = label_pairs(args.watch_comm)
    tally = Tally()
    keys = KeySource(args.mode, replay_keys)
    get_request = pb.GetPaymentRequest()
    health_request = health_pb2.HealthCheckRequest(service="")
    expect_status = pb.PAYMENT_STATUS_AUTHORIZED

    metadata = _call_metadata(args)
    targets = args.target.split(",")
    async with contextlib.AsyncExitStack() as channels:
        stubs: list[tuple[Any, Any]] = []
        for target in targets:
            channel = await channels.enter_async_context(_channel(args, target))
            await asyncio.wait_for(channel.channel_ready(), timeout=args.connect_timeout)
            stubs.append(
                (
                    payments_pb2_grpc.PaymentOrchestratorStub(channel),  # type: ignore[no-untyped-call]
                    health_pb2_grpc.HealthStub(channel),
                )
            )
        started = time.perf_counter()
        window_start = started + args.warmup
        window_end = window_start + args.duration
        snapshots: list[CpuSnapshot] = []

        async def sample_cpu() -> None:
            for at in (window_start, window_end):
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                snapshots.append(cpu_snapshot(watch, watch_comm))

        async def worker(n: int) -> None:
            stub, health = stubs[n % len(stubs)]
            while time.perf_counter() < window_end:
                key = ""
                t0 = time.perf_counter()
                try:
                    if args.mode == "get":
                        await stub.GetPayment(
                            get_request, timeout=args.call_timeout, metadata=metadata
                        )
                    elif args.mode == "health":
                        checked = await health.Check(health_request, timeout=args.call_timeout)
                        if checked.status != health_pb2.HealthCheckResponse.SERVING:
                            tally.unexpected_status[str(checked.status)] += 1
                    else:
                        key = keys.take()
                        answer = await stub.CreatePayment(
                            create_request(key), timeout=args.call_timeout, metadata=metadata
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
            asyncio.gather(sample_cpu(), *(worker(n) for n in range(args.concurrency))),
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
        "cpu_cores": cpu_cores(snapshots[0], snapshots[1], "loadgen"),
    }


def _channel(args: argparse.Namespace, target: str) -> grpc.aio.Channel:
    """Plaintext, or TLS trusting ``--tls-ca`` with the client certificate ``--tls-cert``."""
    if not args.tls_ca:
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        Path(args.tls_ca).read_bytes(),
        Path(args.tls_key).read_bytes() if args.tls_key else None,
        Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials)


def _call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    """The bearer token, from the environment variable ``--token-env`` names (never argv)."""
    if not args.token_env:
        return None
    return (("authorization", f"Bearer {os.environ[args.token_env]}"),)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--target", required=True, help="host:port of the gRPC server (several: a,b)"
    )
    parser.add_argument("--mode", choices=("create", "replay", "get", "health"), required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=10.0, help="per-call deadline")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--keys-out", help="create: write the keys answered OK here")
    parser.add_argument("--keys-in", help="replay: the keys to replay, one per line")
    parser.add_argument("--watch", action="append", default=[], metavar="LABEL=PID")
    parser.add_argument("--watch-comm", action="append", default=[], metavar="LABEL=NAME")
    parser.add_argument("--tls-ca", help="TLS: the CA file that signed the server's certificate")
    parser.add_argument("--tls-cert", help="TLS: a client certificate file (mutual TLS)")
    parser.add_argument("--tls-key", help="TLS: the client certificate's key file")
    parser.add_argument("--token-env", help="send 'authorization: Bearer $<this variable>'")
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
