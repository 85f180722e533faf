"""The background workers in a process of their own: ``payorch serve --workers process`` (a
child it starts again when it dies and stops when it drains) and ``--workers none`` beside a
``payorch work`` process on the same store. Real processes, a real sandbox sending signed
webhooks, on PostgreSQL; SQLite, which serves one process, refuses both."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.sandbox import SandboxServer, new_webhook_secret
from orchestrator.application import Payments
from orchestrator.domain.command import command_id, payment_id_for
from orchestrator.domain.payment import Payment
from tests.e2e.conftest import opened_stores
from tests.e2e.helpers import create_request, wait_until
from tests.e2e.processes import ServerProcess

pytestmark = pytest.mark.timeout(120)

_CHILD = re.compile(r"worker process started \(pid (\d+)\)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone too.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def children(server: ServerProcess) -> list[int]:
    return [int(pid) for pid in _CHILD.findall(server.log_path.read_text())]


def webhooks_applied(app: Payments, key: str) -> int:
    """Provider events applied to the payment of ``key`` (read afresh from the store)."""
    payment_id = payment_id_for(command_id("default", key))
    return sum(isinstance(e, Payment.ProviderEventReceived) for e in app.events.get(payment_id))


@pytest.fixture
def secret(sandbox: SandboxServer) -> Iterator[str]:
    value = new_webhook_secret()
    yield value
    sandbox.disable_webhooks()


@pytest.fixture
def store(postgres_url: str, sandbox: SandboxServer) -> Iterator[Callable[[], Payments]]:
    with opened_stores(postgres_url, sandbox.url) as open_store:
        yield open_store


def serve(
    postgres_url: str, sandbox: SandboxServer, secret: str, log: Path, workers: str
) -> ServerProcess:
    server = ServerProcess(
        postgres_url, sandbox.url, log,
        env={"PAYORCH_WORKERS": workers, "PAYORCH_SANDBOX_WEBHOOK_SECRET": secret},
    )  # fmt: skip
    server.wait_listening()
    sandbox.configure_webhooks(
        f"http://127.0.0.1:{server.http_port()}/webhooks/sandbox", secret, initial_delay_ms=20
    )
    return server


@pytest.mark.postgres
def test_a_worker_process_applies_webhooks_is_started_again_and_stops_with_the_server(
    postgres_url: str,
    sandbox: SandboxServer,
    secret: str,
    store: Callable[[], Payments],
    tmp_path: Path,
) -> None:
    server = serve(postgres_url, sandbox, secret, tmp_path / "serve.log", "process")
    reader = store()  # reads events from the store each time: nothing cached
    try:
        channel, stub = server.stub()
        wait_until(lambda: len(children(server)) == 1, 10, "the worker process")
        (first,) = children(server)
        assert first != server.process.pid

        stub.CreatePayment(create_request("w-1"), timeout=10)
        wait_until(lambda: webhooks_applied(reader, "w-1") == 1, 20, "the webhook applied")

        # A worker process that dies is started again, and goes on where it was.
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(children(server)) == 2, 10, "another worker process")
        stub.CreatePayment(create_request("w-2"), timeout=10)
        wait_until(lambda: webhooks_applied(reader, "w-2") == 1, 20, "the next webhook applied")
        channel.close()
    finally:
        code = server.stop()
    log = server.log_path.read_text()
    assert code == 0, log
    second = children(server)[1]
    assert not alive(second), "the worker process outlived the server"
    assert "stopping now" not in log  # one SIGTERM: the child finished its item, unhurried
    assert webhooks_applied(reader, "w-1") == 1  # once, across both worker processes


@pytest.mark.postgres
def test_workers_none_leaves_webhooks_to_a_payorch_work_process_on_the_store(
    postgres_url: str,
    sandbox: SandboxServer,
    secret: str,
    store: Callable[[], Payments],
    tmp_path: Path,
) -> None:
    server = serve(postgres_url, sandbox, secret, tmp_path / "serve.log", "none")
    reader = store()
    work_log = tmp_path / "work.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        channel, stub = server.stub()
        stub.CreatePayment(create_request("n-1"), timeout=10)
        wait_until(lambda: "1 stored" in server.log_path.read_text(), 10, "the webhook stored")
        assert webhooks_applied(reader, "n-1") == 0  # nobody here applies it
        assert children(server) == []

        env = {
            **os.environ,
            "PAYORCH_DATABASE_URL": postgres_url,
            "PAYORCH_SANDBOX_URL": sandbox.url,
        }
        with work_log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "work"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: webhooks_applied(reader, "n-1") == 1, 20, "payorch work applies it")
        channel.close()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(20) == 0, work_log.read_text()
        server.stop()
    assert "stopped" in work_log.read_text()


@pytest.mark.postgres
def test_a_worker_process_stops_when_its_server_is_killed(
    postgres_url: str, sandbox: SandboxServer, secret: str, tmp_path: Path
) -> None:
    server = serve(postgres_url, sandbox, secret, tmp_path / "serve.log", "process")
    try:
        wait_until(lambda: len(children(server)) == 1, 10, "the worker process")
        (child,) = children(server)
        wait_until(lambda: "payorch work:" in server.log_path.read_text(), 20, "it runs")
        server.kill()  # SIGKILL: the server cannot stop its child itself
        wait_until(lambda: not alive(child), 10, "the orphaned worker process to stop")
    finally:
        server.stop()
    assert "the server that started this worker process is gone" in server.log_path.read_text()


def test_payorch_work_without_providers_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "work",
         "--database-url", f"sqlite:///{tmp_path / 'p.db'}"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "payorch work needs the providers: --config or --sandbox-url" in done.stderr


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["serve", "--workers", "process"], "--workers process needs PostgreSQL"),
        (["serve", "--workers", "none"], "--workers none needs PostgreSQL"),
        (["work", "--sandbox-url", "http://127.0.0.1:1"], "payorch work needs PostgreSQL"),
    ],
)
def test_workers_in_another_process_refuse_sqlite(
    command: list[str], says: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env.update(PAYORCH_GRPC_LISTEN="127.0.0.1:0", PAYORCH_HTTP_LISTEN="127.0.0.1:0",
               PAYORCH_SANDBOX_LISTEN="127.0.0.1:0")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *command,
         "--database-url", f"sqlite:///{tmp_path / 'p.db'}"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert not (tmp_path / "p.db").exists()  # nothing was started, nothing written
