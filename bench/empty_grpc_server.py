"""The ceiling server: PaymentOrchestrator.GetPayment answering an empty Payment at once.

Built like payorch's server (orchestrator/api/server.py): sync ``grpc.server`` on a
``ThreadPoolExecutor`` of 64 workers, ``grpc.so_reuseport`` off, insecure port on loopback.
Only the handler differs: no store, no provider, no conversion. What load generator and
gRPC cost per call on this machine is therefore the most payorch could ever reach.

Prints ``empty gRPC server listening on HOST:PORT`` on stderr and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures

import grpc
from benchlib import stop_event_on_signals

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc


class EmptyServicer(payments_pb2_grpc.PaymentOrchestratorServicer):
    def GetPayment(  # noqa: N802 (gRPC method name)
        self, request: pb.GetPaymentRequest, context: grpc.ServicerContext
    ) -> pb.Payment:
        return pb.Payment()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="port 0 picks a free one")
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args(argv)

    stop = stop_event_on_signals()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="grpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    payments_pb2_grpc.add_PaymentOrchestratorServicer_to_server(EmptyServicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(args.listen)
    if port == 0:
        print(f"could not listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"empty gRPC server listening on {host}:{port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
