"""CreatePayment throughput and latency on SQLite and PostgreSQL, each beside its ceiling.

For each backend: a sandbox provider process (no added latency) and a ``payorch serve``
process on a fresh store (a temporary SQLite file, or a new PostgreSQL database
``payorch_bench_<random>`` dropped afterwards). A closed-loop grpc.aio load generator in its
own process (bench/loadgen.py) then sends CreatePayment with new idempotency keys, and next
replays keys it already used. In the same run, the ceilings: an empty unary gRPC handler on
the same server setup (bench/empty_grpc_server.py) under the same load, and the store's
single-row commit rate (bench/commit_rate.py). See bench/README.md.

Prints a table and writes the raw numbers to bench/results/<timestamp>.json. Exit status: 0
when every check held, 1 when a check failed (non-OK answers, authorizations not one per new
key, replays that wrote or authorized), 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from benchlib import add_machine_arguments, machine_busy_fraction

from adapters.sandbox.webhooks import new_webhook_secret
from orchestrator.bootstrap import Settings

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
BACKENDS = ("sqlite", "postgres")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Write transactions per new CreatePayment when not measured (no PostgreSQL in the run):
# orchestrator/application.py saves the payment and its command record before calling the
# provider, and the outcome after.
ASSUMED_WRITES_PER_CREATE = 2.0
# What `payorch serve` runs with when --server-workers is not given.
DEFAULT_GRPC_WORKERS = Settings().grpc_workers
# Issue 9's goals, printed beside the figures: creates and replays as fractions of the same
# server's health-check rate, p99 over p50 at --concurrency, create p50 at 1 in flight.
GOAL_CREATE_RATIO, GOAL_REPLAY_RATIO, GOAL_P99_OVER_P50, GOAL_SINGLE_P50_MS = 0.20, 0.60, 3.0, 4.0
# ... and with the sandbox's webhooks on (--sandbox-webhooks): each create also brings the
# webhooks of what it did, to acknowledge and apply.
GOAL_CREATE_RATIO_WEBHOOKS = 0.12
PHASES = ("health", "create", "replay", "single")

_SANDBOX_LISTENING = re.compile(r"sandbox provider listening on (http://[\d.]+:\d+)")
_PAYORCH_LISTENING = re.compile(r"payorch gRPC listening on ([\d.]+:\d+)")
_PAYORCH_HTTP = re.compile(r"payorch HTTP listening on ([\d.]+:\d+)")
# the intake logs one line per batch (per provider and verifier), its counts summed
_WEBHOOKS_STORED = re.compile(
    r"payorch\.webhooks webhook sandbox: (\d+) stored, \d+ duplicate\(s\)"
)
_EMPTY_LISTENING = re.compile(r"empty gRPC server listening on ([\d.]+:\d+)")


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a tool failed)."""


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    concurrency: int
    warmup: float
    duration: float
    runs: int
    commit_threads: int
    server_workers: int | None  # None: payorch serve's default
    call_timeout: float
    postgres_url: str
    quiet_threshold: float
    quiet_wait: float
    noise_cores: float
    startup_timeout: float
    keep_tmp: bool
    sandbox_latency_ms: int = 0  # the sandbox's added latency: a provider's wait, on purpose
    sandbox_webhooks: bool = False  # the sandbox posts its webhooks to payorch, which applies them

    @property
    def create_goal(self) -> float:
        return GOAL_CREATE_RATIO_WEBHOOKS if self.sandbox_webhooks else GOAL_CREATE_RATIO


# --- child processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the benchmark dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without PAYORCH_* settings (a stray PAYORCH_CONFIG would change what
    is measured), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_PREEXEC = _die_with_parent if sys.platform == "linux" else None


