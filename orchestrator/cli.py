"""``payorch serve``, ``payorch work``, ``payorch sandbox``, ``payorch audit`` and
``payorch admin``."""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from uuid import UUID

from adapters.sandbox import new_webhook_secret, start_sandbox
from adapters.sandbox.server import run_sandbox
from orchestrator.accounts import DEFAULT_ACCOUNT
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.api.trust import exposure, hash_token
from orchestrator.application import Payments
from orchestrator.audit.chain import KEY_VARIABLE, ChainedRecorder, chain_key
from orchestrator.audit.export import FORMATS, TimeWindow, export, parse_instant
from orchestrator.audit.progress import Progress, terminal
from orchestrator.audit.reconcile import our_movements, reconcile, render
from orchestrator.audit.show import timeline
from orchestrator.audit.statements import STATEMENT_READERS, StatementError
from orchestrator.audit.verify import parse_head, verify
from orchestrator.background import MODES as WORKER_MODES
from orchestrator.background import Stoppable, WorkerProcess, watch_parent, work_command
from orchestrator.bootstrap import (
    Configuration,
    Settings,
    build_payments,
    load_configuration,
    sandbox_webhook_secret_from_env,
    warn_of_webhooks_without_secret,
    webhook_verifiers,
)
from orchestrator.commands import ResolvePayment
from orchestrator.domain.errors import DomainError, InvalidArgument, PaymentNotFound
from orchestrator.domain.payment import Status
from orchestrator.encryption import KEYS_VARIABLE, encryption_configured, missing_key
from orchestrator.listing import ListingProjector, rebuild
from orchestrator.logs import FORMATS as LOG_FORMATS
from orchestrator.logs import configure as configure_logging
from orchestrator.metrics import Metrics, StateCollector
from orchestrator.metrics import enabled as metrics_enabled
from orchestrator.recovery import RecoveryWorker
from orchestrator.resilience.breaker import State
from orchestrator.routing import Router
from orchestrator.secrets import Secret
from orchestrator.store import parse_database_url
from orchestrator.tracing import Tracing, TracingSettingsError
from orchestrator.tracing import configure as configure_tracing
from orchestrator.webhooks.http import HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from orchestrator.webhooks.processor import WebhookProcessor

