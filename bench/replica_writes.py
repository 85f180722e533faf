"""Event writes per second from several processes writing all the time to one PostgreSQL
database (replicas, or a server and its ``payorch work``), and what their chain-head guesses
did (``orchestrator/audit/chain.py``, ``KnownHead``).

Each process builds payorch's default application (chained recorder, group commit) on the
same fresh database, and ``--writers`` threads in it save payment intents as fast as they
can, as ``bench/writes.py`` does, for ``--seconds``. Prints, per round, the saves per second
of all the processes together and each process's guesses and misses; then the median rate,
and ``audit verify`` over the database: every finding fails the run (exit 1).

  .venv/bin/python bench/replica_writes.py [--processes 2] [--writers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time

from benchlib import add_machine_arguments
from chain import intent
from create_payment import fresh_postgres_database
from writes import app_for, wait_for_quiet

from orchestrator.audit.verify import verify


def writer_process(url: str, writers: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    app = app_for(url, "grouped")
    try:
        start = threading.Barrier(writers + 1)
        stop_at = [0.0]
        done = [0] * writers

        def work(i: int) -> None:
            start.wait()
            while time.monotonic() < stop_at[0]:
                app.save(intent(0))
                done[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        stop_at[0] = time.monotonic() + seconds
        start.wait()
        for t in threads:
            t.join()
        head = app.recorder.known_head  # type: ignore[attr-defined]
        out.put((sum(done), head.guesses, head.misses))
    finally:
        app.close()


def one_round(url: str, processes: int, writers: int, seconds: float) -> float:
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    started = [
        multiprocessing.Process(target=writer_process, args=(url, writers, seconds, out))
        for _ in range(processes)
    ]
    for p in started:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in started]
    for p in started:
        p.join()
    rate = sum(saves for saves, _, _ in results) / seconds
    guesses = ", ".join(f"{g:,} guesses / {m:,} misses" for _, g, m in results)
    print(f"  {rate:,.0f} saves/s; per process: {guesses}", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_machine_arguments(parser, postgres_default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--writers", type=int, default=4, help="writer threads per process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    with fresh_postgres_database(opts.postgres_url) as url:
        app_for(url, "grouped").close()  # the tables, before the processes race to make them
        print(
            f"{opts.processes} processes x {opts.writers} writers on one PostgreSQL database, "
            f"{opts.seconds:g} s rounds"
        )
        rates = []
        for _ in range(opts.rounds):
            wait_for_quiet(opts.quiet_threshold, opts.quiet_wait)
            rates.append(one_round(url, opts.processes, opts.writers, opts.seconds))
        print(f"median: {statistics.median(rates):,.0f} saves/s")
        app = app_for(url, "grouped")
        try:
            report = verify(app.recorder, app.mapper)  # type: ignore[arg-type]
        finally:
            app.close()
        print(f"audit verify: {report.events:,} events, findings {report.finding_count}")
        return 1 if report.finding_count else 0


if __name__ == "__main__":
    sys.exit(main())