class Child:
    """A long-running child process whose output goes to a log file."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        try:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=child_env(**(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_PREEXEC,  # noqa: PLW1509 (no threads here; set before exec)
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (both servers shut down gracefully on it), then SIGKILL; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextlib.contextmanager
def child(
    name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[Child]:
    process = Child(name, argv, log_path, env)
    try:
        yield process
    finally:
        process.stop()


def run_json(what: str, argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a bench tool to completion (killed after ``timeout``) and parse its JSON output."""
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=_PREEXEC,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s (killed)") from e
    if done.returncode != 0:
        raise BenchError(
            f"{what} failed with exit status {done.returncode}:\n{done.stderr[-3000:]}"
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"{what} printed no result:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- the pieces of a run ------------------------------------------------------------------


def wait_until_quiet(opts: Options, what: str) -> dict[str, Any]:
    """Wait (bounded) until the machine is nearly idle, so that the next window measures us
    rather than someone else's job; go on regardless after ``--quiet-wait`` seconds."""
    started = time.monotonic()
    busy = machine_busy_fraction(0.5)
    while busy > opts.quiet_threshold and time.monotonic() - started < opts.quiet_wait:
        busy = machine_busy_fraction(1.0)
    quiet = busy <= opts.quiet_threshold
    if not quiet:
        print(
            f"warning: machine still {busy:.0%} busy before {what} after {opts.quiet_wait:.0f} s;"
            " measuring anyway (see 'other' CPU)",
            file=sys.stderr,
        )
    return {"busy_before": round(busy, 3), "waited_s": round(time.monotonic() - started, 1)}


def load(
    opts: Options,
    target: str,
    mode: str,
    *,
    watch: dict[str, int],
    watch_comm: dict[str, str] | None = None,
    keys_in: Path | None = None,
    keys_out: Path | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """One load generator run; ``concurrency`` overrides ``--concurrency``."""
    quiet = wait_until_quiet(opts, f"{mode} load")
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        f"--target={target}",
        f"--mode={mode}",
        f"--concurrency={concurrency or opts.concurrency}",
        f"--warmup={opts.warmup}",
        f"--duration={opts.duration}",
        f"--call-timeout={opts.call_timeout}",
    ]
    argv += [f"--watch={label}={pid}" for label, pid in watch.items()]
    argv += [f"--watch-comm={label}={name}" for label, name in (watch_comm or {}).items()]
    if keys_in is not None:
        argv.append(f"--keys-in={keys_in}")
    if keys_out is not None:
        argv.append(f"--keys-out={keys_out}")
    timeout = opts.warmup + opts.duration + opts.call_timeout + 60
    result = run_json(f"load generator ({mode})", argv, timeout)
    result["quiet"] = quiet
    return result


def empty_grpc_ceiling(opts: Options, tmp: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "empty_grpc_server.py"),
        "--listen=127.0.0.1:0",
        f"--workers={opts.server_workers or DEFAULT_GRPC_WORKERS}",
    ]
    with child("empty gRPC server", argv, tmp / "empty_grpc_server.log") as server:
        target = server.wait_for(_EMPTY_LISTENING, opts.startup_timeout)[1]
        result = load(opts, target, "get", watch={"server": server.pid})
        server.check_alive()
    return result


def commit_ceiling(opts: Options, backend: str, where: str) -> dict[str, Any]:
    """The store's single-row commit rate with 1 thread and with ``--commit-threads``."""
    results: dict[str, Any] = {}
    for threads in sorted({1, opts.commit_threads}):
        quiet = wait_until_quiet(opts, f"{backend} commit rate")
        target = [f"--dsn={where}"] if backend == "postgres" else [f"--path={where}"]
        argv = [
            sys.executable,
            str(BENCH / "commit_rate.py"),
            f"--backend={backend}",
            *target,
            f"--threads={threads}",
            f"--warmup={opts.warmup}",
            f"--duration={opts.duration}",
        ]
        timeout = opts.warmup + opts.duration + 90
        result = run_json(f"{backend} commit rate ({threads} threads)", argv, timeout)
        result["quiet"] = quiet
        results[str(threads)] = result
    return results