log = logging.getLogger("payorch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="payorch", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("PAYORCH_LOG_FORMAT") or "text",
        help="env PAYORCH_LOG_FORMAT (text): json is one JSON object a line",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the payment orchestrator (gRPC)")
    serve.add_argument("--grpc-listen", help="env PAYORCH_GRPC_LISTEN (127.0.0.1:50051)")
    serve.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    serve.add_argument("--config", help="env PAYORCH_CONFIG: providers and routes (TOML)")
    serve.add_argument("--sandbox-listen", help="env PAYORCH_SANDBOX_LISTEN (127.0.0.1:8181)")
    serve.add_argument("--sandbox-url", help="env PAYORCH_SANDBOX_URL: use a running sandbox")
    serve.add_argument("--grpc-workers", type=int, help="env PAYORCH_GRPC_WORKERS (16)")
    serve.add_argument(
        "--http-listen", help="env PAYORCH_HTTP_LISTEN (127.0.0.1:8080): webhooks and health"
    )
    serve.add_argument(
        "--webhook-max-body", type=int, help="env PAYORCH_WEBHOOK_MAX_BODY (1048576 bytes)"
    )
    serve.add_argument(
        "--drain-grace",
        type=float,
        help="env PAYORCH_DRAIN_GRACE (20 seconds): on SIGTERM, how long calls in flight may "
        "take to end and record their outcome",
    )
    serve.add_argument(
        "--workers",
        choices=WORKER_MODES,
        help="env PAYORCH_WORKERS (here): where recovery, the webhook consumer and the listing "
        "run: here (threads of this process), process (a payorch work child of it), none "
        "(payorch work runs elsewhere on this store)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="listen off loopback even without TLS and caller authentication (logs a warning)",
    )

    _add_work_command(commands)
    sandbox = commands.add_parser("sandbox", help="run the sandbox payment provider alone")
    sandbox.add_argument("--listen", default="127.0.0.1:8181")
    sandbox.add_argument(
        "--webhook-url",
        help="send signed webhooks there (secret: env PAYORCH_SANDBOX_WEBHOOK_SECRET or _FILE)",
    )

    _add_audit_commands(commands)
    admin = commands.add_parser("admin", help="operator tools that change derived state")
    admin_actions = admin.add_subparsers(dest="admin_command", required=True)
    for name, text in (
        ("rebuild-listing", "forget the payment listing and build it again from the event log"),
        ("listing-status", "how far the payment listing is behind the event log"),
    ):
        action = admin_actions.add_parser(name, help=text)
        action.add_argument("--database-url", help="env PAYORCH_DATABASE_URL")
    _add_operator_commands(admin_actions)
    auth = commands.add_parser("auth", help="caller authentication helpers")
    auth_actions = auth.add_subparsers(dest="auth_command", required=True)
    auth_actions.add_parser(
        "hash-token", help="read a token on stdin, print the token_sha256 to configure for it"
    )

    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:  # from the environment: argparse checks the flag
        parser.error(f"PAYORCH_LOG_FORMAT: choose from {', '.join(LOG_FORMATS)}")
    configure_logging(args.log_level, args.log_format)
    if args.command == "audit":
        return run_audit(args)
    if args.command == "admin":
        return run_admin(args)
    if args.command == "auth":
        return hash_token_from_stdin()
    if args.command == "sandbox":
        return _sandbox(args)
    try:
        settings = _work_settings(args) if args.command == "work" else _serve_settings(args)
    except ValueError as e:
        parser.error(str(e))
    if args.command == "work":
        return work_forever(settings, http_listen=args.http_listen)
    return serve_forever(settings, log_options=(args.log_level, args.log_format))


def _sandbox(args: argparse.Namespace) -> int:
    secret = sandbox_webhook_secret_from_env() if args.webhook_url else None
    if args.webhook_url and secret is None:
        log.error("--webhook-url needs PAYORCH_SANDBOX_WEBHOOK_SECRET or _FILE")
        return 2
    run_sandbox(
        args.listen,
        webhook_url=args.webhook_url,
        webhook_secret=secret.reveal() if secret is not None else None,
    )
    return 0


def _add_work_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    work = commands.add_parser(
        "work", help="run the background workers alone (beside payorch serve --workers none)"
    )
    work.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    work.add_argument("--config", help="env PAYORCH_CONFIG: providers and routes (TOML)")
    work.add_argument("--sandbox-url", help="env PAYORCH_SANDBOX_URL: the sandbox provider")
    work.add_argument(
        "--http-listen", help="serve /healthz, /readyz and /metrics there (default: not at all)"
    )
    work.add_argument(
        "--drain-grace",
        type=float,
        help="env PAYORCH_DRAIN_GRACE (20 seconds): on SIGTERM, "
        "how long the item each worker is on may take to end",
    )


def _check_drain_grace(args: argparse.Namespace) -> None:
    if args.drain_grace is not None and not 0 <= args.drain_grace < float("inf"):
        raise ValueError("--drain-grace must be a number of seconds >= 0")


def _serve_settings(args: argparse.Namespace) -> Settings:
    _check_drain_grace(args)
    return Settings.from_env(
        grpc_listen=args.grpc_listen,
        database_url=args.database_url,
        config=args.config,
        sandbox_listen=args.sandbox_listen,
        sandbox_url=args.sandbox_url,
        grpc_workers=args.grpc_workers,
        http_listen=args.http_listen,
        webhook_max_body=args.webhook_max_body,
        insecure=args.insecure or None,
        drain_grace=args.drain_grace,
        workers=args.workers,
    )


def _work_settings(args: argparse.Namespace) -> Settings:
    _check_drain_grace(args)
    settings = Settings.from_env(
        database_url=args.database_url,
        config=args.config,
        sandbox_url=args.sandbox_url,
        drain_grace=args.drain_grace,
    )
    if settings.config is None and settings.sandbox_url is None:
        raise ValueError("payorch work needs the providers: --config or --sandbox-url")
    return settings


def _add_operator_commands(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    resolve = actions.add_parser(
        "resolve", help="record what the provider's dashboard shows for a payment in review"
    )
    resolve.add_argument("payment_id")
    resolve.add_argument("--outcome", required=True, choices=OUTCOMES)
    resolve.add_argument("--note", required=True, help="what you saw (kept in the audit trail)")
    resolve.add_argument(
        "--operation", type=int, default=0, help="its sequence (default: in doubt)"
    )
    resolve.add_argument("--provider-reference", default="", help="the charge's id, if shown")
    resolve.add_argument("--operator", help="who you are (default: cli:<os user>)")
    resolve.add_argument(
        "--idempotency-key", help="default: derived from the payment and operation"
    )
    unmatched = actions.add_parser("unmatched", help="list webhook deliveries left unmatched")
    retry = actions.add_parser("retry-unmatched", help="re-try one unmatched webhook delivery")
    retry.add_argument("delivery_id")
    for action in (resolve, unmatched, retry):
        action.add_argument("--database-url", help="env PAYORCH_DATABASE_URL")


OUTCOMES = ("authorized", "captured", "declined", "not-found", "canceled", "refunded")


def hash_token_from_stdin() -> int:
    """The token is read from stdin, so it never reaches a command line or a shell history."""
    token = sys.stdin.readline().strip()
    if not token:
        print("payorch auth hash-token: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def _add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="read the payment event log (read-only)")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    export = actions.add_parser(
        "export", help="every payment event, in commit order, to a file or standard output"
    )
    export.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    export.add_argument("--since", type=_instant, help="ISO 8601, inclusive (UTC if no offset)")
    export.add_argument("--until", type=_instant, help="ISO 8601, exclusive (UTC if no offset)")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument(
        "--out", required=True, help="a file, written atomically; - for standard output"
    )
    export.add_argument("--quiet", action="store_true", help="no progress counter")
    verify = actions.add_parser(
        "verify", help="check the log's chain and every payment's money; exit 1 on any finding"
    )
    verify.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    verify.add_argument(
        "--expect-head", type=_head, help="SEQ:HASH a previous verify printed: detects a cut"
    )
    show = actions.add_parser("show", help="one payment's events and its current state")
    show.add_argument("payment_id")
    show.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")
    reconcile = actions.add_parser(
        "reconcile", help="our money movements against a provider's statement"
    )
    reconcile.add_argument(
        "--provider", required=True, help=f"whose statement: {' or '.join(STATEMENT_READERS)}"
    )
    reconcile.add_argument(
        "--statement", required=True, type=Path,
        help="sandbox: its GET /_sandbox/ledger JSON; stripe: a balance transactions CSV",
    )  # fmt: skip
    reconcile.add_argument("--database-url", help="env PAYORCH_DATABASE_URL (sqlite:///payorch.db)")


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _head(text: str) -> tuple[int, bytes]:
    try:
        return parse_head(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_audit(args: argparse.Namespace) -> int:
    database_url = Settings.from_env(database_url=args.database_url).database_url
    try:
        app = _read_only_payments(database_url)
    except (OSError, ValueError) as e:
        print(f"payorch audit: cannot open the event store: {e}", file=sys.stderr)
        return 2
    try:
        if args.audit_command == "export":
            return _export(app, args)
        if args.audit_command == "verify":
            return _verify(app, args.expect_head)
        if args.audit_command == "reconcile":
            return _reconcile(app, args.provider, args.statement)
        return _show(app, args.payment_id)
    except Exception as e:
        if (missing := missing_key(e)) is None:
            raise
        print(f"payorch audit {args.audit_command}: {missing}", file=sys.stderr)
        return 2
    finally:
        app.close()


def run_admin(args: argparse.Namespace) -> int:
    database_url = Settings.from_env(database_url=args.database_url).database_url
    try:
        app = _read_only_payments(database_url)
    except (OSError, ValueError) as e:
        print(f"payorch admin: cannot open the event store: {e}", file=sys.stderr)
        return 2
    try:
        if args.admin_command in OPERATOR_COMMANDS:
            return OPERATOR_COMMANDS[args.admin_command](app, args)
        if args.admin_command == "rebuild-listing":
            started = time.monotonic()
            rebuild(app)
            print(f"rebuilt the payment listing: {len(app.listing.rows()):,} payments, "
                  f"log position {app.listing.position()}, "
                  f"{time.monotonic() - started:.1f} s")  # fmt: skip
            return 0
        app.listing.create_table()
        print(f"payment listing at log position {app.listing.position()}, "
              f"{app.listing.lag()} behind the log's head")  # fmt: skip
        return 0
    finally:
        app.close()


def _resolve(app: Payments, args: argparse.Namespace) -> int:
    operator = args.operator or f"cli:{getpass.getuser()}"
    try:
        payment = app.get_payment(args.payment_id)
        # The operation in doubt is the last one; once resolved, running the same command
        # again names the same operation and key, so it replays instead of acting twice.
        sequence = args.operation or len(payment.operations)
        key = args.idempotency_key or f"resolve:{payment.id}:{sequence}"
        command = ResolvePayment(
            idempotency_key=key,
            payment_id=args.payment_id,
            outcome=args.outcome,
            note=args.note,
            operation=sequence,
            provider_reference=args.provider_reference,
        )
        payment = app.resolve_payment(command, scope=f"operator:{operator}", operator=operator)
    except DomainError as e:
        print(f"payorch admin resolve: refused ({e.reason}): {e.message}", file=sys.stderr)
        return 1
    print(f"payment {payment.id}: {payment.status.value} (resolved by {operator})")
    return 0


def _list_unmatched(app: Payments, args: argparse.Namespace) -> int:
    deliveries = WebhookProcessor(app).unmatched()
    for d in deliveries:
        print(f"{d.id}  {d.verified_by}  {d.event_id}  {d.kind}  "
              f"payment={d.payment_id or '-'} reference={d.provider_reference or '-'}  "
              f"{d.unmatched_reason}")  # fmt: skip
    print(f"{len(deliveries)} unmatched deliver{'y' if len(deliveries) == 1 else 'ies'}",
          file=sys.stderr)  # fmt: skip
    return 0


def _retry_unmatched(app: Payments, args: argparse.Namespace) -> int:
    try:
        effect = WebhookProcessor(app).retry(UUID(args.delivery_id))
    except (ValueError, KeyError):
        print(f"payorch admin retry-unmatched: no delivery {args.delivery_id!r}", file=sys.stderr)
        return 1
    print(f"{args.delivery_id}: {effect}")
    return 1 if effect.startswith("unmatched") else 0


OPERATOR_COMMANDS = {
    "resolve": _resolve,
    "unmatched": _list_unmatched,
    "retry-unmatched": _retry_unmatched,
}


def _read_only_payments(database_url: str) -> Payments:
    """The application without providers: audit commands read, they never call anyone."""
    store = parse_database_url(database_url)
    path = store.env.get("SQLITE_DBNAME", ":memory:")
    # Opening a missing SQLite file would create an empty store and report nothing.
    if store.kind == "sqlite" and path != ":memory:" and not Path(path).exists():
        raise FileNotFoundError(f"no SQLite event store at {path}")
    return build_payments(database_url, Router({}, {}))


def _export(app: Payments, args: argparse.Namespace) -> int:
    window = TimeWindow(args.since, args.until)
    if window.since is not None and window.until is not None and window.since >= window.until:
        print("payorch audit export: --since must be before --until", file=sys.stderr)
        return 2
    to_stdout = args.out == "-"
    out = sys.stdout if to_stdout else Path(args.out)
    try:
        summary = export(app, out, fmt=args.format, window=window, progress=terminal(args.quiet))
    except BrokenPipeError:
        # The reader stopped reading (``| head``): end quietly, as Unix tools do, and keep
        # the interpreter from failing again when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    where = "standard output" if to_stdout else args.out
    print(f"wrote {summary.events:,} events to {where} in {summary.seconds:.1f} s",
          file=sys.stderr)  # fmt: skip
    return 0


def _verify(app: Payments, expect_head: tuple[int, bytes] | None) -> int:
    """0: nothing found; 1: findings, each named."""
    if not isinstance(app.recorder, ChainedRecorder):
        print("payorch audit verify: this store keeps no chain", file=sys.stderr)
        return 2
    report = verify(app.recorder, app.mapper, expect_head=expect_head, progress=terminal())
    print("\n".join(report.lines()))
    return 0 if report.clean else 1


def _show(app: Payments, payment_id: str) -> int:
    try:
        lines = timeline(app, payment_id)
    except (PaymentNotFound, InvalidArgument):
        print(f"payorch audit show: no payment {payment_id!r}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _reconcile(app: Payments, provider: str, statement: Path) -> int:
    """0: everything matches; 1: findings; 2: the statement cannot be read."""
    read = STATEMENT_READERS.get(provider)
    if read is None:
        known = " or ".join(STATEMENT_READERS)
        print(f"payorch audit reconcile: no statement format for provider {provider!r}: "
              f"use {known}", file=sys.stderr)  # fmt: skip
        return 2
    try:
        theirs = read(statement)
    except OSError as e:
        print(f"payorch audit reconcile: cannot read {statement}: {e.strerror or e}",
              file=sys.stderr)  # fmt: skip
        return 2
    except StatementError as e:
        print(f"payorch audit reconcile: {e}", file=sys.stderr)
        return 2
    meter = Progress(
        int(app.recorder.max_notification_id() or 0), terminal(), label="reading the log"
    )
    report = reconcile(our_movements(app, provider, on_page=meter.update), theirs,
                       provider=provider)  # fmt: skip
    meter.close()
    print("\n".join(render(report, str(statement))))
    return 1 if report.findings else 0


def _on_signals(grace: float) -> tuple[threading.Event, threading.Event]:
    """(stop, now): SIGTERM or SIGINT sets ``stop`` (drain), a second one ``now`` (do not
    wait for calls in flight any longer)."""
    stop, now = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("received %s again: stopping now", name)
            now.set()
            return
        log.info("received %s, draining for up to %g s (send it again to stop now)",
                 name, grace)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop, now


def serve_forever(settings: Settings, *, log_options: tuple[str, str] = ("INFO", "text")) -> int:
    """``log_options``: the log level and format, for a worker process (``--workers``)."""
    try:
        # Before any provider client is made: its calls are traced from the first one.
        tracing = configure_tracing()
    except TracingSettingsError as e:
        log.error("cannot start: %s", e)
        return 2
    try:
        return _serve(settings, tracing, log_options)
    finally:
        if tracing is not None:
            tracing.shutdown()  # exports the spans still queued


def _serve(settings: Settings, tracing: Tracing | None, log_options: tuple[str, str]) -> int:
    if settings.workers != "here" and not _shared_store(settings.database_url):
        log.error("cannot start: --workers %s needs PostgreSQL (SQLite serves one process)",
                  settings.workers)  # fmt: skip
        return 2
    stop, now = _on_signals(settings.drain_grace)
    _warn_of_missing_keys()
    sandbox = None
    sandbox_url = settings.sandbox_url
    webhook_secret = sandbox_webhook_secret_from_env()
    if settings.config is None and sandbox_url is None:
        try:
            sandbox = start_sandbox(settings.sandbox_listen)
        except OSError as e:
            log.error("cannot start the sandbox on %s: %s", settings.sandbox_listen, e)
            return 2
        sandbox_url = sandbox.url
        webhook_secret = Secret(new_webhook_secret(), "generated for the in-process sandbox")
        log.info("sandbox provider (in-process) listening on %s", sandbox_url)
    metrics = Metrics() if metrics_enabled() else None
    try:
        config = check_listen(
            settings,
            load_configuration(
                settings.config, sandbox_url, sandbox_webhook_secret=webhook_secret,
                metrics=metrics,
            ),
        )  # fmt: skip
        app = _payments(settings, config)
        server = create_server(
            settings.grpc_listen, app, max_workers=settings.grpc_workers, tls=config.tls,
            auth=config.auth, metrics=metrics, tracing=tracing,
        )  # fmt: skip
        intake = WebhookIntake(app, webhook_verifiers(config.router))
        http = HttpServer(
            settings.http_listen,
            intake,
            ready=lambda: _ready(app, server),
            max_body=settings.webhook_max_body,
            metrics=metrics,
        )
    except Exception as e:  # start-up failures end the process with a message, not a trace
        log.error("cannot start: %s: %s", type(e).__name__, e)
        if sandbox is not None:
            sandbox.stop()
        return 2
    log.info("providers: %s", ", ".join(config.router.provider_names))

    warn_of_webhooks_without_secret(config)
    server.start()
    http.start()
    http_host = settings.http_listen.rsplit(":", 1)[0]
    _log_listening(settings, config, server)
    log.info("payorch HTTP listening on %s:%d (webhooks: %s)", http_host, http.port,
             ", ".join(f"/webhooks/{k}" for k in sorted(intake.verifiers)) or "none")  # fmt: skip
    if sandbox is not None and webhook_secret is not None:
        sandbox.configure_webhooks(
            f"http://{http_host}:{http.port}/webhooks/sandbox", webhook_secret.reveal()
        )
    workers = _start_workers(
        app, config=config, metrics=metrics, settings=settings, sandbox_url=sandbox_url,
        log_options=log_options,
    )  # fmt: skip
    stop.wait()
    left = drain(app, server, http=http, workers=workers, grace=settings.drain_grace, now=now)
    if left:
        # Their threads cannot be stopped, and the interpreter would wait for them at exit:
        # end the process now. Each one's intent is recorded, its outcome is not: in doubt,
        # as after a crash, and recovery (here or on another replica) asks the provider.
        log.warning("drain: %d command(s) still in flight left in doubt, for recovery", left)
        if tracing is not None:
            tracing.shutdown()  # os._exit skips serve_forever's own
        logging.shutdown()
        os._exit(0)
    app.close()
    if sandbox is not None:
        sandbox.stop()
    log.info("stopped")
    return 0


# After the commands, the other calls still running (reads; a followed StreamEvents never
# ends by itself) get this long before gRPC cancels them.
_CALLS_GRACE = 1.0


def drain(
    app: Payments,
    server: PaymentServer,
    *,
    http: HttpServer,
    workers: Sequence[Stoppable],
    grace: float,
    now: threading.Event,
) -> int:
    """Stops taking work, lets what is in flight end within ``grace`` seconds (unless ``now``
    is set first), and returns how many commands are still running after it."""
    deadline = time.monotonic() + grace
    # Not ready first (/readyz 503, gRPC health NOT_SERVING), so load balancers stop routing
    # here; the listeners stay up meanwhile, to say so. New commands are refused UNAVAILABLE.
    server.stop_serving()
    app.drain.close()
    # Each worker finishes the item it is on (a provider lookup, a delivery) and starts no
    # other; what is left is for another replica, or this one's next start.
    for worker in workers:
        worker.request_stop()
    in_flight = app.drain.in_flight
    log.info("drain: %d command(s) in flight, no new ones taken", in_flight)
    # In slices: a second signal's handler runs between them, not inside a wait.
    while app.drain.in_flight and not now.is_set() and time.monotonic() < deadline:
        app.drain.wait_empty(min(deadline - time.monotonic(), 0.1))

    def remaining(at_most: float) -> float:
        return 0.0 if now.is_set() else min(max(deadline - time.monotonic(), 0.0), at_most)

    server.stop(grace=remaining(_CALLS_GRACE))
    http.stop()
    for worker in workers:
        worker.stop(timeout=max(remaining(grace), 0.1))
    left = app.drain.in_flight
    if in_flight and not left:
        log.info("drain: every command in flight ended and recorded its outcome")
    return left


def _start_workers(
    app: Payments,
    *,
    config: Configuration,
    metrics: Metrics | None,
    settings: Settings,
    sandbox_url: str | None,
    log_options: tuple[str, str],
) -> Sequence[Stoppable]:
    """The background workers, where ``settings.workers`` says (``orchestrator.background``):
    what a drain stops."""
    if settings.workers == "here":
        return _workers(app, config, metrics, here=True)
    _workers(app, config, metrics, here=False)  # for the gauges, which read the store
    if settings.workers == "process":
        env = {
            "PAYORCH_DATABASE_URL": settings.database_url,
            "PAYORCH_CONFIG": settings.config or "",
            "PAYORCH_SANDBOX_URL": sandbox_url or "",
            "PAYORCH_DRAIN_GRACE": str(settings.drain_grace),
        }
        level, fmt = log_options
        return (WorkerProcess(work_command(log_level=level, log_format=fmt), env).start(),)
    log.info("workers: none in this process (payorch work runs them on this store)")
    return ()


def _workers(
    app: Payments, config: Configuration, metrics: Metrics | None, *, here: bool
) -> tuple[WebhookProcessor, RecoveryWorker, ListingProjector]:
    """The three workers, measured; started when they run ``here``, in this process."""
    recovery = RecoveryWorker(app, interval=config.recovery.interval)
    webhooks = WebhookProcessor(app)
    listing = ListingProjector(app, interval=config.listing_interval)
    if metrics is not None:  # the gauges read the store: right wherever the workers run
        _measure(
            metrics, app, config.router, recovery=recovery, webhooks=webhooks, listing=listing,
            here=here,
        )  # fmt: skip
    if here:
        for worker in (recovery, webhooks, listing):
            worker.start()
    return webhooks, recovery, listing


def _payments(settings: Settings, config: Configuration) -> Payments:
    return build_payments(
        settings.database_url, config.router, recovery_schedule=config.recovery.schedule,
        default_account=config.auth.default_account if config.auth else DEFAULT_ACCOUNT,
    )  # fmt: skip


def work_forever(settings: Settings, *, http_listen: str | None) -> int:
    """``payorch work``: the background workers on the store, until SIGTERM or SIGINT; then
    each finishes the item it is on, within the drain grace."""
    try:
        tracing = configure_tracing()
    except TracingSettingsError as e:
        log.error("cannot start: %s", e)
        return 2
    if not _shared_store(settings.database_url):
        log.error("cannot start: payorch work needs PostgreSQL (SQLite serves one process)")
        return 2
    stop, now = _on_signals(settings.drain_grace)
    watch_parent(stop)
    metrics = Metrics() if metrics_enabled() and http_listen else None
    try:
        config = load_configuration(
            settings.config, settings.sandbox_url,
            sandbox_webhook_secret=sandbox_webhook_secret_from_env(), metrics=metrics,
        )  # fmt: skip
        app = _payments(settings, config)
        http = None
        if http_listen:
            ready = functools.partial(_store_answers, app)
            http = HttpServer(http_listen, WebhookIntake(app, {}), ready=ready, metrics=metrics)
    except Exception as e:  # start-up failures end the process with a message, not a trace
        log.error("cannot start: %s: %s", type(e).__name__, e)
        return 2
    try:
        workers = _workers(app, config, metrics, here=True)
        if http is not None and http_listen:
            http.start()
            host = http_listen.rsplit(":", 1)[0]
            log.info("payorch work HTTP listening on %s:%d", host, http.port)
        log.info(
            "payorch work: recovery, webhook consumer and listing running (pid %d)", os.getpid()
        )
        stop.wait()
        deadline = time.monotonic() + settings.drain_grace
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.stop(timeout=0.1 if now.is_set() else max(deadline - time.monotonic(), 0.1))
        if http is not None:
            http.stop()
        app.close()
    finally:
        if tracing is not None:
            tracing.shutdown()
    log.info("stopped")
    return 0


def _shared_store(database_url: str) -> bool:
    """Whether several processes may write the store: PostgreSQL, not SQLite (whose writers
    in two processes fail each other's transactions rather than wait)."""
    try:
        return parse_database_url(database_url).kind == "postgres"
    except ValueError:
        return True  # the store's own start-up says what is wrong with it


def _listing_lag(app: Payments) -> int:
    return max((app.recorder.max_notification_id() or 0) - app.listing.position(), 0)


def _store_answers(app: Payments) -> bool:
    app.recorder.max_notification_id()
    return True


def _measure(
    metrics: Metrics,
    app: Payments,
    router: Router,
    *,
    recovery: RecoveryWorker,
    webhooks: WebhookProcessor,
    listing: ListingProjector,
    here: bool,
) -> None:
    """The hooks of the workers and the store, and the gauges read when scraped. Workers
    that run ``here`` say how far behind the listing is; elsewhere, the store does."""
    webhooks.on_result = metrics.webhook_processed
    group = getattr(app.recorder, "group", None)
    if group is not None:
        group.observe = metrics.store_transaction
    known_head = getattr(app.recorder, "known_head", None)  # PostgreSQL's
    if known_head is not None:
        known_head.observe = metrics.head_guess

    def breakers() -> list[tuple[str, State]]:
        return [
            (name, route.breaker.state)
            for name, route in sorted(router.routes.items())
            if route.breaker is not None
        ]

    def webhook_lag() -> int:
        return max((app.recorder.max_notification_id() or 0) - webhooks.position(), 0)

    bulkheads = [route.bulkhead for route in router.routes.values() if route.bulkhead is not None]
    metrics.watch(
        StateCollector(
            breakers,
            lambda: bulkheads,
            in_doubt=recovery.index.count,
            requiring_review=lambda: app.listing.count(Status.REQUIRES_REVIEW),
            unmatched=webhooks.index.count,
            webhook_lag=webhook_lag,
            listing_lag=(lambda: listing.behind) if here else functools.partial(_listing_lag, app),
        )
    )


class UnsafeListen(Exception):
    """The gRPC address is reachable from other machines and nothing guards it."""


def check_listen(settings: Settings, config: Configuration) -> Configuration:
    """``config``, if the gRPC address it will listen on is guarded or loopback."""
    tls = config.tls
    log.info(
        "gRPC: %s, %s",
        "plaintext" if tls is None else "TLS" if tls.client_ca is None else "mutual TLS",
        "callers: " + ", ".join(s.caller.name for s in config.auth.callers)
        if config.auth is not None else "no caller authentication",
    )  # fmt: skip
    problem = exposure(settings.grpc_listen, config.tls, config.auth)
    if problem is None:
        return config
    if settings.insecure:
        log.warning("--insecure: %s; anyone who reaches the port can move money", problem)
        return config
    raise UnsafeListen(
        f"{problem}: configure [grpc.tls] and [auth] (README: Callers and trust), listen on "
        "127.0.0.1, or pass --insecure"
    )


def _log_listening(settings: Settings, config: Configuration, server: PaymentServer) -> None:
    log.info("payorch gRPC listening on %s:%d", settings.grpc_listen.rsplit(":", 1)[0], server.port)
    if server.token_port is not None and config.tls is not None and config.tls.token_listen:
        host = config.tls.token_listen.rpartition(":")[0]
        log.info("payorch gRPC for token callers listening on %s:%d", host, server.token_port)


def _warn_of_missing_keys() -> None:
    """Once at start-up: what an operator must know before trusting the store."""
    if not chain_key():
        log.warning(
            "%s is not set: the event log's chain is unkeyed, so it detects edits but not "
            "someone who rewrites the whole chain",
            KEY_VARIABLE,
        )
    if not encryption_configured():
        log.warning(
            "%s is not set: event state, customers' personal data included, is stored unencrypted",
            KEYS_VARIABLE,
        )


def _ready(app: Payments, server: PaymentServer) -> bool:
    app.recorder.max_notification_id()  # the store answers
    return server.serving  # not while draining: load balancers route elsewhere


if __name__ == "__main__":
    sys.exit(main())
