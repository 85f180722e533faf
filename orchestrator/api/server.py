"""Building the gRPC server, separate from running it (tests bind port 0)."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orchestrator.api._generated import payments_pb2, payments_pb2_grpc
from orchestrator.api.auth import AuthInterceptor
from orchestrator.api.servicer import PaymentOrchestratorServicer
from orchestrator.api.trust import MAX_MESSAGE_BYTES, AuthSettings, TlsSettings
from orchestrator.application import Payments
from orchestrator.metrics import Metrics
from orchestrator.tracing import Tracing

SERVICE_NAME = payments_pb2.DESCRIPTOR.services_by_name["PaymentOrchestrator"].full_name
# Calls served at once. One process runs Python on about one core, so more threads than the
# work needs only queue on the GIL and the store (bench/create_payment.py, 2 cores, 64 callers:
# 16 workers against 64 gave as many creates and replays per second, 1.3-1.5x instead of
# 2.3x p99 over p50, and a 1.4-1.7x higher health-check rate). Each call waiting on a
# provider holds a worker: with slow providers, raise it (--grpc-workers).
DEFAULT_WORKERS = 16


class PaymentServer:
    """The gRPC server with the payments service, health and reflection."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health: health.HealthServicer,
        token_port: int | None = None,
    ) -> None:
        self.server, self.port, self.health = server, port, health
        self.token_port = token_port  # [grpc.tls] token_listen's, if configured
        self.started = False
        self.draining = False

    def start(self) -> None:
        self.server.start()
        self.started = True
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def serving(self) -> bool:
        return self.started and not self.draining

    def stop_serving(self) -> None:
        """The first step of a drain: health checks answer NOT_SERVING from now on, so load
        balancers stop routing here, while calls are still taken (the health checks among
        them, which a stopped server could not answer)."""
        self.draining = True
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float) -> None:
        """Stops taking new calls at once and lets calls in flight finish within ``grace``."""
        self.stop_serving()
        self.server.stop(grace).wait()


def create_server(
    address: str,
    app: Payments,
    *,
    max_workers: int = DEFAULT_WORKERS,
    tls: TlsSettings | None = None,
    auth: AuthSettings | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> PaymentServer:
    """``tls``: listen with TLS (client certificates required when it names a client CA);
    ``auth``: authenticate every call (no interceptor at all without it); ``metrics``: count
    and time every call (so refused calls count too); ``tracing``: a server span per call,
    outermost, so the time and log lines of metrics and auth fall inside it."""
    max_message = auth.max_message_bytes if auth is not None else MAX_MESSAGE_BYTES
    interceptors: list[grpc.ServerInterceptor] = []  # type: ignore[type-arg]
    if tracing is not None:
        interceptors.append(tracing.interceptor())
    if metrics is not None:
        interceptors.append(metrics.interceptor())
    if auth is not None:
        interceptors.append(AuthInterceptor(auth))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors or None,
        # A bigger message is refused (RESOURCE_EXHAUSTED) before it is parsed.
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", max_message)],
    )
    payments_pb2_grpc.add_PaymentOrchestratorServicer_to_server(  # type: ignore[no-untyped-call]
        PaymentOrchestratorServicer(app), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if auth is None or auth.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
    if port == 0:
        raise OSError(f"could not listen on {address}")
    token_port = None
    if tls is not None and tls.token_listen is not None:
        token_port = server.add_secure_port(tls.token_listen, token_credentials(tls))
        if token_port == 0:
            raise OSError(f"could not listen on {tls.token_listen}")
    return PaymentServer(server, port, health_servicer, token_port)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """With a client CA, every connection must present a certificate it signed, valid now.
    grpcio offers no "request but do not require": without the CA, none is asked for."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


def token_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """``token_listen``'s: the server's certificate, no client certificate asked for; the
    interceptor then accepts only bearer tokens there, as no certificate names anyone."""
    return grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)])
