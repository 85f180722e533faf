"""What metrics and traces cost CreatePayment, in one run, on one PostgreSQL database and
one sandbox process (no added latency, no faults). Three configurations of one
``payorch serve``:

- ``bare``: ``PAYORCH_METRICS=off`` and tracing off (``OTEL_SDK_DISABLED=true``): no
  interceptor, no hooks, no /metrics, nothing of OpenTelemetry loaded;
- ``metrics``: metrics on (the default), tracing off (the default): what a default server
  costs over the bare one;
- ``traced``: metrics on and tracing on, exporting every span over OTLP/HTTP to a sink this
  bench runs in its own process (bench/otlp_sink.py), which decodes each request as a
  collector would. Nothing is dropped for free: the sink must have received 4 spans per
  create (server, payment.authorize, provider.authorize, the HTTP call) by the time the
  server has stopped, or the check fails.

Phases rotate (bare, metrics, traced, bare, ...; ``--runs N`` rounds) so drift on the
machine falls on all three; each ratio reported is the median over rounds of that
configuration's creates per second over the bare one's in the same round (1.00: no cost;
0.95: 5 % of the throughput). Each server is checked to serve /metrics when metrics are on
(and its gRPC call counter to have counted the creates) and 404 when off.

Checks (exit 1, ``CHECK FAILED:``): no non-OK answer, every payment AUTHORIZED, the switches
did what they say. Exit 2: the benchmark could not run.

    flock /tmp/bench.lock .venv/bin/python bench/metrics.py --quick --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import timeit
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
_SINK_LISTENING = re.compile(r"otlp sink listening on ([\d.]+:\d+)")
CONFIGURATIONS = ("bare", "metrics", "traced")
SPANS_PER_CREATE = 4  # server, payment.authorize, provider.authorize, POST to the sandbox
_CREATES = re.compile(r'payorch_grpc_calls_total\{code="OK",method="[^"]*/CreatePayment"\} (\S+)')


def phase(
    opts: Options, configuration: str, database_url: str, sandbox_url: str, sink: str, work: Path
) -> dict[str, Any]:
    metrics, traced = configuration != "bare", configuration == "traced"
    tracing = (
        [f"OTEL_EXPORTER_OTLP_ENDPOINT=http://{sink}", "OTEL_SDK_DISABLED=false"]
        if traced
        else ["OTEL_SDK_DISABLED=true"]  # and a stray OTEL_* variable changes nothing
    )
    argv = [
        "env", f"PAYORCH_METRICS={'on' if metrics else 'off'}", *tracing,
        sys.executable, "-m", "orchestrator.cli", "serve", "--grpc-listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0", f"--database-url={database_url}",
        f"--sandbox-url={sandbox_url}",
        *([f"--grpc-workers={opts.server_workers}"] if opts.server_workers else []),
    ]  # fmt: skip
    name = f"payorch-{configuration}"
    spans_before = _spans(sink)
    with child(name, argv, work / f"{name}.log") as server:
        target: str = server.wait_for(_PAYORCH_LISTENING, opts.startup_timeout)[1]
        http_port = server.wait_for(_HTTP_LISTENING, opts.startup_timeout)[1]
        wait_serving(target, opts.startup_timeout)
        result = load(opts, target, "create", watch={"server": server.pid},
                      watch_comm={"postgres": "postgres"})  # fmt: skip
        server.check_alive()
        scraped = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10)
        result["configuration"] = configuration
        result["metrics"] = metrics
        result["metrics_status"] = scraped.status_code
        counted = _CREATES.search(scraped.text) if scraped.status_code == 200 else None
        result["creates_counted"] = float(counted[1]) if counted else 0.0
    # CPU time the server spent per create: steadier than creates/s on a shared machine,
    # where other work takes the cores the server would use.
    result["server_cpu_ms_per_create"] = (
        1000 * result["cpu_cores"]["server"] / result["throughput"] if result["throughput"] else 0
    )
    # After the server stopped: its shutdown exported what was still queued.
    result["traced"] = traced
    result["spans_exported"] = _spans(sink) - spans_before
    return result


def span_site_off_ns() -> float:
    """What one span site of the application costs with tracing off (a create passes two:
    payment.authorize and provider.authorize), in this process, which never set tracing up."""
    from orchestrator.tracing import payment_attributes, span

    def site() -> None:
        with span("payment.authorize", payment_attributes("p", "sandbox", "authorize")):
            pass

    number = 200_000
    return min(timeit.repeat(site, number=number, repeat=5)) / number * 1e9


def _rounds(ratios: list[float]) -> str:
    return "median; per round " + ", ".join(f"{r:.3f}" for r in ratios)


def _spans(sink: str) -> int:
    spans: int = httpx.get(f"http://{sink}/count", timeout=10).json()["spans"]
    return spans


def checks(phases: list[dict[str, Any]]) -> list[str]:
    failed = []
    for p in phases:
        label = p["configuration"]
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
        expected = SPANS_PER_CREATE * p["ok_total"] if p["traced"] else 0
        if p["spans_exported"] < expected or (not p["traced"] and p["spans_exported"]):
            failed.append(f"{label}: {p['spans_exported']} spans exported, {expected} expected")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_window_arguments(
        parser, concurrency=32, runs=3, runs_help="bare/metrics/traced rounds; median ratios"
    )
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
            sink_process = stack.enter_context(
                child("otlp-sink", [sys.executable, "bench/otlp_sink.py"], tmp / "sink.log")
            )
            sink = sink_process.wait_for(_SINK_LISTENING, opts.startup_timeout)[1]
            for run in range(opts.runs):
                for configuration in CONFIGURATIONS:
                    print(f"run {run + 1}/{opts.runs}: {configuration}", file=sys.stderr)
                    work = tmp / f"run{run + 1}-{configuration}"
                    work.mkdir()
                    phases.append(phase(opts, configuration, database_url, sandbox_url, sink, work))
    except BenchError as e:
        print(f"benchmark could not run: {e}", file=sys.stderr)
        return 2
    rates = {
        c: [p["throughput"] for p in phases if p["configuration"] == c] for c in CONFIGURATIONS
    }
    ratios = {
        c: [b / a for a, b in zip(rates["bare"], rates[c], strict=True) if a]
        for c in CONFIGURATIONS[1:]
    }
    ratios["traced/metrics"] = [
        b / a for a, b in zip(rates["metrics"], rates["traced"], strict=True) if a
    ]
    medians = {c: statistics.median(r) if r else float("nan") for c, r in ratios.items()}
    cpu = {
        c: [p["server_cpu_ms_per_create"] for p in phases if p["configuration"] == c]
        for c in CONFIGURATIONS
    }
    cpu_ratios = {
        c: [b / a for a, b in zip(cpu["bare"], cpu[c], strict=True) if a]
        for c in CONFIGURATIONS[1:]
    }
    cpu_ratios["traced/metrics"] = [
        b / a for a, b in zip(cpu["metrics"], cpu["traced"], strict=True) if a
    ]
    site_ns = span_site_off_ns()
    bare_cpu_ms = statistics.median(cpu["bare"]) if cpu["bare"] else float("nan")
    print(
        f"{started:%Y-%m-%d %H:%M:%S} UTC, PostgreSQL, {opts.concurrency} in flight, "
        f"{opts.warmup:g} s warm-up + {opts.duration:g} s windows, {opts.runs} round(s)"
    )
    for p in phases:
        print(
            f"{p['configuration']:>7}: {p['throughput']:,.1f} creates/s, "
            f"p50 / p99 {p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms, "
            f"server CPU {p['server_cpu_ms_per_create']:.2f} ms/create"
            + (f", {p['spans_exported']:,} spans exported" if p["traced"] else "")
        )
    for name, label in (
        ("metrics", "metrics on, tracing off / bare"),
        ("traced", "metrics on, tracing on  / bare"),
        ("traced/metrics", "tracing on / tracing off (metrics on)"),
    ):
        print(
            f"{label}: creates/s {medians[name]:.3f} ({_rounds(ratios[name])}), "
            f"server CPU per create {statistics.median(cpu_ratios[name]):.3f} "
            f"({_rounds(cpu_ratios[name])})"
        )
    print(
        f"tracing off: a span site costs {site_ns:.0f} ns; a create passes 2, "
        f"{2 * site_ns / 1e6 / bare_cpu_ms:.5f} of the bare server's CPU per create"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"metrics-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "phases": phases,
                "ratios": ratios,
                "medians": medians,
                "cpu_ratios": cpu_ratios,
                "span_site_off_ns": site_ns,
            },
            indent=1,
        )
    )
    print(f"raw numbers: {out}")
    failed = checks(phases)
    for line in failed:
        print(f"CHECK FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
