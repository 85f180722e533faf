"""An interceptor's wrapped handler is built once per method, not on every call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from orchestrator.api.auth import PAYMENTS_SERVICE, AuthInterceptor
from orchestrator.api.handlers import WrappedByMethod
from orchestrator.api.identity import ROLES, Caller
from orchestrator.api.trust import AuthSettings, CallerSpec
from orchestrator.metrics import Metrics, MetricsInterceptor

SHOP = CallerSpec(Caller(name="shop", account="shop", roles=ROLES, scope="shop"))


def handler() -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(lambda request, context: request)


def test_a_method_is_wrapped_on_its_first_call_only() -> None:
    built: list[str] = []

    def wrap(method: str, h: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        built.append(method)
        return handler()

    wrapped = WrappedByMethod(wrap)
    create, get = handler(), handler()
    first = wrapped("/s/Create", create)
    assert [wrapped("/s/Create", create) for _ in range(3)] == [first] * 3
    assert wrapped("/s/Get", get) is not first
    assert built == ["/s/Create", "/s/Get"]


def test_a_method_whose_handler_changed_is_wrapped_again() -> None:
    wrapped = WrappedByMethod(lambda method, h: h)
    before, after = handler(), handler()
    assert wrapped("/s/Create", before) is before
    assert wrapped("/s/Create", after) is after


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


@pytest.mark.parametrize(
    "interceptor",
    [
        MetricsInterceptor(Metrics()),
        AuthInterceptor(AuthSettings(callers=(SHOP,))),
    ],
    ids=["metrics", "auth"],
)
def test_each_call_of_a_method_gets_the_handler_wrapped_for_its_first(
    interceptor: grpc.ServerInterceptor,  # type: ignore[type-arg]
) -> None:
    create = handler()
    details = Details(f"/{PAYMENTS_SERVICE}/CreatePayment")
    first = interceptor.intercept_service(lambda d: create, details)
    assert first is not create
    again = [interceptor.intercept_service(lambda d: create, details) for _ in range(3)]
    assert again == [first] * 3
