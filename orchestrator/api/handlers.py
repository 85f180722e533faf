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
