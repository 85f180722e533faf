"""What CreatePayment costs the application alone: no gRPC, no server, no background workers.

``Payments.create_payment`` is called in this process (``--threads`` threads, a new key each
call), with the store of ``--backend`` (a fresh SQLite file, or a new PostgreSQL database)
and the sandbox provider in its own process (``payorch sandbox``, port 0, every fault off),
reached over HTTP as ``payorch serve`` reaches it. Prints this process's CPU per create
(``time.process_time``: the sandbox's own work is not counted), and how much of it went to
the store's writes (``recorder.insert_events``: two transactions per create, grouped when
threads save at once) and to the provider call (``ProviderHttp.send``).

Issue 9's goal 1 asks a server to create at 0.20 of its own health-check rate; a check costs
``payorch serve`` about 0.25 ms of CPU (``bench/create_payment.py``'s CPU lines), so a whole
create, gRPC and workers included, would have to cost about 1.3 ms. This is the floor
under that: what the application's own work costs with nothing else running.

    .venv/bin/python bench/inprocess.py --backend sqlite --creates 3000 --rounds 3
    .venv/bin/python bench/inprocess.py --backend postgres --threads 16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from create_payment import (  # noqa: E402
    DEFAULT_POSTGRES_URL,
    fresh_postgres_database,
    start_sandbox,
)

from adapters._http import ProviderHttp  # noqa: E402
from orchestrator.bootstrap import build_payments, load_router  # noqa: E402
from orchestrator.commands import CreatePayment  # noqa: E402

WARM_UP = 300  # creates before each round: connections, caches, code paths


class Timed:
    """Thread CPU spent inside one method, summed over every thread that calls it."""

    def __init__(self, owner: Any, name: str) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        method = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._lock:
                    self.seconds += spent

        setattr(owner, name, timed)


@contextlib.contextmanager
def store(backend: str, postgres_url: str) -> Iterator[str]:
    if backend == "postgres":
        with fresh_postgres_database(postgres_url) as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="payorch-inprocess-") as tmp:
            yield f"sqlite:///{tmp}/payorch.db"


def create(app: Any) -> Callable[[], None]:
    def one() -> None:
        app.create_payment(
            CreatePayment(
                idempotency_key=uuid.uuid4().hex, amount=1000, currency="USD",
                payment_method="pm_card_visa", region="US", capture_mode="manual",
            ),
            scope="bench",
        )  # fmt: skip

    return one


def round_of(one: Callable[[], None], creates: int, threads: int) -> tuple[float, int]:
    """CPU seconds of this process per create, and the creates made: ``creates`` split over
    ``threads`` (rounded down to a multiple of it)."""
    each = creates // threads
    workers = [
        threading.Thread(target=lambda: [one() for _ in range(each)]) for _ in range(threads)
    ]
    started = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.process_time() - started) / (each * threads), each * threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--creates", type=int, default=3000, help="per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="a role with CREATEDB")
    opts = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="payorch-bench-")))
        _, sandbox_url = start_sandbox(stack, work, 30.0)
        url = stack.enter_context(store(opts.backend, opts.postgres_url))
        app = build_payments(url, load_router(None, sandbox_url))
        stack.callback(app.close)
        one = create(app)
        writes, calls = Timed(app.recorder, "insert_events"), Timed(ProviderHttp, "send")
        per_create, shares = [], []
        for _ in range(opts.rounds):
            for _ in range(WARM_UP):
                one()
            writes.seconds = calls.seconds = 0.0
            cpu, done = round_of(one, opts.creates, opts.threads)
            per_create.append(cpu)
            shares.append((writes.seconds / done / cpu, calls.seconds / done / cpu))
        cpu = statistics.median(per_create)
        write_share = statistics.median(s[0] for s in shares)
        call_share = statistics.median(s[1] for s in shares)
    print(
        f"{opts.backend}, {opts.threads} thread(s), {opts.creates} creates x {opts.rounds}"
        f" rounds: {cpu * 1000:.2f} ms of CPU per create (median; rounds"
        f" {', '.join(f'{c * 1000:.2f}' for c in per_create)});"
        f" store writes {write_share:.0%}, provider call {call_share:.0%}, the rest"
        f" {1 - write_share - call_share:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
