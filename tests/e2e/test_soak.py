"""The fault soak: 1,000 payments against a sandbox that fails 20% of calls before processing,
hangs 10% past our timeout and loses 10% of its answers after processing. Once recovery is
done, every payment is definite, none has more than one authorization in the ledger, and each
status agrees with the ledger. Run with -s to see the counts."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from adapters.sandbox import SandboxServer
from tests.e2e.conftest import ServerFactory
from tests.e2e.processes import ServerProcess
from tests.e2e.soak import run_soak

pytestmark = pytest.mark.timeout(300)
PAYMENTS = 1000
FAULTS = {
    "error_rate": 0.2,
    "timeout_rate": 0.1,
    "drop_after_processing_rate": 0.1,
    "hang_ms": 1200,
    "seed": 20261126,
}


def config(sandbox_url: str, honors: bool) -> str:
    return f"""
[providers.sandbox]
type = "sandbox"
base_url = "{sandbox_url}"
honors_idempotency_keys = {str(honors).lower()}
timeout = 1.0
attempt_timeout = 0.3
[providers.sandbox.retry]
base = 0.02
max = 0.2
max_attempts = 4
[providers.sandbox.breaker]
failure_threshold = 20
open_seconds = 0.3
half_open_trials = 2
[routes]
"*" = ["sandbox"]
[recovery]
schedule = [0.3, 0.6, 1.2, 2.4, 4.8, 9.6]
interval = 0.2
"""


@pytest.mark.parametrize("honor", [True, False], ids=["honors-keys", "ignores-keys"])
def test_fault_soak_ends_with_every_payment_definite_and_charged_at_most_once(
    serve: ServerFactory, sandbox: SandboxServer, honor: bool
) -> None:
    httpx.put(f"{sandbox.url}/_sandbox/faults", json={**FAULTS, "honor_idempotency": honor})
    running = serve(config(sandbox.url, honor), worker=True)
    report = run_soak(lambda: running.stub, sandbox.url, payments=PAYMENTS)
    stats = running.app.router.route("sandbox").provider.stats.snapshot()  # type: ignore[attr-defined]
    print(f"\nsoak honor_idempotency={honor}", *report.lines(), f"resilient layer: {stats}",
          f"recovery: {running.app.recovery_stats.snapshot()}", sep="\n  ")  # fmt: skip
    assert report.problems == []
    assert report.max_authorizations_per_payment == 1
    assert report.events["OutcomeUnknown"] > 0  # the faults really left payments in doubt
    assert stats["retries"] > 0


def test_fault_soak_survives_kill_9_of_the_server_midway(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    httpx.put(f"{sandbox.url}/_sandbox/faults", json={**FAULTS, "honor_idempotency": True})
    path = tmp_path / "providers.toml"
    path.write_text(config(sandbox.url, True))
    servers = [ServerProcess(database_url, sandbox.url, tmp_path / "s0.log", config=str(path))]
    servers[0].wait_listening()
    current = {"stub": servers[0].stub()[1]}
    killed = threading.Event()

    def maybe_kill(done: int) -> None:
        if done >= PAYMENTS // 2 and not killed.is_set():
            killed.set()
            servers[0].process.send_signal(signal.SIGKILL)

    def restart_when_killed() -> None:
        killed.wait(300)
        servers[0].kill()
        time.sleep(0.5)
        fresh = ServerProcess(database_url, sandbox.url, tmp_path / "s1.log", config=str(path))
        fresh.wait_listening()
        servers.append(fresh)
        current["stub"] = fresh.stub()[1]

    restarter = threading.Thread(target=restart_when_killed, daemon=True)
    restarter.start()
    try:
        report = run_soak(
            lambda: current["stub"], sandbox.url, payments=PAYMENTS, on_progress=maybe_kill
        )
        restarter.join(60)
        print("\nsoak with kill -9 midway", *report.lines(), sep="\n  ")
    finally:
        for server in servers[1:]:
            server.stop()
    assert killed.is_set() and len(servers) == 2
    assert report.problems == []
    assert report.max_authorizations_per_payment == 1
    assert report.client_retries > 0  # calls in flight at the kill were retried with their keys
