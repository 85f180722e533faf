"""What payorch-client adds to a call: CreatePayment replays (answered from the server's
replay cache, so the server's share is small) through the bare generated stub and through
``PaymentsClient``, on one channel's worth of server, one caller, in alternating rounds.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/client.py``. Numbers on a
shared machine are noisy: run under ``flock /tmp/bench.lock`` and compare the ratio within
one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from payorch_client import PaymentsClient, pb, pb_grpc

from adapters.sandbox import start_sandbox
from orchestrator.api.server import create_server
from orchestrator.bootstrap import build_payments, load_router

FIELDS = {"amount": 1000, "currency": "USD", "payment_method": "pm_card_visa", "region": "US"}


def timed(calls: int, call: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(calls):
        call(i)
    return (time.perf_counter() - started) / calls * 1e6  # microseconds a call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sandbox = start_sandbox("127.0.0.1:0")
    with tempfile.TemporaryDirectory() as tmp:
        app = build_payments(f"sqlite:///{Path(tmp) / 'bench.db'}", load_router(None, sandbox.url))
        server = create_server("127.0.0.1:0", app)
        server.start()
        target = f"127.0.0.1:{server.port}"
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.PaymentOrchestratorStub(channel)
        client = PaymentsClient(target)
        requests = [
            pb.CreatePaymentRequest(idempotency_key=f"k-{i}", **FIELDS)  # type: ignore[arg-type]
            for i in range(args.keys)
        ]
        for request in requests:  # the first execution of each key: not measured
            stub.CreatePayment(request, timeout=10)

        def bare(i: int) -> object:
            return stub.CreatePayment(requests[i], timeout=10)

        def through_client(i: int) -> object:
            return client.create_payment(idempotency_key=f"k-{i}", **FIELDS)  # type: ignore[arg-type]

        timed(args.keys, bare), timed(args.keys, through_client)  # warm both paths
        stub_us, client_us = [], []
        for _ in range(args.rounds):
            stub_us.append(timed(args.keys, bare))
            client_us.append(timed(args.keys, through_client))
        client.close()
        channel.close()
        server.stop(grace=1)
        app.close()
    sandbox.stop()
    stub_median, client_median = statistics.median(stub_us), statistics.median(client_us)
    print(f"replayed CreatePayment, {args.keys} keys x {args.rounds} rounds, one caller:")
    print(f"  bare stub:      {stub_median:8.0f} us/call (median of rounds)")
    print(f"  PaymentsClient: {client_median:8.0f} us/call (median of rounds)")
    print(f"  ratio client/stub: {client_median / stub_median:.3f}")


if __name__ == "__main__":
    main()
