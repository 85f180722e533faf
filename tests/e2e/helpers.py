"""Small helpers for reading gRPC answers in tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orchestrator.api._generated import payments_pb2 as pb


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
