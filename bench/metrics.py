"""What metrics cost CreatePayment: one ``payorch serve`` with metrics (the default) against
the same server with ``PAYORCH_METRICS=off`` (no interceptor, no hooks, no /metrics), in one
run, on one PostgreSQL database and one sandbox process (no added latency, no faults).

Phases alternate (off, on, off, on, ...; ``--runs N`` pairs) so drift on the machine falls on
both; the ratio reported is the median over pairs of on / off creates per second (1.00: no
cost; 0.95: metrics cost 5 % of the throughput). Each server is checked to serve /metrics
when on (and its gRPC call counter to have counted the creates) and 404 when off.

Checks (exit 1, ``CHECK FAILED:``): no non-OK answer, every payment AUTHORIZED, the switch
did what it says. Exit 2: the benchmark could not run.

    flock /tmp/bench.lock .venv/bin/python bench/metrics.py --quick --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from create_payment import (
    _PAYORCH_LISTENING,
    RESULTS,
    BenchError,
    Options,
    add_window_arguments,
    child,
    exit_on_sigterm,
    fresh_postgres_database,
    load,
    postgres_problem,
    postgres_window,
    scratch_dir,
    start_sandbox,
    wait_serving,
)

_HTTP_LISTENING = re.compile(r"payorch HTTP listening on [\d.]+:(\d+)")
_CREATES = re.compile(r'payorch_grpc_calls_total\{code="OK",method="[^"]*/CreatePayment"\} (\S+)')


def phase(
    opts: Options, metrics: bool, database_url: str, sandbox_url: str, work: Path
) -> dict[str, Any]:
    argv = [
        "env", f"PAYORCH_METRICS={'on' if metrics else 'off'}",
        sys.executable, "-m", "orchestrator.cli", "serve", "--grpc-listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0", f"--database-url={database_url}",
        f"--sandbox-url={sandbox_url}",
        *([f"--grpc-workers={opts.server_workers}"] if opts.server_workers else []),
    ]  # fmt: skip
    name = f"payorch-metrics-{'on' if metrics else 'off'}"
    with child(name, argv, work / f"{name}.log") as server:
        target: str = server.wait_for(_PAYORCH_LISTENING, opts.startup_timeout)[1]
        http_port = server.wait_for(_HTTP_LISTENING, opts.startup_timeout)[1]
        wait_serving(target, opts.startup_timeout)
        result = load(opts, target, "create", watch={"server": server.pid},
                      watch_comm={"postgres": "postgres"})  # fmt: skip
        server.check_alive()
        scraped = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10)
        result["metrics"] = metrics
        result["metrics_status"] = scraped.status_code
        counted = _CREATES.search(scraped.text) if scraped.status_code == 200 else None
        result["creates_counted"] = float(counted[1]) if counted else 0.0
        return result


def checks(phases: list[dict[str, Any]]) -> list[str]:
    failed = []
    for p in phases:
        label = f"metrics {'on' if p['metrics'] else 'off'}"
        if p["non_ok_total"]:
            failed.append(f"{label}: non-OK answers {p['non_ok_codes']}")
        if p["unexpected_status"]:
            failed.append(f"{label}: payments not AUTHORIZED {p['unexpected_status']}")
        if p["metrics"] and (p["metrics_status"] != 200 or p["creates_counted"] < 1):
            failed.append(
                f"{label}: /metrics {p['metrics_status']}, {p['creates_counted']} counted"
            )
        if not p["metrics"] and p["metrics_status"] != 404:
            failed.append(f"{label}: /metrics answered {p['metrics_status']}, not 404")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_window_arguments(parser, concurrency=32, runs=3, runs_help="off/on pairs; the median ratio")
    args = parser.parse_args(argv)
    opts = postgres_window(args)
    exit_on_sigterm()
    if problem := postgres_problem(opts.postgres_url):
        print(problem, file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    phases: list[dict[str, Any]] = []
    try:
        with (
            scratch_dir(
                "payorch-bench-", keep=opts.keep_tmp,
                interrupted="processes stopped, database dropped",
            ) as tmp,
            contextlib.ExitStack() as stack,
        ):  # fmt: skip
            database_url = stack.enter_context(fresh_postgres_database(opts.postgres_url))
            _, sandbox_url = start_sandbox(stack, tmp, opts.startup_timeout)
            for run in range(opts.runs):
                for metrics in (False, True):
                    print(f"run {run + 1}/{opts.runs}: metrics {'on' if metrics else 'off'}",
                          file=sys.stderr)  # fmt: skip
                    work = tmp / f"run{run + 1}-{'on' if metrics else 'off'}"
                    work.mkdir()
                    phases.append(phase(opts, metrics, database_url, sandbox_url, work))
    except BenchError as e:
        print(f"benchmark could not run: {e}", file=sys.stderr)
        return 2
    off = [p["throughput"] for p in phases if not p["metrics"]]
    on = [p["throughput"] for p in phases if p["metrics"]]
    ratios = [b / a for a, b in zip(off, on, strict=True) if a]
    ratio = statistics.median(ratios) if ratios else float("nan")
    print(
        f"{started:%Y-%m-%d %H:%M:%S} UTC, PostgreSQL, {opts.concurrency} in flight, "
        f"{opts.warmup:g} s warm-up + {opts.duration:g} s windows, {opts.runs} pair(s)"
    )
    for p in phases:
        print(
            f"metrics {'on ' if p['metrics'] else 'off'}: {p['throughput']:,.1f} creates/s, "
            f"p50 / p99 {p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms"
        )
    print("with metrics / without: " + f"{ratio:.3f} (median); per pair: "
          + ", ".join(f"{r:.3f}" for r in ratios))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"metrics-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"phases": phases, "ratios": ratios, "ratio": ratio}, indent=1))
    print(f"raw numbers: {out}")
    failed = checks(phases)
    for line in failed:
        print(f"CHECK FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
