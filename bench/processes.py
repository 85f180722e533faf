"""Several ``payorch serve`` processes on one PostgreSQL: creates per second with two processes
against one (issue 9, goal 6: at least 1.4x).

One fresh PostgreSQL database (``payorch_bench_<random>``, dropped afterwards) and one sandbox
provider process (no added latency, no faults) serve every phase. Per run, in turn:

1. **one**: one ``payorch serve`` on port 0; the load generator (bench/loadgen.py, its own
   process, ``--concurrency`` calls in flight) sends CreatePayment with new keys.
2. **two**: two ``payorch serve`` processes on distinct ports (port 0 each: nothing shares a
   port) against the same database and the same sandbox; the same load generator deals its
   callers over both, one channel each.

The servers are stopped after each phase; the database keeps growing (each phase adds a few
thousand payments, which costs a create nothing measurable: reads are by id). ``--runs N``
repeats the pair (one, two, one, two, ...) and reports medians.

Checks (exit 1, ``CHECK FAILED:``): no non-OK answer, every payment AUTHORIZED, and the
sandbox's authorizations equal the new keys answered OK (one per key, across processes).
Exit 2: the benchmark could not run.

    flock /tmp/bench.lock .venv/bin/python bench/processes.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from create_payment import (
    _PAYORCH_LISTENING,
    RESULTS,
    BenchError,
    Child,
    Options,
    add_window_arguments,
    child,
    exit_on_sigterm,
    fresh_postgres_database,
    ledger_counts,
    load,
    postgres_problem,
    postgres_window,
    scratch_dir,
    start_sandbox,
    wait_serving,
)

GOAL_RATIO = 1.4


def serve(
    stack: contextlib.ExitStack,
    name: str,
    database_url: str,
    sandbox_url: str,
    work: Path,
    opts: Options,
) -> tuple[Child, str]:
    argv = [
        sys.executable, "-m", "orchestrator.cli", "serve", "--grpc-listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0", f"--database-url={database_url}",
        f"--sandbox-url={sandbox_url}",
        *([f"--grpc-workers={opts.server_workers}"] if opts.server_workers else []),
    ]  # fmt: skip
    server = stack.enter_context(child(name, argv, work / f"{name}.log"))
    target: str = server.wait_for(_PAYORCH_LISTENING, opts.startup_timeout)[1]
    wait_serving(target, opts.startup_timeout)
    return server, target


def phase(
    opts: Options, processes: int, database_url: str, sandbox: Child, sandbox_url: str, work: Path
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        servers = [
            serve(stack, f"payorch-{n + 1}-of-{processes}", database_url, sandbox_url, work, opts)
            for n in range(processes)
        ]
        watch = {f"server{n + 1}": s.pid for n, (s, _) in enumerate(servers)}
        watch["sandbox"] = sandbox.pid
        before = ledger_counts(sandbox_url).get("authorization", 0)
        result = load(
            opts,
            ",".join(target for _, target in servers),
            "create",
            watch=watch,
            watch_comm={"postgres": "postgres"},
            keys_out=work / f"keys-{processes}.txt",
        )
        for server, _ in servers:
            server.check_alive()
        result["authorizations"] = ledger_counts(sandbox_url).get("authorization", 0) - before
        result["processes"] = processes
        return result


def checks(phases: list[dict[str, Any]]) -> list[str]:
    failed = []
    for p in phases:
        label = f"{p['processes']} process(es)"
        if p["non_ok_total"]:
            failed.append(f"{label}: non-OK answers {p['non_ok_codes']}")
        if p["unexpected_status"]:
            failed.append(f"{label}: payments not AUTHORIZED {p['unexpected_status']}")
        if p["authorizations"] != p["keys_created"]:
            failed.append(
                f"{label}: {p['authorizations']} sandbox authorizations for "
                f"{p['keys_created']} new keys answered OK"
            )
    return failed


def cpu_line(p: dict[str, Any]) -> str:
    cores = p["cpu_cores"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
    return f"  {p['processes']} process(es): {parts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_window_arguments(
        parser,
        concurrency=64,
        concurrency_help="calls in flight, in all",
        runs=1,
        runs_help="repeat the pair; report medians",
        workers_help="--grpc-workers of each server",
    )
    args = parser.parse_args(argv)
    opts = postgres_window(args)
    exit_on_sigterm()
    if problem := postgres_problem(opts.postgres_url):
        print(problem, file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    phases: list[dict[str, Any]] = []
    try:
        with (
            scratch_dir(
                "payorch-bench-",
                keep=opts.keep_tmp,
                interrupted="processes stopped, database dropped",
            ) as tmp,
            contextlib.ExitStack() as stack,
        ):
            database_url = stack.enter_context(fresh_postgres_database(opts.postgres_url))
            sandbox, sandbox_url = start_sandbox(stack, tmp, opts.startup_timeout)
            for run in range(opts.runs):
                for processes in (1, 2):
                    print(f"run {run + 1}/{opts.runs}: {processes} process(es)", file=sys.stderr)
                    work = tmp / f"run{run + 1}-{processes}"
                    work.mkdir()
                    phases.append(phase(opts, processes, database_url, sandbox, sandbox_url, work))
    except BenchError as e:
        print(f"benchmark could not run: {e}", file=sys.stderr)
        return 2
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])

    one = [p["throughput"] for p in phases if p["processes"] == 1]
    two = [p["throughput"] for p in phases if p["processes"] == 2]
    ratios = [b / a for a, b in zip(one, two, strict=True) if a]
    ratio = statistics.median(ratios) if ratios else float("nan")
    print(
        f"{started:%Y-%m-%d %H:%M:%S} UTC, PostgreSQL, {opts.concurrency} in flight in all, "
        f"{opts.warmup:g} s warm-up + {opts.duration:g} s windows, {opts.runs} run(s)"
    )
    print(f"load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}")
    for p in phases:
        print(
            f"{p['processes']} process(es): {p['throughput']:,.1f} creates/s, "
            f"p50 / p99 {p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms, "
            f"{p['authorizations']:,} authorizations / {p['keys_created']:,} new keys"
        )
    print(
        f"two processes / one: {ratio:.2f} (goal >= {GOAL_RATIO}: "
        f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}); per pair: "
        + ", ".join(f"{r:.2f}" for r in ratios)
    )
    print("CPU cores used in the timed windows (of 2):")
    for p in phases:
        print(cpu_line(p))
    for p in phases:
        other = p["cpu_cores"].get("other", 0.0)
        if other > opts.noise_cores:
            print(f"noise: {p['processes']} process(es): {other:.2f} cores used outside the "
                  "measured processes (another job on the machine)")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"processes-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"phases": phases, "ratios": ratios, "ratio": ratio}, indent=1))
    print(f"raw numbers: {out}")
    failed = checks(phases)
    for line in failed:
        print(f"CHECK FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
