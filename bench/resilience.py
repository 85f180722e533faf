"""What the resilient provider path costs, and how fast an open breaker refuses.

In one run, on SQLite (a temporary file), with a sandbox provider process that answers after
``--latency-ms`` (50) set with ``PUT /_sandbox/faults``:

1. CreatePayment throughput and latency at ``--concurrency`` (256) calls in flight through the
   resilient path (breaker, retries, timeouts: orchestrator/resilience/provider.py), and
   through the bare adapter (``resilient = false`` in the provider table), each with a fresh
   ``payorch serve --config <toml> --grpc-workers 256``, a fresh sandbox and a fresh store,
   driven by the closed-loop load generator of bench/loadgen.py. Runs alternate: bare,
   resilient, bare, resilient... (``--runs``); medians are reported.
2. Fail-fast latency: a ``payorch serve`` whose only provider points at a closed loopback port,
   its breaker opened by one call (``failure_threshold = 1``, ``open_seconds = 3600``). One
   sync client then sends ``--fail-fast-calls`` CreatePayment calls with new keys, which must
   all be refused with UNAVAILABLE / PROVIDER_UNAVAILABLE, interleaved with as many GetPayment
   calls for unknown ids (NOT_FOUND), the reference: a refusal that is just as trivial.
3. The breaker's own rejection cost, in this process: ``ResilientProvider.authorize`` around a
   trivial provider with its breaker open (raises ``CircuitOpen``), beside a bare
   ``try: raise CircuitOpen(...) except`` loop.

Prints a table and writes the raw numbers to bench/results/resilience-<timestamp>.json. Exit
status: 0 when every check held, 1 when a check failed, 2 when the benchmark could not run.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shlex
import socket
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from benchlib import add_machine_arguments, cpu_cores, cpu_snapshot, nearest_rank
from create_payment import _PAYORCH_LISTENING as PAYORCH_LISTENING
from create_payment import _SANDBOX_LISTENING as SANDBOX_LISTENING
from create_payment import (
    BenchError,
    Child,
    check_sandbox_url,
    child,
    exit_on_sigterm,
    ledger_counts,
    load,
    print_verdicts,
    render,
    scratch_dir,
    stored_events,
    wait_serving,
    wait_until_quiet,
    write_results,
)
from create_payment import Options as LoadOptions
from create_payment import _lat as lat
from create_payment import _median as median
from create_payment import _median_cpu as median_cpu
from create_payment import _n as num
from grpc_status import rpc_status
from loadgen import create_request

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderOperation,
    ProviderOutcome,
)
from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker
from orchestrator.resilience.provider import CircuitOpen, ResilientProvider, Stats

VARIANTS = ("bare", "resilient")
PROVIDER_TIMEOUT = 5.0  # seconds: ``timeout`` of the provider table in part 1


@dataclass(frozen=True)
class Options:
    load: LoadOptions  # window, concurrency, server workers, quiet machine, start-up limits
    latency_ms: int
    fail_fast_calls: int
    fail_fast_warmup: int
    rejections: int
    batch: int


# --- part 1: resilient path vs bare adapter under load ------------------------------------


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of printable ASCII is a TOML basic string


def sandbox_config(base_url: str, *, resilient: bool) -> str:
    lines = [
        "[providers.sandbox]",
        'type = "sandbox"',
        f"base_url = {toml_string(base_url)}",
        f"timeout = {PROVIDER_TIMEOUT}",
    ]
    if not resilient:
        lines.append("resilient = false")
    lines += ["", "[routes]", '"*" = ["sandbox"]', ""]
    return "\n".join(lines)


def set_faults(sandbox_url: str, faults: dict[str, Any]) -> dict[str, Any]:
    """PUT the faults, and return what the sandbox says it now has."""
    import httpx

    httpx.put(f"{sandbox_url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()
    answer = httpx.get(f"{sandbox_url}/_sandbox/faults", timeout=5)
    answer.raise_for_status()
    current: dict[str, Any] = answer.json()
    return current


def start_serve(
    stack: contextlib.ExitStack, opts: Options, work: Path, config: Path
) -> tuple[Child, str]:
    """A ``payorch serve`` on a fresh SQLite file in ``work``, ready (listening, SERVING)."""
    server = stack.enter_context(
        child(
            "payorch serve",
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "serve",
                "--grpc-listen=127.0.0.1:0",
                f"--database-url=sqlite:///{work / 'payorch.db'}",
                f"--config={config}",
                f"--grpc-workers={opts.load.server_workers}",
            ],
            work / "payorch.log",
        )
    )
    target = server.wait_for(PAYORCH_LISTENING, opts.load.startup_timeout)[1]
    wait_serving(target, opts.load.startup_timeout)
    return server, target


def run_variant(opts: Options, variant: str, work: Path) -> dict[str, Any]:
    work.mkdir()
    startup = opts.load.startup_timeout
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(
            child(
                "sandbox",
                [sys.executable, "-m", "orchestrator.cli", "sandbox", "--listen=127.0.0.1:0"],
                work / "sandbox.log",
            )
        )
        sandbox_url = sandbox.wait_for(SANDBOX_LISTENING, startup)[1]
        check_sandbox_url(sandbox_url, startup)  # every fault off...
        faults = set_faults(sandbox_url, {"latency_ms": opts.latency_ms})  # ...but latency
        config = work / "payorch.toml"
        config.write_text(sandbox_config(sandbox_url, resilient=variant == "resilient"))
        server, target = start_serve(stack, opts, work, config)

        ledger_before = ledger_counts(sandbox_url)
        result = load(
            opts.load, target, "create", watch={"server": server.pid, "sandbox": sandbox.pid}
        )
        server.check_alive()
        sandbox.check_alive()
        ledger_after = ledger_counts(sandbox_url)
    result["variant"] = variant
    result["sandbox_faults"] = faults
    result["provider_config"] = config.read_text()
    result["ledger"] = {"before": ledger_before, "after": ledger_after}
    result["authorizations"] = ledger_after.get("authorization", 0) - ledger_before.get(
        "authorization", 0
    )
    result["other_provider_calls"] = sum(
        n - ledger_before.get(kind, 0)
        for kind, n in ledger_after.items()
        if kind != "authorization"
    )
    return result


# --- part 2: fail-fast latency over gRPC with the breaker open ----------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (the kernel's pick, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def dead_provider_config(port: int) -> str:
    return "\n".join(
        [
            "[providers.x]",
            'type = "sandbox"',
            f"base_url = {toml_string(f'http://127.0.0.1:{port}')}",
            "[providers.x.breaker]",
            "failure_threshold = 1",
            "open_seconds = 3600",
            "",
            "[routes]",
            '"*" = ["x"]',
            "",
        ]
    )


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of an AIP-193 rich error ("" when there is none)."""
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(cast(grpc.Call, error))
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def timed_call(call: Callable[[], object]) -> tuple[int, grpc.RpcError | None]:
    """(client round trip in ns, the error or None): only the call itself is timed."""
    t0 = time.perf_counter_ns()
    try:
        call()
    except grpc.RpcError as e:
        return time.perf_counter_ns() - t0, e
    return time.perf_counter_ns() - t0, None


