"""Building the gRPC server, separate from running it (tests bind port 0)."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orchestrator.api._generated import payments_pb2, payments_pb2_grpc
from orchestrator.api.servicer import PaymentOrchestratorServicer
from orchestrator.application import Payments

SERVICE_NAME = payments_pb2.DESCRIPTOR.services_by_name["PaymentOrchestrator"].full_name


class PaymentServer:
    """The gRPC server with the payments service, health and reflection."""

    def __init__(self, server: grpc.Server, port: int, health: health.HealthServicer) -> None:
        self.server, self.port, self.health = server, port, health
        self.started = False

    def start(self) -> None:
        self.server.start()
        self.started = True
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """Stops taking new calls at once and lets calls in flight finish within ``grace``."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def create_server(address: str, app: Payments, *, max_workers: int = 64) -> PaymentServer:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    payments_pb2_grpc.add_PaymentOrchestratorServicer_to_server(  # type: ignore[no-untyped-call]
        PaymentOrchestratorServicer(app), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    return PaymentServer(server, port, health_servicer)
