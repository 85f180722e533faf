"""The cost of encrypting event state at rest (orchestrator/encryption.py) on a create.

Two measurements, each with and without PAYORCH_ENCRYPTION_KEYS, in alternating rounds so a
busy machine hurts both alike:
- ``create``: CreatePayment through the real application (no gRPC) on a fresh SQLite file,
  against the sandbox provider in-process over HTTP: every event a create writes (command,
  payment intent, outcome) is sealed, and its replay reads through the cipher;
- ``cipher``: the mapper alone, one create's events to stored bytes and back, per event.

Prints medians of the rounds and the ratios (encrypted / clear).

  .venv/bin/python bench/encryption.py [--rounds 5] [--creates 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adapters.sandbox import start_sandbox
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.commands import CreatePayment
from orchestrator.encryption import KEYS_VARIABLE, new_key

METADATA = {"customer_email": "jane.doe@example.com", "order": "order-1234", "note": "x" * 200}


def creates_per_second(app: Payments, creates: int, round_number: int) -> float:
    start = time.perf_counter()
    for n in range(creates):
        request = CreatePayment(
            f"bench-{round_number}-{n}", 1999, "EUR", "pm_card_visa", "EU", "automatic",
            "order-1", METADATA,
        )  # fmt: skip
        app.create_payment(request, scope="bench")
    return creates / (time.perf_counter() - start)


def mapper_round_trip_us(app: Payments, repeat: int) -> float:
    """Microseconds to map one stored event of a create to bytes and back."""
    payment = next(iter(app.event_pages(page=50)))
    events = [event for _, event in payment]
    start = time.perf_counter()
    for _ in range(repeat):
        for event in events:
            app.mapper.to_domain_event(app.mapper.to_stored_event(event))
    return (time.perf_counter() - start) / (repeat * len(events)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--creates", type=int, default=200)
    args = parser.parse_args()
    sandbox = start_sandbox("127.0.0.1:0")
    keys = {"clear": "", "encrypted": f"{new_key('k2')},{new_key('k1')}"}
    rates: dict[str, list[float]] = {k: [] for k in keys}
    mapper: dict[str, list[float]] = {k: [] for k in keys}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for round_number in range(args.rounds):
                for variant, value in keys.items():
                    os.environ[KEYS_VARIABLE] = value
                    url = f"sqlite:///{Path(folder) / f'{variant}-{round_number}.db'}"
                    app = build_payments(url, load_router(None, sandbox.url))
                    try:
                        rates[variant].append(creates_per_second(app, args.creates, round_number))
                        mapper[variant].append(mapper_round_trip_us(app, 1000))
                    finally:
                        app.close()
    finally:
        sandbox.stop()
    print(f"{args.rounds} rounds of {args.creates} creates (SQLite, sandbox in-process):")
    for variant in keys:
        print(f"  {variant:<10} {statistics.median(rates[variant]):8.1f} creates/s   "
              f"mapper {statistics.median(mapper[variant]):6.1f} us/event")  # fmt: skip
    ratio = statistics.median(rates["encrypted"]) / statistics.median(rates["clear"])
    extra = statistics.median(mapper["encrypted"]) - statistics.median(mapper["clear"])
    print(f"  encrypted / clear create rate: {ratio:.3f}; cipher adds {extra:.1f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
