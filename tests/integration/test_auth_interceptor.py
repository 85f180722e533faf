"""The auth interceptor around handlers that report the caller they run as: real gRPC on
loopback, handlers registered under the payments service's own method names."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from orchestrator.api.auth import PAYMENTS_SERVICE, AuthInterceptor
from orchestrator.api.identity import EVENTS_STREAM, OPERATOR, ROLES, Caller, current_caller
from orchestrator.api.trust import AuthSettings, CallerSpec, hash_token
from tests.e2e.helpers import error_reason


def spec(name: str, token: str, roles: frozenset[str]) -> CallerSpec:
    caller = Caller(name=name, account="shop", roles=roles, scope=name)
    return CallerSpec(caller, token_sha256=(bytes.fromhex(hash_token(token)),))


def _name(request: bytes, context: grpc.ServicerContext) -> bytes:
    return current_caller().name.encode()


def _names(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in range(3):
        yield current_caller().name.encode()


def _codec() -> dict[str, object]:
    return {"request_deserializer": bytes, "response_serializer": bytes}


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    settings = AuthSettings(
        callers=(
            spec("feed", "tok-feed", frozenset({EVENTS_STREAM})),
            spec("ops", "tok-ops", frozenset(ROLES)),
            spec("op-only", "tok-op", frozenset({OPERATOR})),
        )
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1), interceptors=[AuthInterceptor(settings)]
    )
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(PAYMENTS_SERVICE, {
            "StreamEvents": grpc.unary_stream_rpc_method_handler(_names, **_codec()),  # type: ignore[arg-type]
            "GetPayment": grpc.unary_unary_rpc_method_handler(_name, **_codec()),  # type: ignore[arg-type]
            "Shutdown": grpc.unary_unary_rpc_method_handler(_name, **_codec()),  # type: ignore[arg-type]
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(_name, **_codec()),  # type: ignore[arg-type]
        }),
    ])  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(0)


def call(channel: grpc.Channel, method: str, token: str | None = None) -> bytes:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    unary = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
    return bytes(unary(b"", metadata=metadata, timeout=5))


def test_a_stream_runs_every_step_as_its_caller_and_leaves_no_caller_behind(
    channel: grpc.Channel,
) -> None:
    stream = channel.unary_stream(
        f"/{PAYMENTS_SERVICE}/StreamEvents", request_serializer=bytes, response_deserializer=bytes
    )
    metadata = [("authorization", "Bearer tok-feed")]
    assert list(stream(b"", metadata=metadata, timeout=5)) == [b"feed"] * 3
    # The one worker thread that ran the stream now runs an open method: anonymous.
    assert call(channel, "/grpc.health.v1.Health/Check") == b"anonymous"
    assert call(channel, f"/{PAYMENTS_SERVICE}/GetPayment", "tok-ops") == b"ops"


def test_an_unknown_method_of_the_payments_service_is_denied_to_every_caller(
    channel: grpc.Channel,
) -> None:
    for token in ("tok-ops", "tok-op"):
        with pytest.raises(grpc.RpcError) as refused:
            call(channel, f"/{PAYMENTS_SERVICE}/Shutdown", token)
        assert error_reason(refused.value) == (
            grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
        )  # fmt: skip
    with pytest.raises(grpc.RpcError) as refused:
        call(channel, f"/{PAYMENTS_SERVICE}/Shutdown")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
