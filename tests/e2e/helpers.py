"""Small helpers for reading gRPC answers in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orchestrator.api._generated import payments_pb2 as pb

if TYPE_CHECKING:
    from adapters.sandbox import SandboxServer


def error_reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and the ErrorInfo reason of a failed call (exactly one ErrorInfo)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error}"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {len(infos)}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == "payorch.payments.v1"
    return error.code(), info.reason  # type: ignore[attr-defined]


def retry_delay(error: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def create_request(key: str, amount: int = 1000, **fields: object) -> pb.CreatePaymentRequest:
    values: dict[str, object] = {
        "idempotency_key": key,
        "amount": amount,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "region": "US",
        "capture_mode": pb.CAPTURE_MODE_MANUAL,
        "reference": "order-1",
    }
    values.update(fields)
    return pb.CreatePaymentRequest(**values)  # type: ignore[arg-type]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(every)


def wait_at_the_sandbox(sandbox: SandboxServer, arrived_before: int, count: int = 1) -> None:
    """Until ``count`` more money requests than ``arrived_before`` reached the sandbox. A
    test that kills or stops a server mid-call waits for this, not for the payment's intent:
    between the intent's commit and the request's sending, a loaded machine can take long
    enough that the provider never gets the request."""
    wait_until(lambda: sandbox.state.arrived >= arrived_before + count, 10, "the sandbox")