def outcome_name(error: grpc.RpcError | None) -> str:
    if error is None:
        return "OK"
    code = cast(grpc.Call, error).code()
    return f"{code.name}/{error_reason(error) or '-'}"


def latency_summary(ns: list[int]) -> dict[str, float]:
    ms = sorted(v / 1e6 for v in ns)
    return {
        "p50_ms": nearest_rank(ms, 50),
        "p99_ms": nearest_rank(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
    }


def fail_fast(opts: Options, work: Path) -> dict[str, Any]:
    work.mkdir()
    port = closed_port()
    refused_before = connection_refused(port)
    config = work / "payorch.toml"
    config.write_text(dead_provider_config(port))
    db = str(work / "payorch.db")
    call_timeout = opts.load.call_timeout
    result: dict[str, Any] = {"port": port, "provider_config": config.read_text()}
    with contextlib.ExitStack() as stack:
        server, target = start_serve(stack, opts, work, config)
        channel = stack.enter_context(grpc.insecure_channel(target))
        grpc.channel_ready_future(channel).result(timeout=opts.load.startup_timeout)
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)  # type: ignore[no-untyped-call]
        prefix = f"bench-ff-{uuid.uuid4().hex[:12]}"

        # One call: connection refused, the breaker opens, the payment is FAILED.
        first = stub.CreatePayment(create_request(f"{prefix}-first"), timeout=call_timeout)
        result["first_call_status"] = pb.PaymentStatus.Name(first.status)
        events_open = stored_events("sqlite", db)["events"]

        def create(i: int) -> Callable[[], object]:
            request = create_request(f"{prefix}-{i}")
            return lambda: stub.CreatePayment(request, timeout=call_timeout)

        def get() -> Callable[[], object]:
            request = pb.GetPaymentRequest(payment_id=str(uuid.uuid4()))
            return lambda: stub.GetPayment(request, timeout=call_timeout)

        for i in range(opts.fail_fast_warmup):  # not counted, answers checked all the same
            timed_call(create(-1 - i))
            timed_call(get())
        result["quiet"] = wait_until_quiet(opts.load, "fail-fast calls")
        creates: list[int] = []
        gets: list[int] = []
        create_answers: Counter[str] = Counter()
        get_answers: Counter[str] = Counter()
        before = cpu_snapshot({"server": server.pid}, {})
        started = time.perf_counter()
        for i in range(opts.fail_fast_calls):  # interleaved, so both see the same machine
            ns, error = timed_call(create(i))
            creates.append(ns)
            create_answers[outcome_name(error)] += 1
            ns, error = timed_call(get())
            gets.append(ns)
            get_answers[outcome_name(error)] += 1
        elapsed = time.perf_counter() - started
        after = cpu_snapshot({"server": server.pid}, {})
        server.check_alive()
        events_after = stored_events("sqlite", db)["events"]
        log = server.log_path.read_text(errors="replace")
    refused_after = connection_refused(port)
    result.update(
        {
            "closed_port_refused": refused_before and refused_after,
            "calls": opts.fail_fast_calls,
            "elapsed_s": elapsed,
            "create": latency_summary(creates),
            "get": latency_summary(gets),
            "create_answers": dict(create_answers),
            "get_answers": dict(get_answers),
            "events_stored_while_open": events_after - events_open,
            # the adapter's failed attempts and the breaker's moves, from payorch's log
            "provider_attempts_logged": log.count(" payorch.adapters.x x "),
            "breaker_opened": log.count("breaker x: closed -> open"),
            "breaker_half_open": log.count("-> half_open"),
            "cpu_cores": cpu_cores(before, after, "client"),
        }
    )
    return result


