"""The benchmarks' own arithmetic (bench/), checked on made-up figures: what they read from
payorch's log, and the ceilings they derive from the CPU a run measured."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """bench/ importable, and its modules forgotten afterwards (bench's ``webhooks``, not
    another)."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("webhooks", "benchlib", "create_payment")
    before = {n: sys.modules.pop(n, None) for n in names}
    try:
        yield
    finally:
        for name, module in before.items():
            sys.modules.pop(name, None)
            if module is not None:
                sys.modules[name] = module


@pytest.fixture
def bench_webhooks(bench: None) -> ModuleType:
    return importlib.import_module("webhooks")


@pytest.fixture
def bench_create(bench: None) -> ModuleType:
    return importlib.import_module("create_payment")


def test_the_deliveries_logged_stored_are_summed_over_batch_lines(
    bench_webhooks: ModuleType, tmp_path: Path
) -> None:
    log = tmp_path / "payorch.log"
    log.write_text(
        "2026-12-07 23:20:26,001 INFO payorch.webhooks webhook sandbox: 128 stored,"
        " 0 duplicate(s), verified by sandbox\n"
        "2026-12-07 23:20:26,002 INFO payorch.webhooks webhook sandbox: 1 stored,"
        " 2 duplicate(s), verified by sandbox\n"
        "2026-12-07 23:20:26,003 INFO payorch.webhooks webhook stripe: 5 stored,"
        " 0 duplicate(s), verified by stripe\n"
    )
    assert bench_webhooks.read_log(log, "backlog", 0.0)["stored_logged"] == 129


def test_the_cpu_bound_is_the_acks_one_core_takes_and_the_latency_they_imply(
    bench_webhooks: ModuleType,
) -> None:
    # 2,000 acks/s while payorch serve used 0.8 of a core: 0.4 ms per ack, 2,500/s at most.
    ack = {"rps": 2000.0, "cpu_cores": {"server": 0.8, "loadgen": 0.2}}
    row = bench_webhooks.cpu_bound(ack, 200, "postgres")
    assert row[2] == "2,500.0"
    assert row[3] == "0.40 ms per ack"
    # 200 in flight at 2,500/s wait 80 ms on average; a 50 ms p99 needs 0.25 ms per ack.
    assert row[4] == "mean >= 80 ms at 200 in flight; p99 <= 50 ms needs < 0.25 ms"


def test_creates_given_the_checks_cpu_reach_at_most_a_checks_cost_over_a_creates(
    bench_create: ModuleType,
) -> None:
    health = {"rps": 4000.0, "cpu_cores": {"server": 1.0}}  # 0.25 ms per check
    create = {"rps": 400.0, "cpu_cores": {"server": 1.2}}  # 3.00 ms per create
    assert bench_create.cpu_bound(health, create, 0.20) == (
        "bound by CPU: 3.00 ms of server CPU per create, 0.25 per health check;"
        " with the CPU the checks had, at most 0.08 of them; 0.20 needs <= 1.25 ms per create"
    )
