"""``payorch serve`` and ``payorch sandbox``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from adapters.sandbox import start_sandbox
from adapters.sandbox.server import run_sandbox
from orchestrator.api.server import create_server
from orchestrator.bootstrap import Settings, build_payments, load_configuration
from orchestrator.recovery import RecoveryWorker

log = logging.getLogger("payorch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="payorch", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the payment orchestrator (gRPC)")
    serve.add_argument("--grpc-listen", help="env PAYORCH_GRPC_LISTEN (127.0.0.1:50051)")
    serve.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    serve.add_argument("--config", help="env PAYORCH_CONFIG: providers and routes (TOML)")
    serve.add_argument("--sandbox-listen", help="env PAYORCH_SANDBOX_LISTEN (127.0.0.1:8181)")
    serve.add_argument("--sandbox-url", help="env PAYORCH_SANDBOX_URL: use a running sandbox")
    serve.add_argument("--grpc-workers", type=int, help="env PAYORCH_GRPC_WORKERS (64)")

    sandbox = commands.add_parser("sandbox", help="run the sandbox payment provider alone")
    sandbox.add_argument("--listen", default="127.0.0.1:8181")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "sandbox":
        run_sandbox(args.listen)
        return 0
    settings = Settings.from_env(
        grpc_listen=args.grpc_listen,
        database_url=args.database_url,
        config=args.config,
        sandbox_listen=args.sandbox_listen,
        sandbox_url=args.sandbox_url,
        grpc_workers=args.grpc_workers,
    )
    return serve_forever(settings)


def serve_forever(settings: Settings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    sandbox = None
    sandbox_url = settings.sandbox_url
    if settings.config is None and sandbox_url is None:
        try:
            sandbox = start_sandbox(settings.sandbox_listen)
        except OSError as e:
            log.error("cannot start the sandbox on %s: %s", settings.sandbox_listen, e)
            return 2
        sandbox_url = sandbox.url
        log.info("sandbox provider (in-process) listening on %s", sandbox_url)
    try:
        config = load_configuration(settings.config, sandbox_url)
        router = config.router
        app = build_payments(
            settings.database_url, router, recovery_schedule=config.recovery.schedule
        )
        server = create_server(settings.grpc_listen, app, max_workers=settings.grpc_workers)
    except Exception as e:  # start-up failures end the process with a message, not a trace
        log.error("cannot start: %s: %s", type(e).__name__, e)
        if sandbox is not None:
            sandbox.stop()
        return 2
    log.info("providers: %s", ", ".join(router.provider_names))
    server.start()
    host = settings.grpc_listen.rsplit(":", 1)[0]
    log.info("payorch gRPC listening on %s:%d", host, server.port)
    recovery = RecoveryWorker(app, interval=config.recovery.interval).start()
    stop.wait()
    server.stop(grace=10)
    recovery.stop()
    app.close()
    if sandbox is not None:
        sandbox.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