# --- part 3: the breaker's rejection cost, in process -------------------------------------


class IdleProvider:
    """The port, doing nothing: it only counts calls that got through."""

    name: str = "bench"
    honors_idempotency_keys: bool = True

    def __init__(self) -> None:
        self.calls = 0

    def _answer(self) -> ProviderOutcome:
        self.calls += 1
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference="idle")

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._answer()

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._answer()

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._answer()

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._answer()

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        return self._answer()


def rejection_cost(opts: Options) -> dict[str, Any]:
    logging.getLogger("payorch.breaker").setLevel(logging.ERROR)  # no "closed -> open" line
    breaker = CircuitBreaker("bench", BreakerPolicy(failure_threshold=1, open_seconds=3600))
    permit = breaker.acquire()
    if permit is None:
        raise BenchError("a new breaker refused its first call")
    breaker.record_failure(permit)
    inner = IdleProvider()
    stats = Stats()
    provider = ResilientProvider(inner, breaker, stats=stats)
    operation = ProviderOperation(
        OperationKind.AUTHORIZE,
        payment_id=str(uuid.uuid4()),
        provider_key="bench-key",
        amount=1000,
        currency="USD",
        payment_method="pm_card_visa",
    )
    batch = opts.batch
    rejected = 0
    raised = 0

    def resilient_batch() -> int:
        nonlocal rejected
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            try:
                provider.authorize(operation, timeout=PROVIDER_TIMEOUT)
            except CircuitOpen:
                rejected += 1
        return time.perf_counter_ns() - t0

    def bare_batch() -> int:
        nonlocal raised
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            try:
                raise CircuitOpen("bench: circuit open", retry_after=3600.0, breaker_failure=False)
            except CircuitOpen:
                raised += 1
        return time.perf_counter_ns() - t0

    batches = max(1, opts.rejections // batch)
    for _ in range(max(1, batches // 10)):  # warm-up
        resilient_batch()
        bare_batch()
    warmup_rejected = rejected
    quiet = wait_until_quiet(opts.load, "in-process rejections")
    gc.collect()
    per_call: dict[str, list[float]] = {"resilient": [], "bare": []}
    before = cpu_snapshot({}, {})
    for _ in range(batches):  # interleaved, so both see the same machine
        per_call["resilient"].append(resilient_batch() / batch / 1000)
        per_call["bare"].append(bare_batch() / batch / 1000)
    after = cpu_snapshot({}, {})

    def summary(us: list[float]) -> dict[str, float]:
        ordered = sorted(us)
        return {
            "p50_us": nearest_rank(ordered, 50),
            "p99_us": nearest_rank(ordered, 99),
            "mean_us": statistics.fmean(ordered),
        }

    return {
        "calls": batches * batch,
        "batch": batch,
        "quiet": quiet,
        "resilient": summary(per_call["resilient"]),
        "bare_raise": summary(per_call["bare"]),
        "rejected": rejected - warmup_rejected,
        "rejected_total": rejected,
        "breaker_rejected_stat": stats.snapshot().get("breaker_rejected", 0),
        "inner_calls": inner.calls,
        "breaker_state": breaker.state.value,
        "cpu_cores": cpu_cores(before, after, "bench"),
    }


# --- summary, checks and the table --------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of rates and latencies; sums over runs of counts."""

    def med(values: list[float]) -> float:
        return median(values)

    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        rs = [r["throughput"][variant] for r in runs]
        non_ok: Counter[str] = Counter()
        unexpected: Counter[str] = Counter()
        for r in rs:
            non_ok.update(r["non_ok_codes"])
            unexpected.update(r["unexpected_status"])
        cpu = median_cpu([r["cpu_cores"] for r in rs])
        rps = med([r["throughput"] for r in rs])
        summary[variant] = {
            "rps": rps,
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]),
            "calls": sum(r["calls_total"] for r in rs),
            "non_ok": sum(r["non_ok_total"] for r in rs),
            "non_ok_codes": dict(non_ok),
            "unexpected_status": dict(unexpected),
            "new_keys": sum(r["keys_created"] for r in rs),
            "authorizations": sum(r["authorizations"] for r in rs),
            "other_provider_calls": sum(r["other_provider_calls"] for r in rs),
            "cpu_cores": cpu,
            "server_cpu_ms_per_call": med(
                [r["cpu_cores"].get("server", float("nan")) / r["throughput"] * 1000 for r in rs]
            ),
        }
        s = summary[variant]
        s["authorizations_per_new_key"] = s["authorizations"] / max(1, s["new_keys"])
    bare, res = summary["bare"], summary["resilient"]
    summary["ratio_resilient_to_bare"] = {
        "throughput": res["rps"] / bare["rps"],
        "p50": res["p50_ms"] / bare["p50_ms"],
        "p99": res["p99_ms"] / bare["p99_ms"],
        "server_cpu_per_call": res["server_cpu_ms_per_call"] / bare["server_cpu_ms_per_call"],
    }

    ff = [r["fail_fast"] for r in runs]
    answers: dict[str, Counter[str]] = {"create": Counter(), "get": Counter()}
    for r in ff:
        answers["create"].update(r["create_answers"])
        answers["get"].update(r["get_answers"])
    summary["fail_fast"] = {
        "calls": sum(r["calls"] for r in ff),
        "create_p50_ms": med([r["create"]["p50_ms"] for r in ff]),
        "create_p99_ms": med([r["create"]["p99_ms"] for r in ff]),
        "get_p50_ms": med([r["get"]["p50_ms"] for r in ff]),
        "get_p99_ms": med([r["get"]["p99_ms"] for r in ff]),
        "create_answers": dict(answers["create"]),
        "get_answers": dict(answers["get"]),
        "first_call_status": sorted({r["first_call_status"] for r in ff}),
        "closed_port_refused": all(r["closed_port_refused"] for r in ff),
        "provider_attempts_logged": sum(r["provider_attempts_logged"] for r in ff),
        "breaker_opened": sum(r["breaker_opened"] for r in ff),
        "breaker_half_open": sum(r["breaker_half_open"] for r in ff),
        "events_stored_while_open": sum(r["events_stored_while_open"] for r in ff),
        "cpu_cores": median_cpu([r["cpu_cores"] for r in ff]),
        "server_cpu_ms_per_pair": med(
            [
                r["cpu_cores"].get("server", float("nan")) * r["elapsed_s"] / r["calls"] * 1000
                for r in ff
            ]
        ),
    }
    f = summary["fail_fast"]
    f["ratio_p50"] = f["create_p50_ms"] / f["get_p50_ms"]
    f["ratio_p99"] = f["create_p99_ms"] / f["get_p99_ms"]

    rj = [r["rejection"] for r in runs]
    summary["rejection"] = {
        "calls": sum(r["calls"] for r in rj),
        "resilient_p50_us": med([r["resilient"]["p50_us"] for r in rj]),
        "resilient_p99_us": med([r["resilient"]["p99_us"] for r in rj]),
        "bare_p50_us": med([r["bare_raise"]["p50_us"] for r in rj]),
        "bare_p99_us": med([r["bare_raise"]["p99_us"] for r in rj]),
        "rejected": sum(r["rejected"] for r in rj),
        "rejected_total": sum(r["rejected_total"] for r in rj),
        "breaker_rejected_stat": sum(r["breaker_rejected_stat"] for r in rj),
        "inner_calls": sum(r["inner_calls"] for r in rj),
        "cpu_cores": median_cpu([r["cpu_cores"] for r in rj]),
    }
    j = summary["rejection"]
    j["ratio_p50"] = j["resilient_p50_us"] / j["bare_p50_us"]
    j["ratio_p99"] = j["resilient_p99_us"] / j["bare_p99_us"]
    return summary


UNAVAILABLE = "UNAVAILABLE/PROVIDER_UNAVAILABLE"
NOT_FOUND = "NOT_FOUND/PAYMENT_NOT_FOUND"


def checks(summary: dict[str, Any]) -> list[str]:
    """The failed checks (empty when all held)."""
    failed = []
    for variant in VARIANTS:
        s = summary[variant]
        if s["non_ok"]:
            failed.append(f"{variant}: non-OK answers {s['non_ok_codes']}")
        if s["unexpected_status"]:
            failed.append(f"{variant}: payments not AUTHORIZED {s['unexpected_status']}")
        if s["authorizations"] != s["new_keys"]:
            failed.append(
                f"{variant}: {s['authorizations']} sandbox authorizations for {s['new_keys']}"
                " new keys (expected one each)"
            )
        if s["other_provider_calls"]:
            failed.append(f"{variant}: {s['other_provider_calls']} unexpected provider calls")
    f = summary["fail_fast"]
    if f["create_answers"].get(UNAVAILABLE, 0) != f["calls"]:
        failed.append(
            f"fail-fast: CreatePayment answers {f['create_answers']}, not all {UNAVAILABLE}"
        )
    if set(f["get_answers"]) != {NOT_FOUND}:
        failed.append(f"fail-fast: GetPayment answers {f['get_answers']}, not all {NOT_FOUND}")
    if f["first_call_status"] != ["PAYMENT_STATUS_FAILED"]:
        failed.append(f"fail-fast: first call ended {f['first_call_status']}, not FAILED")
    if not f["closed_port_refused"]:
        failed.append("fail-fast: the closed port did not refuse connections")
    runs = len(summary["runs"])
    if f["provider_attempts_logged"] != runs or f["breaker_opened"] != runs:
        failed.append(
            f"fail-fast: {f['provider_attempts_logged']} provider attempts and"
            f" {f['breaker_opened']} breaker openings logged (expected {runs} each: the first"
            " call only)"
        )
    if f["breaker_half_open"]:
        failed.append("fail-fast: the breaker went half-open during the measurement")
    if f["events_stored_while_open"]:
        failed.append(f"fail-fast: {f['events_stored_while_open']} events stored while open")
    j = summary["rejection"]
    if j["rejected"] != j["calls"] or j["breaker_rejected_stat"] != j["rejected_total"]:
        failed.append(
            f"in-process: {j['rejected']} CircuitOpen for {j['calls']} calls"
            f" ({j['breaker_rejected_stat']} counted by Stats for {j['rejected_total']})"
        )
    if j["inner_calls"]:
        failed.append(f"in-process: {j['inner_calls']} calls got through the open breaker")
    return failed


def noise_warnings(runs: list[dict[str, Any]], noise_cores: float) -> list[str]:
    warnings = []

    def look(what: str, cores: dict[str, float]) -> None:
        if cores.get("other", 0) > noise_cores:
            warnings.append(
                f"{what}: {cores['other']:.2f} cores used outside the measured processes"
                " (another job on the machine, or kernel I/O threads)"
            )

    for i, run in enumerate(runs, 1):
        for variant in run["order"]:
            look(f"run {i} {variant}", run["throughput"][variant]["cpu_cores"])
        look(f"run {i} fail-fast", run["fail_fast"]["cpu_cores"])
        look(f"run {i} in-process", run["rejection"]["cpu_cores"])
    return warnings


def table(summary: dict[str, Any], opts: Options) -> list[tuple[str, ...]]:
    bare, res = summary["bare"], summary["resilient"]
    ratio = summary["ratio_resilient_to_bare"]
    inflight = f"{opts.load.concurrency} in flight"
    bound = opts.load.concurrency / (opts.latency_ms / 1000) if opts.latency_ms else float("inf")

    def ok(good: bool) -> str:
        return "ok" if good else "FAILED"

    def per_key(s: dict[str, Any]) -> str:
        return f"{s['authorizations_per_new_key']:.2f} per new key"

    rows: list[tuple[str, ...]] = [
        ("part", "metric", "value", "reference", "ratio"),
        (
            "bare",
            f"CreatePayment/s ({inflight})",
            num(bare["rps"]),
            f"{num(bound, 0)}/s: {inflight} / {opts.latency_ms} ms",
            f"{bare['rps'] / bound:.3f} of the provider-latency bound",
        ),
        (
            "bare",
            "  p50 / p99 latency",
            lat(bare["p50_ms"], bare["p99_ms"]),
            f"{opts.latency_ms} ms sandbox latency",
            f"{bare['p50_ms'] / opts.latency_ms:.1f}x / {bare['p99_ms'] / opts.latency_ms:.1f}x"
            if opts.latency_ms
            else "",
        ),
        (
            "resilient",
            f"CreatePayment/s ({inflight})",
            num(res["rps"]),
            f"{num(bare['rps'])}/s bare",
            f"{ratio['throughput']:.2f} of bare",
        ),
        (
            "resilient",
            "  p50 / p99 latency",
            lat(res["p50_ms"], res["p99_ms"]),
            f"{lat(bare['p50_ms'], bare['p99_ms'])} bare",
            f"{ratio['p50']:.2f}x / {ratio['p99']:.2f}x bare",
        ),
        (
            "resilient",
            "  server CPU per call",
            f"{res['server_cpu_ms_per_call']:.2f} ms",
            f"{bare['server_cpu_ms_per_call']:.2f} ms bare",
            f"{ratio['server_cpu_per_call']:.2f}x bare",
        ),
        (
            "both",
            "non-OK answers (resilient / bare)",
            f"{res['non_ok']} / {bare['non_ok']}",
            "0 / 0",
            ok(not (res["non_ok"] or bare["non_ok"])),
        ),
        (
            "resilient",
            "sandbox authorizations / new keys",
            f"{res['authorizations']:,} / {res['new_keys']:,}",
            "1 per new key",
            per_key(res),
        ),
        (
            "bare",
            "sandbox authorizations / new keys",
            f"{bare['authorizations']:,} / {bare['new_keys']:,}",
            "1 per new key",
            per_key(bare),
        ),
    ]
    f = summary["fail_fast"]
    unavailable = f["create_answers"].get(UNAVAILABLE, 0)
    not_found = f["get_answers"].get(NOT_FOUND, 0)
    rows += [
        ("", "", "", "", ""),
        (
            "fail-fast",
            "CreatePayment, breaker open: p50 / p99",
            lat(f["create_p50_ms"], f["create_p99_ms"]),
            f"{lat(f['get_p50_ms'], f['get_p99_ms'])} GetPayment unknown id",
            f"{f['ratio_p50']:.2f}x / {f['ratio_p99']:.2f}x GetPayment",
        ),
        (
            "fail-fast",
            "  answers UNAVAILABLE, PROVIDER_UNAVAILABLE",
            f"{unavailable:,} / {f['calls']:,}",
            "all",
            ok(unavailable == f["calls"]),
        ),
        (
            "fail-fast",
            "  GetPayment answers NOT_FOUND",
            f"{not_found:,} / {f['calls']:,}",
            "all",
            ok(not_found == f["calls"]),
        ),
        (
            "fail-fast",
            "  first call (connection refused)",
            ", ".join(s.removeprefix("PAYMENT_STATUS_") for s in f["first_call_status"]),
            "FAILED",
            ok(f["first_call_status"] == ["PAYMENT_STATUS_FAILED"]),
        ),
        (
            "fail-fast",
            "  provider attempts / events stored while open",
            f"{f['provider_attempts_logged'] - f['breaker_opened']} / "
            f"{f['events_stored_while_open']}",
            "0 / 0",
            ok(
                f["provider_attempts_logged"] == f["breaker_opened"]
                and not f["events_stored_while_open"]
            ),
        ),
    ]
    j = summary["rejection"]
    rows += [
        ("", "", "", "", ""),
        (
            "in-process",
            "ResilientProvider.authorize -> CircuitOpen",
            f"{j['resilient_p50_us']:.2f} / {j['resilient_p99_us']:.2f} us",
            f"{j['bare_p50_us']:.2f} / {j['bare_p99_us']:.2f} us raise+except",
            f"{j['ratio_p50']:.1f}x / {j['ratio_p99']:.1f}x raise+except",
        ),
        (
            "in-process",
            "  rejections / calls (inner calls)",
            f"{j['rejected']:,} / {j['calls']:,} ({j['inner_calls']})",
            "all (0)",
            ok(j["rejected"] == j["calls"] and not j["inner_calls"]),
        ),
    ]
    return rows


def cpu_lines(summary: dict[str, Any]) -> list[str]:
    def fmt(cores: dict[str, float], order: list[str]) -> str:
        # "other" is a difference of samples: show a rounding -0.01 as 0
        return ", ".join(f"{k} {max(0.0, cores[k]):.2f}" for k in order if k in cores)

    load_order = ["server", "sandbox", "loadgen", "other", "steal", "machine"]
    lines = [f"CPU cores used in the timed windows (of {os.cpu_count()}; medians):"]
    for variant in VARIANTS:
        s = summary[variant]
        lines.append(
            f"  {variant:10} {fmt(s['cpu_cores'], load_order)};"
            f" server CPU {s['server_cpu_ms_per_call']:.2f} ms per call"
        )
    f = summary["fail_fast"]
    lines.append(
        f"  {'fail-fast':10} {fmt(f['cpu_cores'], ['server', 'client', 'other', 'machine'])};"
        f" server CPU {f['server_cpu_ms_per_pair']:.2f} ms per CreatePayment + GetPayment"
    )
    j = summary["rejection"]
    lines.append(f"  {'in-process':10} {fmt(j['cpu_cores'], ['bench', 'other', 'machine'])}")
    return lines


# --- main ---------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--concurrency", type=int, default=256, help="calls in flight")
    parser.add_argument("--warmup", type=float, help="seconds before each window (2; 1 --quick)")
    parser.add_argument("--duration", type=float, help="timed window, seconds (10; 4 --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s warm-up, 4 s window")
    parser.add_argument("--runs", type=int, default=1, help="bare + resilient pairs; medians")
    parser.add_argument("--server-workers", type=int, default=256, help="gRPC worker threads")
    parser.add_argument("--latency-ms", type=int, default=50, help="sandbox latency fault")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="per-call deadline")
    parser.add_argument("--fail-fast-calls", type=int, default=2000, help="of each kind")
    parser.add_argument("--fail-fast-warmup", type=int, default=100, help="of each kind")
    parser.add_argument("--rejections", type=int, default=100_000, help="in-process calls")
    parser.add_argument("--batch", type=int, default=100, help="in-process calls per timing")
    add_machine_arguments(parser)
    args = parser.parse_args(argv)

    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    duration = args.duration if args.duration is not None else (4.0 if args.quick else 10.0)
    if duration <= 0 or warmup < 0 or args.concurrency < 1 or args.runs < 1:
        parser.error("--duration > 0, --warmup >= 0, --concurrency >= 1, --runs >= 1")
    if args.fail_fast_calls < 1 or args.fail_fast_warmup < 0 or args.latency_ms < 0:
        parser.error("--fail-fast-calls >= 1, --fail-fast-warmup >= 0, --latency-ms >= 0")
    if not 1 <= args.batch <= args.rejections:
        parser.error("1 <= --batch <= --rejections")
    return Options(
        load=LoadOptions(
            backends=("sqlite",),
            concurrency=args.concurrency,
            warmup=warmup,
            duration=duration,
            runs=args.runs,
            commit_threads=0,  # not used here
            server_workers=args.server_workers,
            call_timeout=args.call_timeout,
            postgres_url="",  # not used here
            quiet_threshold=args.quiet_threshold,
            quiet_wait=args.quiet_wait,
            noise_cores=args.noise_cores,
            startup_timeout=args.startup_timeout,
            keep_tmp=args.keep_tmp,
        ),
        latency_ms=args.latency_ms,
        fail_fast_calls=args.fail_fast_calls,
        fail_fast_warmup=args.fail_fast_warmup,
        rejections=args.rejections,
        batch=args.batch,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    command = shlex.join([sys.executable, *sys.argv])
    started = datetime.now(UTC)

    exit_on_sigterm()

    runs: list[dict[str, Any]] = []
    try:
        with scratch_dir(
            "payorch-bench-resilience-", keep=opts.load.keep_tmp, interrupted="processes stopped"
        ) as tmp:
            for i in range(1, opts.load.runs + 1):
                run_dir = tmp / f"run{i}"
                run_dir.mkdir()
                run: dict[str, Any] = {"order": list(VARIANTS), "throughput": {}}
                for variant in VARIANTS:  # bare first, then resilient, in every run
                    print(f"run {i}/{opts.load.runs}: {variant}", file=sys.stderr)
                    run["throughput"][variant] = run_variant(opts, variant, run_dir / variant)
                print(f"run {i}/{opts.load.runs}: fail-fast", file=sys.stderr)
                run["fail_fast"] = fail_fast(opts, run_dir / "fail-fast")
                print(f"run {i}/{opts.load.runs}: in-process rejections", file=sys.stderr)
                run["rejection"] = rejection_cost(opts)
                runs.append(run)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2

    summary = summarize(runs)
    summary["runs"] = [run["order"] for run in runs]
    failed = checks(summary)
    noisy = noise_warnings(runs, opts.load.noise_cores)
    lo = opts.load
    window = f"{lo.warmup:g} s warm-up + {lo.duration:g} s window"
    header = [
        f"$ {command}",
        f"{started:%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} CPUs (load generator and servers"
        f" share them), SQLite, sandbox latency {opts.latency_ms} ms, {window},"
        f" {lo.concurrency} in flight, --grpc-workers {lo.server_workers}, "
        + (f"medians of {lo.runs} runs" if lo.runs > 1 else "1 run"),
        f"fail-fast: {opts.fail_fast_calls:,} calls of each kind from one client;"
        f" in-process: {opts.rejections:,} calls in batches of {opts.batch}",
    ]
    print("\n".join(header))
    print()
    print(render(table(summary, opts)))
    print()
    print("\n".join(cpu_lines(summary)))
    print_verdicts({}, noisy, failed)

    options = asdict(opts)
    options["load"] = {
        k: v
        for k, v in options["load"].items()
        if k not in {"backends", "commit_threads", "postgres_url"}
    }
    body = {"summary": summary, "checks_failed": failed, "noise_warnings": noisy}
    write_results("resilience-", started, command, options, {**body, "runs": runs})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