def postgres_problem(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL not reachable at {url}: {str(e).strip()}"
    return None


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty database, dropped (connections and all) on the way out."""
    import psycopg

    name = f"payorch_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ledger_counts(sandbox_url: str) -> dict[str, int]:
    import httpx

    answer = httpx.get(f"{sandbox_url}/_sandbox/ledger", timeout=30)
    answer.raise_for_status()
    counts: dict[str, int] = {}
    for entry in answer.json()["entries"]:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    return counts


def stored_events(backend: str, where: str) -> dict[str, int]:
    """Events stored so far; on PostgreSQL also the number of distinct transactions that
    wrote them (``xmin``), which is the number of write transactions."""
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(f"file:{where}?mode=ro", uri=True)) as conn:
            return {"events": conn.execute("SELECT count(*) FROM stored_events").fetchone()[0]}
    import psycopg

    with psycopg.connect(where, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT xmin::text) FROM payments_events"
        ).fetchone()
    assert row is not None
    return {"events": row[0], "write_transactions": row[1]}


def check_sandbox_url(url: str, timeout: float, *, latency_ms: int = 0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/_sandbox/ledger", timeout=2).raise_for_status()
            # "no added latency" unless asked, whatever the defaults may become
            faults = {
                "latency_ms": latency_ms,
                "error_rate": 0,
                "timeout_rate": 0,
                "drop_after_processing_rate": 0,
            }
            httpx.put(f"{url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()
            return
        except httpx.HTTPError as e:
            if time.monotonic() >= deadline:
                raise BenchError(f"sandbox at {url} not answering: {e}") from e
            time.sleep(0.1)


def webhooks_stored(log: str) -> int:
    """The sandbox's webhook deliveries payorch's log says it stored."""
    return sum(int(n) for n in _WEBHOOKS_STORED.findall(log))


def send_webhooks(sandbox_url: str, url: str, secret: str) -> None:
    """From now on the sandbox posts its webhooks, signed with ``secret``, to ``url``."""
    import httpx

    settings = {"url": url, "secret": secret}
    httpx.put(f"{sandbox_url}/_sandbox/webhooks", json=settings, timeout=5).raise_for_status()


def start_sandbox(
    stack: contextlib.ExitStack, work: Path, timeout: float, *, latency_ms: int = 0
) -> tuple[Child, str]:
    """A sandbox provider in its own process (port 0), every fault off, and its URL. It stops
    with ``stack``."""
    sandbox = stack.enter_context(
        child(
            "sandbox",
            [sys.executable, "-m", "orchestrator.cli", "sandbox", "--listen=127.0.0.1:0"],
            work / "sandbox.log",
        )
    )
    url: str = sandbox.wait_for(_SANDBOX_LISTENING, timeout)[1]
    check_sandbox_url(url, timeout, latency_ms=latency_ms)
    return sandbox, url


def wait_serving(target: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                if time.monotonic() >= deadline:
                    raise BenchError(f"payorch at {target} not SERVING: {e}") from e
            if time.monotonic() >= deadline:
                raise BenchError(f"payorch at {target} not SERVING after {timeout:.0f} s")
            time.sleep(0.1)


def run_backend(opts: Options, backend: str, tmp: Path) -> dict[str, Any]:
    work = tmp / backend
    work.mkdir()
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            where = str(work / "payorch.db")
            database_url = f"sqlite:///{where}"
            commit_where = str(work / "commit_rate.db")
        else:
            where = stack.enter_context(fresh_postgres_database(opts.postgres_url))
            database_url = commit_where = where
        result["database"] = database_url

        sandbox, sandbox_url = start_sandbox(
            stack, work, opts.startup_timeout, latency_ms=opts.sandbox_latency_ms
        )
        secret = new_webhook_secret() if opts.sandbox_webhooks else ""

        server = stack.enter_context(
            child(
                "payorch serve",
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "serve",
                    "--grpc-listen=127.0.0.1:0",
                    "--http-listen=127.0.0.1:0",
                    f"--database-url={database_url}",
                    f"--sandbox-url={sandbox_url}",
                    *([f"--grpc-workers={opts.server_workers}"] if opts.server_workers else []),
                ],
                work / "payorch.log",
                {"PAYORCH_SANDBOX_WEBHOOK_SECRET": secret} if secret else None,
            )
        )
        target = server.wait_for(_PAYORCH_LISTENING, opts.startup_timeout)[1]
        wait_serving(target, opts.startup_timeout)
        if secret:
            webhooks = server.wait_for(_PAYORCH_HTTP, opts.startup_timeout)[1]
            send_webhooks(sandbox_url, f"http://{webhooks}/webhooks/sandbox", secret)

        watch = {"server": server.pid, "sandbox": sandbox.pid}
        watch_comm = {"postgres": "postgres"} if backend == "postgres" else {}
        keys = work / "keys.txt"

        # the ceiling of this very server: its health checks, beside its creates and replays
        result["health"] = load(opts, target, "health", watch=watch, watch_comm=watch_comm)
        server.check_alive()
        ledger_before = ledger_counts(sandbox_url)
        events_before = stored_events(backend, where)
        result["create"] = load(
            opts, target, "create", watch=watch, watch_comm=watch_comm, keys_out=keys
        )
        server.check_alive()
        ledger_created = ledger_counts(sandbox_url)
        events_created = stored_events(backend, where)
        if not keys.read_text().strip():
            raise BenchError(f"{backend}: no CreatePayment succeeded; nothing to replay")

        result["replay"] = load(
            opts, target, "replay", watch=watch, watch_comm=watch_comm, keys_in=keys
        )
        server.check_alive()
        ledger_replayed = ledger_counts(sandbox_url)
        events_replayed = stored_events(backend, where)
        # one caller at a time: a create's own latency, without queueing
        result["single"] = load(
            opts,
            target,
            "create",
            watch=watch,
            watch_comm=watch_comm,
            keys_out=work / "single-keys.txt",
            concurrency=1,
        )
        server.check_alive()
        result["webhooks_stored"] = webhooks_stored(server.log_path.read_text(errors="replace"))
        result["ledger"] = {
            "before": ledger_before,
            "after_create": ledger_created,
            "after_replay": ledger_replayed,
            "after_single": ledger_counts(sandbox_url),
        }
        result["stored"] = {
            "before": events_before,
            "after_create": events_created,
            "after_replay": events_replayed,
        }

        # the store's own ceiling, on the same database or disk, with payorch stopped
        server.stop()
        sandbox.stop()
        result["commit_ceiling"] = commit_ceiling(opts, backend, commit_where)
    return result


# --- summary, checks and the table --------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]], backends: list[str]) -> dict[str, Any]:
    """Medians over runs of rates and latencies; sums over runs of counts."""

    def med(get: Callable[[dict[str, Any]], float], where: list[dict[str, Any]]) -> float:
        return _median([get(r) for r in where])

    empty = [r["empty_grpc"] for r in runs]
    summary: dict[str, Any] = {
        "empty_grpc": {
            "rps": med(lambda r: r["throughput"], empty),
            "p50_ms": med(lambda r: r["p50_ms"], empty),
            "p99_ms": med(lambda r: r["p99_ms"], empty),
            "non_ok": sum(r["non_ok_total"] for r in empty),
            "cpu_cores": _median_cpu([r["cpu_cores"] for r in empty]),
        }
    }
    measured_writes: list[float] = []
    for backend in backends:
        per_run = [r["backends"][backend] for r in runs]
        s: dict[str, Any] = {}
        for phase in PHASES:
            rs = [b[phase] for b in per_run]
            s[phase] = {
                "rps": med(lambda r: r["throughput"], rs),
                "p50_ms": med(lambda r: r["p50_ms"], rs),
                "p99_ms": med(lambda r: r["p99_ms"], rs),
                "calls": sum(r["calls_total"] for r in rs),
                "ok": sum(r["ok_total"] for r in rs),
                "non_ok": sum(r["non_ok_total"] for r in rs),
                "non_ok_codes": _sum_counts([r["non_ok_codes"] for r in rs]),
                "unexpected_status": _sum_counts([r["unexpected_status"] for r in rs]),
                "cpu_cores": _median_cpu([r["cpu_cores"] for r in rs]),
                "other_cores_max": max(r["cpu_cores"]["other"] for r in rs),
            }
        auth = "authorization"
        s["new_keys"] = sum(b["create"]["keys_created"] for b in per_run)
        s["authorizations_for_creates"] = sum(
            b["ledger"]["after_create"].get(auth, 0) - b["ledger"]["before"].get(auth, 0)
            for b in per_run
        )
        s["authorizations_for_replays"] = sum(
            b["ledger"]["after_replay"].get(auth, 0) - b["ledger"]["after_create"].get(auth, 0)
            for b in per_run
        )
        s["other_provider_calls"] = sum(
            n for b in per_run for kind, n in b["ledger"]["after_single"].items() if kind != auth
        )
        s["single_new_keys"] = sum(b["single"]["keys_created"] for b in per_run)
        s["webhooks_stored"] = sum(b.get("webhooks_stored", 0) for b in per_run)
        s["authorizations_for_single"] = sum(
            b["ledger"]["after_single"].get(auth, 0) - b["ledger"]["after_replay"].get(auth, 0)
            for b in per_run
        )
        s["events_per_new_key"] = sum(
            b["stored"]["after_create"]["events"] - b["stored"]["before"]["events"] for b in per_run
        ) / max(1, s["new_keys"])
        s["events_written_by_replays"] = sum(
            b["stored"]["after_replay"]["events"] - b["stored"]["after_create"]["events"]
            for b in per_run
        )
        if backend == "postgres":
            writes = sum(
                b["stored"]["after_create"]["write_transactions"]
                - b["stored"]["before"]["write_transactions"]
                for b in per_run
            )
            s["write_txns_per_new_key"] = writes / max(1, s["new_keys"])
            measured_writes.append(s["write_txns_per_new_key"])
        ceilings: dict[str, dict[str, Any]] = {}
        for threads in per_run[0]["commit_ceiling"]:
            rs = [b["commit_ceiling"][threads] for b in per_run]
            ceilings[threads] = {
                "commits_per_s": med(lambda r: r["commits_per_s"], rs),
                "p50_ms": med(lambda r: r["p50_ms"], rs),
                "p99_ms": med(lambda r: r["p99_ms"], rs),
                "cpu_cores": _median_cpu([r["cpu_cores"] for r in rs]),
            }
        best = max(ceilings, key=lambda t: ceilings[t]["commits_per_s"])
        s["commit_ceiling"] = ceilings
        s["commit_ceiling_best_threads"] = int(best)
        summary[backend] = s
    for backend in backends:
        s = summary[backend]
        if measured_writes:
            s["writes_per_create"] = measured_writes[0]
            s["writes_per_create_source"] = "measured on postgres (distinct xmin)"
        else:
            s["writes_per_create"] = ASSUMED_WRITES_PER_CREATE
            s["writes_per_create_source"] = "assumed from orchestrator/application.py"
    return summary


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def _median_cpu(samples: list[dict[str, float]]) -> dict[str, float]:
    labels = {k for s in samples for k in s}
    return {k: round(_median([s[k] for s in samples if k in s]), 2) for k in sorted(labels)}


def checks(summary: dict[str, Any], backends: list[str], opts: Options) -> list[str]:
    """The failed checks (empty when all held)."""
    failed = []
    if summary["empty_grpc"]["non_ok"]:
        failed.append(f"empty gRPC: {summary['empty_grpc']['non_ok']} non-OK answers")
    for backend in backends:
        s = summary[backend]
        for phase in PHASES:
            if s[phase]["non_ok"]:
                failed.append(f"{backend} {phase}: non-OK answers {s[phase]['non_ok_codes']}")
            if s[phase]["unexpected_status"]:
                failed.append(
                    f"{backend} {phase}: payments not AUTHORIZED {s[phase]['unexpected_status']}"
                )
        if s["authorizations_for_creates"] != s["new_keys"]:
            failed.append(
                f"{backend}: {s['authorizations_for_creates']} sandbox authorizations for"
                f" {s['new_keys']} new keys (expected one each)"
            )
        if s["authorizations_for_single"] != s["single_new_keys"]:
            failed.append(
                f"{backend}: {s['authorizations_for_single']} sandbox authorizations for"
                f" {s['single_new_keys']} new keys at 1 in flight (expected one each)"
            )
        if s["authorizations_for_replays"]:
            failed.append(f"{backend}: {s['authorizations_for_replays']} authorizations on replay")
        if s["other_provider_calls"]:
            failed.append(f"{backend}: {s['other_provider_calls']} unexpected provider calls")
        # With webhooks on, the creates' webhooks are still stored and applied during the
        # replays: the sandbox's ledger (above) is then the proof that replays did nothing.
        if s["events_written_by_replays"] and not opts.sandbox_webhooks:
            failed.append(f"{backend}: replays stored {s['events_written_by_replays']} events")
    return failed


def noise_warnings(runs: list[dict[str, Any]], opts: Options) -> list[str]:
    warnings = []

    def look(what: str, cores: dict[str, float]) -> None:
        if cores.get("other", 0) > opts.noise_cores:
            warnings.append(
                f"{what}: {cores['other']:.2f} cores used outside the measured processes"
                " (another job on the machine, or kernel I/O threads)"
            )

    for i, run in enumerate(runs, 1):
        look(f"run {i} empty gRPC", run["empty_grpc"]["cpu_cores"])
        for backend, b in run["backends"].items():
            for phase in PHASES:
                look(f"run {i} {backend} {phase}", b[phase]["cpu_cores"])
            for threads, c in b["commit_ceiling"].items():
                look(f"run {i} {backend} commit rate ({threads} thr)", c["cpu_cores"])
    return warnings


def _n(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def _lat(p50: float, p99: float) -> str:
    return f"{p50:.1f} / {p99:.1f} ms"


def table(summary: dict[str, Any], backends: list[str], opts: Options) -> list[tuple[str, ...]]:
    empty = summary["empty_grpc"]
    e_rps, e50, e99 = empty["rps"], empty["p50_ms"], empty["p99_ms"]
    inflight = f"{opts.concurrency} in flight"
    rows: list[tuple[str, ...]] = [
        ("backend", "metric", "value", "ceiling", "ratio"),
        ("ceiling", f"empty gRPC GetPayment/s ({inflight})", _n(e_rps), "", ""),
        ("ceiling", "  p50 / p99 latency", _lat(e50, e99), "", ""),
    ]
    names = {"sqlite": "SQLite", "postgres": "PG"}
    for backend in backends:
        for threads, c in summary[backend]["commit_ceiling"].items():
            plural = "" if threads == "1" else "s"
            rows += [
                (
                    "ceiling",
                    f"{names[backend]} 1-row commits/s, {threads} thread{plural}",
                    _n(c["commits_per_s"]),
                    "",
                    "",
                ),
                ("ceiling", "  p50 / p99 commit latency", _lat(c["p50_ms"], c["p99_ms"]), "", ""),
            ]
    for backend in backends:
        s = summary[backend]
        create, replay, health, single = s["create"], s["replay"], s["health"], s["single"]
        h_rps = health["rps"]
        best = str(s["commit_ceiling_best_threads"])
        commits = s["commit_ceiling"][best]["commits_per_s"]
        writes = s["writes_per_create"]
        store_writes = create["rps"] * writes
        ok = "ok"
        # With webhooks on, the creates' webhooks are still applied during the replays.
        replays_wrote = (
            "n/a: webhooks arriving"
            if opts.sandbox_webhooks
            else ("FAILED" if s["events_written_by_replays"] else ok)
        )
        rows += [
            ("", "", "", "", ""),
            (
                backend,
                f"health checks/s, same server ({inflight})",
                _n(h_rps),
                f"{_n(e_rps, 0)} rpc/s",
                f"{h_rps / e_rps:.2f} of empty gRPC",
            ),
            (backend, "  p50 / p99 latency", _lat(health["p50_ms"], health["p99_ms"]), "", ""),
            (
                backend,
                f"CreatePayment/s ({inflight})",
                _n(create["rps"]),
                f"{_n(h_rps, 0)} checks/s",
                f"{create['rps'] / h_rps:.2f} of health (goal {opts.create_goal:.2f})",
            ),
            (
                backend,
                "  p50 / p99 latency",
                _lat(create["p50_ms"], create["p99_ms"]),
                _lat(e50, e99),
                f"p99 {create['p99_ms'] / create['p50_ms']:.1f}x p50"
                f" (goal <= {GOAL_P99_OVER_P50:g}x)",
            ),
            (
                backend,
                "CreatePayment at 1 in flight: p50 / p99",
                _lat(single["p50_ms"], single["p99_ms"]),
                f"{_n(single['rps'])} creates/s",
                f"p50 {single['p50_ms']:.1f} ms"
                + (f" (goal <= {GOAL_SINGLE_P50_MS:g} ms)" if backend == "sqlite" else ""),
            ),
            (
                backend,
                f"  store write txns/s ({writes:.2f} per create)",
                _n(store_writes),
                f"{_n(commits, 0)} commits/s ({best} thr)",
                f"{store_writes / commits:.2f} of {names[backend]} 1-row commits",
            ),
            (
                backend,
                f"replayed CreatePayment/s ({inflight})",
                _n(replay["rps"]),
                f"{_n(h_rps, 0)} checks/s",
                f"{replay['rps'] / h_rps:.2f} of health (goal {GOAL_REPLAY_RATIO:.2f})",
            ),
            (
                backend,
                "  p50 / p99 latency",
                _lat(replay["p50_ms"], replay["p99_ms"]),
                _lat(e50, e99),
                f"p99 {replay['p99_ms'] / replay['p50_ms']:.1f}x p50"
                f" (goal <= {GOAL_P99_OVER_P50:g}x)",
            ),
            (
                backend,
                "non-OK answers (create / replay / 1 in flight)",
                f"{create['non_ok']} / {replay['non_ok']} / {single['non_ok']}",
                "0 / 0 / 0",
                ok if not (create["non_ok"] or replay["non_ok"] or single["non_ok"]) else "FAILED",
            ),
            (
                backend,
                "sandbox authorizations / new keys",
                f"{s['authorizations_for_creates']:,} / {s['new_keys']:,}",
                "1 per new key",
                f"{s['authorizations_for_creates'] / max(1, s['new_keys']):.2f} per new key",
            ),
            (
                backend,
                "sandbox authorizations / replays",
                f"{s['authorizations_for_replays']:,} / {replay['calls']:,}",
                "0 per replay",
                f"{s['authorizations_for_replays'] / max(1, replay['calls']):.2f} per replay",
            ),
            (
                backend,
                "events stored: per new key / by replays",
                f"{s['events_per_new_key']:.2f} / {s['events_written_by_replays']}",
                "- / 0",
                replays_wrote,
            ),
        ]
        if opts.sandbox_webhooks:
            keys = s["new_keys"] + s["single_new_keys"]
            rows.append(
                (
                    backend,
                    "webhook deliveries stored (sandbox's webhooks on)",
                    f"{s['webhooks_stored']:,}",
                    f"{keys:,} new keys",
                    f"{s['webhooks_stored'] / max(1, keys):.2f} per new key",
                )
            )
    return rows


def goal_lines(summary: dict[str, Any], backends: list[str], opts: Options) -> list[str]:
    """Issue 9's goals 1 to 3, each as met or not, from this run's figures."""
    lines = ["goals (issue 9), this run:"]

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    for backend in backends:
        s = summary[backend]
        h = s["health"]["rps"]
        create, replay, single = s["create"], s["replay"], s["single"]
        c_ratio, r_ratio = create["rps"] / h, replay["rps"] / h
        spreads = [p["p99_ms"] / p["p50_ms"] for p in (create, replay)]
        lines += [
            f"  {backend:8} 1. creates {c_ratio:.2f} of health checks"
            f"{' with webhooks on' if opts.sandbox_webhooks else ''} (>= {opts.create_goal:.2f})"
            f": {verdict(c_ratio >= opts.create_goal)}",
            f"  {backend:8}    {cpu_bound(s['health'], create, opts.create_goal)}",
            f"  {backend:8} 2. replays {r_ratio:.2f} of health checks (>= {GOAL_REPLAY_RATIO:.2f})"
            f": {verdict(r_ratio >= GOAL_REPLAY_RATIO)}",
            f"  {backend:8} 3. p99/p50 at {opts.concurrency} in flight: create {spreads[0]:.1f}x,"
            f" replay {spreads[1]:.1f}x (<= {GOAL_P99_OVER_P50:g}x)"
            f": {verdict(max(spreads) <= GOAL_P99_OVER_P50)}",
        ]
        if backend == "sqlite":
            met = single["p50_ms"] <= GOAL_SINGLE_P50_MS
            lines.append(
                f"  {backend:8} 3. create p50 at 1 in flight {single['p50_ms']:.2f} ms"
                f" (<= {GOAL_SINGLE_P50_MS:g} ms): {verdict(met)}"
            )
    return lines


def server_ms_per_call(phase: dict[str, Any]) -> float:
    return float(phase["cpu_cores"]["server"]) / float(phase["rps"]) * 1000


def cpu_bound(health: dict[str, Any], create: dict[str, Any], goal: float) -> str:
    """Goal 1's ceiling set by CPU alone: one ``payorch serve`` process runs Python on one
    core at a time (its interpreter lock), so at the CPU a create and a health check cost it
    in this run, creates given the CPU the checks had reach at most their ratio, however
    calls queue."""
    per_create, per_check = server_ms_per_call(create), server_ms_per_call(health)
    return (
        f"bound by CPU: {per_create:.2f} ms of server CPU per create, {per_check:.2f} per"
        f" health check; with the CPU the checks had, at most {per_check / per_create:.2f} of"
        f" them;"
        f" {goal:.2f} needs <= {per_check / goal:.2f} ms per create"
    )


def render(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i == 2 else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cpu_lines(summary: dict[str, Any], backends: list[str]) -> list[str]:
    """Cores used by each process in the windows, and the server's CPU time per call."""

    def fmt(phase: dict[str, Any]) -> str:
        cores = phase["cpu_cores"]
        order = ["server", "sandbox", "postgres", "loadgen", "other", "steal", "machine"]
        # "other" is a difference of samples: show a rounding -0.01 as 0
        parts = [f"{k} {max(0.0, cores[k]):.2f}" for k in order if k in cores]
        per_call = server_ms_per_call(phase) if "server" in cores else float("nan")
        return f"{', '.join(parts)}; server CPU {per_call:.2f} ms per call"

    cpus = os.cpu_count() or 0
    lines = [f"CPU cores used in the timed windows (of {cpus}; medians):"]
    lines.append(f"  empty gRPC        {fmt(summary['empty_grpc'])}")
    for backend in backends:
        for phase in PHASES:
            lines.append(f"  {backend:8} {phase:8} {fmt(summary[backend][phase])}")
    return lines


# --- main ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for dist in ("grpcio", "protobuf", "psycopg", "eventsourcing", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": str(bool(git("status", "--porcelain")))}


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, through every ``finally``: children, databases, files."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def scratch_dir(prefix: str, *, keep: bool, interrupted: str) -> Iterator[Path]:
    """A temporary folder for one benchmark, removed at the end unless ``keep``. A SIGTERM
    or Ctrl-C says what the ``finally`` blocks inside cleaned up (``interrupted``)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    except (KeyboardInterrupt, SystemExit):
        print(f"interrupted: {interrupted}", file=sys.stderr)
        raise
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def measurable_backends(
    wanted: tuple[str, ...] | list[str], postgres_url: str
) -> tuple[list[str], dict[str, str]]:
    """The backends that can be measured here, and why the others are skipped."""
    backends = list(wanted)
    skipped: dict[str, str] = {}
    if "postgres" in backends and (problem := postgres_problem(postgres_url)):
        skipped["postgres"] = problem
        backends.remove("postgres")
        print(f"postgres: skipped ({problem})", file=sys.stderr)
    return backends, skipped


def print_verdicts(skipped: dict[str, str], noisy: list[str], failed: list[str]) -> None:
    for backend, why in skipped.items():
        print(f"{backend}: skipped ({why})")
    for warning in noisy:
        print(f"noise: {warning}")
    for failure in failed:
        print(f"CHECK FAILED: {failure}")


def write_results(
    name: str, started: datetime, command: str, options: Any, body: dict[str, Any]
) -> Path:
    """The raw numbers with the command, the options and the machine, as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}{started:%Y%m%dT%H%M%SZ}.json"
    document = {
        "command": command,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "options": options,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "versions": versions(),
            "git": git_state(),
        },
        **body,
    }
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"raw numbers: {out.relative_to(ROOT)}")
    return out


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--warmup", type=float, help="seconds before each window (2; 1 --quick)")
    parser.add_argument("--duration", type=float, help="timed window, seconds (10; 4 --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s warm-up, 4 s window")
    parser.add_argument("--runs", type=int, default=1, help="repeat all; report medians")
    parser.add_argument("--commit-threads", type=int, default=8, help="commit-rate threads")
    parser.add_argument(
        "--server-workers",
        type=int,
        help=f"gRPC worker threads (payorch serve's default: {DEFAULT_GRPC_WORKERS})",
    )
    parser.add_argument("--call-timeout", type=float, default=10.0, help="per-call deadline")
    parser.add_argument(
        "--sandbox-latency-ms",
        type=int,
        default=0,
        help="latency the sandbox adds to every call (0: none, the goals' setting)",
    )
    parser.add_argument(
        "--sandbox-webhooks",
        action="store_true",
        help="the sandbox posts its webhooks to payorch (goal 1's second figure, >= 0.12)",
    )
    add_machine_arguments(parser, postgres_default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = [b for b in backends if b not in BACKENDS]
    if not backends or unknown:
        parser.error(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}")
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    duration = args.duration if args.duration is not None else (4.0 if args.quick else 10.0)
    if duration <= 0 or warmup < 0 or args.concurrency < 1 or args.runs < 1:
        parser.error("--duration > 0, --warmup >= 0, --concurrency >= 1, --runs >= 1")
    return Options(
        backends=backends,
        concurrency=args.concurrency,
        warmup=warmup,
        duration=duration,
        runs=args.runs,
        commit_threads=args.commit_threads,
        server_workers=args.server_workers,
        call_timeout=args.call_timeout,
        postgres_url=args.postgres_url,
        quiet_threshold=args.quiet_threshold,
        quiet_wait=args.quiet_wait,
        noise_cores=args.noise_cores,
        startup_timeout=args.startup_timeout,
        keep_tmp=args.keep_tmp,
        sandbox_latency_ms=args.sandbox_latency_ms,
        sandbox_webhooks=args.sandbox_webhooks,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    command = shlex.join([sys.executable, *sys.argv])
    started = datetime.now(UTC)

    exit_on_sigterm()
    backends, skipped = measurable_backends(opts.backends, opts.postgres_url)
    if not backends:
        print("no backend left to measure", file=sys.stderr)
        return 2

    runs: list[dict[str, Any]] = []
    try:
        with scratch_dir(
            "payorch-bench-", keep=opts.keep_tmp, interrupted="processes stopped, databases dropped"
        ) as tmp:
            for i in range(1, opts.runs + 1):
                run_dir = tmp / f"run{i}"
                run_dir.mkdir()
                print(f"run {i}/{opts.runs}: empty gRPC ceiling", file=sys.stderr)
                run: dict[str, Any] = {
                    "empty_grpc": empty_grpc_ceiling(opts, run_dir),
                    "backends": {},
                }
                for backend in backends:
                    print(f"run {i}/{opts.runs}: {backend}", file=sys.stderr)
                    run["backends"][backend] = run_backend(opts, backend, run_dir)
                runs.append(run)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2

    summary = summarize(runs, backends)
    failed = checks(summary, backends, opts)
    noisy = noise_warnings(runs, opts)
    window = f"{opts.warmup:g} s warm-up + {opts.duration:g} s window"
    header = [
        f"$ {command}",
        f"{started:%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} CPUs (load generator and servers"
        f" share them), {window}, {opts.concurrency} in flight, "
        + (f"medians of {opts.runs} runs" if opts.runs > 1 else "1 run"),
        f"gRPC workers: {opts.server_workers or f'default ({DEFAULT_GRPC_WORKERS})'},"
        f" sandbox latency {opts.sandbox_latency_ms} ms",
    ]
    print("\n".join(header))
    print()
    print(render(table(summary, backends, opts)))
    print()
    print("\n".join(cpu_lines(summary, backends)))
    print()
    print("\n".join(goal_lines(summary, backends, opts)))
    for backend in backends:
        print(
            f"write txns per create for {backend}: {summary[backend]['writes_per_create_source']}"
        )
    print_verdicts(skipped, noisy, failed)
    body = {"skipped": skipped, "summary": summary, "checks_failed": failed}
    write_results(
        "", started, command, opts.__dict__, {**body, "noise_warnings": noisy, "runs": runs}
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def add_window_arguments(
    parser: argparse.ArgumentParser, *, concurrency: int, runs: int, runs_help: str,
    concurrency_help: str = "calls in flight", workers_help: str = "--grpc-workers of the server",
) -> None:  # fmt: skip
    """The timed-window options of the PostgreSQL-only comparisons (metrics.py,
    processes.py), beside the machine's (``add_machine_arguments``)."""
    parser.add_argument("--concurrency", type=int, default=concurrency, help=concurrency_help)
    parser.add_argument("--warmup", type=float, help="seconds before each window (2; 1 --quick)")
    parser.add_argument("--duration", type=float, help="timed window, seconds (10; 4 --quick)")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 4 s window")
    parser.add_argument("--runs", type=int, default=runs, help=runs_help)
    parser.add_argument("--server-workers", type=int, help=workers_help)
    add_machine_arguments(parser, postgres_default=DEFAULT_POSTGRES_URL)


def postgres_window(args: argparse.Namespace) -> Options:
    """The Options of a PostgreSQL-only comparison, from ``add_window_arguments``'."""
    return Options(
        backends=("postgres",),
        concurrency=args.concurrency,
        warmup=args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        duration=args.duration if args.duration is not None else (4.0 if args.quick else 10.0),
        runs=args.runs,
        commit_threads=1,
        server_workers=args.server_workers,
        call_timeout=10.0,
        startup_timeout=args.startup_timeout,
        postgres_url=args.postgres_url,
        quiet_threshold=args.quiet_threshold,
        quiet_wait=args.quiet_wait,
        noise_cores=args.noise_cores,
        keep_tmp=args.keep_tmp,
        sandbox_latency_ms=0,
    )
