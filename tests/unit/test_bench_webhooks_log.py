"""bench/webhooks.py reads payorch's log to check that every delivery it posted was stored:
the intake logs one line per batch, so the count is the sum of the lines' counts."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_webhooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("webhooks", "benchlib", "create_payment")
    before = {n: sys.modules.pop(n, None) for n in names}  # bench's, not another "webhooks"
    try:
        yield importlib.import_module("webhooks")
    finally:
        for name, module in before.items():
            sys.modules.pop(name, None)
            if module is not None:
                sys.modules[name] = module


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
