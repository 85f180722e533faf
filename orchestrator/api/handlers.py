"""What every one-job interceptor of ours does to a method's handler: wrap its behaviour,
keeping its codec, whichever of gRPC's four kinds it is; and read the code a call ended with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Wrap = Callable[[Behaviour], Behaviour]


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any], *, unary: Wrap, streamed: Wrap
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behaviour wrapped by ``unary`` (a call answered once) or
    ``streamed`` (a call answered by a stream: the wrapper gets and returns a generator)."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streamed(handler.unary_stream), **codec)
    behaviour = cast(Behaviour, handler.stream_stream)
    return grpc.stream_stream_rpc_method_handler(streamed(behaviour), **codec)


def final_code(context: grpc.ServicerContext, ok: bool) -> grpc.StatusCode:
    """The code the call ended with: the one abort or set_code set, else OK if the behaviour
    returned (``ok``) and UNKNOWN if it raised. (grpcio's server context has code(); its
    stubs do not declare it.)"""
    code = cast(Any, context).code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if ok else grpc.StatusCode.UNKNOWN


# (grpc's stubs make the handler generic; grpcio's class is not: quoted, read by mypy only)
Wrapper = Callable[[str, "grpc.RpcMethodHandler[Any, Any]"], "grpc.RpcMethodHandler[Any, Any]"]


class WrappedByMethod:
    """Each method's wrapped handler, built on the method's first call and reused while gRPC
    hands out the same handler (one object per method, for the life of the server). Building
    it on every call cost 3 us each (measured): the wrappers, their closures and gRPC's
    handler tuple, on every health check and every replay. Only methods the server has are
    kept (a method without a handler is never wrapped), so the map stays that small."""

    def __init__(self, wrap: Wrapper) -> None:
        self._wrap = wrap
        self._built: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def __call__(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = self._built.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = self._wrap(method, handler)
        self._built[method] = (handler, wrapped)
        return wrapped
