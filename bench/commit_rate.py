"""Single-row commit rate of the store: the most write transactions per second it can take.

N threads, each with its own connection, each committing one INSERT of one row per
transaction into a scratch table, as fast as it can, for a warm-up then a timed window. A
commit counts when it returns inside the window. Prints one JSON object on stdout.

  postgres  psycopg 3, autocommit (one INSERT = one transaction), prepared statement, into
            ``bench_commit_rate`` in the given database (created here, dropped at the end)
  sqlite    the stdlib sqlite3 driver on a file in WAL mode (as eventsourcing opens it,
            ``synchronous`` left at its default), BEGIN IMMEDIATE / INSERT / COMMIT, one
            connection per thread, writers taking turns on an in-process lock (as
            eventsourcing's SQLite connection pool does)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchlib import cpu_cores, cpu_snapshot, nearest_rank

TABLE = "bench_commit_rate"
PAYLOAD = "x" * 200  # about the size of a small stored event's state
_BUSY_TIMEOUT_S = 5.0


Commit = Callable[[int], None]  # one transaction of one INSERT
# the committers, one per thread, and what closes them (and drops the table) afterwards
Committers = tuple[list[Commit], Callable[[], dict[str, Any]]]


def postgres_committers(dsn: str, threads: int) -> Committers:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.execute(
            f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, n integer NOT NULL,"
            " payload text NOT NULL)"
        )
        settings = {
            name: admin.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
        }
    connections = [
        psycopg.connect(dsn, autocommit=True, connect_timeout=10) for _ in range(threads)
    ]
    insert = f"INSERT INTO {TABLE} (n, payload) VALUES (%s, %s)"

    def committer(conn: psycopg.Connection[Any]) -> Commit:
        def commit(n: int) -> None:
            conn.execute(insert, (n, PAYLOAD), prepare=True)

        return commit

    def close() -> dict[str, Any]:
        for conn in connections:
            conn.close()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as admin:
            rows = admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]  # type: ignore[index]
            admin.execute(f"DROP TABLE {TABLE}")
        return {"rows": rows, "settings": settings}

    return [committer(c) for c in connections], close


def sqlite_committers(path: str, threads: int) -> Committers:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    with connect() as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.execute(
            f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL,"
            " payload TEXT NOT NULL)"
        )
        settings = {
            "sqlite_version": sqlite3.sqlite_version,
            "journal_mode": admin.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": admin.execute("PRAGMA synchronous").fetchone()[0],
        }
    admin.close()
    connections = [connect() for _ in range(threads)]
    insert = f"INSERT INTO {TABLE} (n, payload) VALUES (?, ?)"

    # One writer at a time in this process, as eventsourcing's SQLite pool does (its writer
    # lock): without it SQLite's busy handler (sleep and retry) decides who writes next, which
    # starves some threads past any busy timeout and measures the sleeps, not the commits.
    writer_lock = threading.Lock()

    def committer(conn: sqlite3.Connection) -> Commit:
        def commit(n: int) -> None:
            with writer_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(insert, (n, PAYLOAD))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

        return commit

    def close() -> dict[str, Any]:
        for conn in connections:
            conn.close()
        with connect() as admin:
            rows = admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
            admin.execute(f"DROP TABLE {TABLE}")
        admin.close()
        return {"rows": rows, "settings": settings}

    return [committer(c) for c in connections], close


def measure(
    commits: list[Commit], warmup: float, duration: float, watch_comm: dict[str, str]
) -> dict[str, Any]:
    start = time.perf_counter() + 0.2  # every thread is running before the clock starts
    window_start = start + warmup
    window_end = window_start + duration
    latencies: list[list[float]] = [[] for _ in commits]
    errors: list[BaseException] = []

    def run(index: int, commit: Commit) -> None:
        mine = latencies[index]
        n = 0
        try:
            while (now := time.perf_counter()) < start:
                time.sleep(start - now)
            while (t0 := time.perf_counter()) < window_end:
                commit(n)
                n += 1
                t1 = time.perf_counter()
                if window_start <= t1 < window_end:
                    mine.append(t1 - t0)
        except BaseException as error:  # reported, and the run fails
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(i, c), name=f"committer-{i}", daemon=True)
        for i, c in enumerate(commits)
    ]
    for thread in threads:
        thread.start()
    snapshots = []
    for at in (window_start, window_end):
        time.sleep(max(0.0, at - time.perf_counter()))
        snapshots.append(cpu_snapshot({}, watch_comm))
    for thread in threads:
        # a commit blocked past its busy/statement timeouts would be a broken store: bounded
        thread.join(timeout=max(0.0, window_end - time.perf_counter()) + 30)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"commit threads failed or hung: {errors[:3]!r}")
    merged = sorted(x for per_thread in latencies for x in per_thread)
    return {
        "commits_in_window": len(merged),
        "commits_per_s": len(merged) / duration,
        "p50_ms": nearest_rank(merged, 50) * 1000,
        "p99_ms": nearest_rank(merged, 99) * 1000,
        "cpu_cores": cpu_cores(snapshots[0], snapshots[1], "committers"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite"), required=True)
    parser.add_argument("--dsn", help="postgres: a libpq URL of the (scratch) database")
    parser.add_argument("--path", help="sqlite: the database file (created)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)

    if args.backend == "postgres":
        if not args.dsn:
            parser.error("--backend postgres needs --dsn")
        commits, close = postgres_committers(args.dsn, args.threads)
        watch_comm = {"postgres": "postgres"}
    else:
        if not args.path:
            parser.error("--backend sqlite needs --path")
        commits, close = sqlite_committers(args.path, args.threads)
        watch_comm = {}
    try:
        result = measure(commits, args.warmup, args.duration, watch_comm)
    finally:
        extra = close()
    result.update(
        backend=args.backend,
        threads=args.threads,
        warmup_s=args.warmup,
        window_s=args.duration,
        **extra,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
