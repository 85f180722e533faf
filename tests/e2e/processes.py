"""Running ``payorch serve`` as real processes, to kill and restart them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from orchestrator.api._generated import payments_pb2_grpc

_LISTENING = re.compile(r"payorch gRPC listening on [\d.]+:(\d+)")
_HTTP_LISTENING = re.compile(r"payorch HTTP listening on [\d.]+:(\d+)")


class ServerProcess:
    def __init__(
        self,
        database_url: str,
        sandbox_url: str,
        log_path: Path,
        *,
        config: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        environment = dict(os.environ)
        environment.update(
            PAYORCH_DATABASE_URL=database_url,
            PAYORCH_SANDBOX_URL=sandbox_url,
            PAYORCH_GRPC_LISTEN="127.0.0.1:0",
            PAYORCH_HTTP_LISTEN="127.0.0.1:0",
        )
        if config is not None:
            environment["PAYORCH_CONFIG"] = config
        environment.update(env or {})
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve"],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.port: int | None = None

    def wait_listening(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start:\n{self.log_path.read_text()}")

    def http_port(self) -> int:
        """Once ``wait_listening`` returned: the HTTP side is logged as listening just after."""
        deadline = time.monotonic() + 10
        while (match := _HTTP_LISTENING.search(self.log_path.read_text())) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no HTTP listener:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        return int(match.group(1))

    def stub(self) -> tuple[grpc.Channel, payments_pb2_grpc.PaymentOrchestratorStub]:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return channel, payments_pb2_grpc.PaymentOrchestratorStub(channel)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode
