"""The composition root: settings in, a wired application (store, providers, policies,
routes) out. The only module that knows which adapter implements which provider type."""

from __future__ import annotations

import importlib
import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.sandbox import SandboxAdapter
from adapters.sandbox import from_config as sandbox_from_config
from orchestrator.accounts import DEFAULT_ACCOUNT
from orchestrator.api.server import DEFAULT_WORKERS
from orchestrator.api.trust import AuthSettings, TlsSettings, read_trust
from orchestrator.application import DEFAULT_RECOVERY_SCHEDULE, Payments
from orchestrator.background import MODES as WORKER_MODES
from orchestrator.encryption import KeyedAESCipher
from orchestrator.listing import DEFAULT_INTERVAL as DEFAULT_LISTING_INTERVAL
from orchestrator.metrics import Metrics
from orchestrator.ports import PaymentProvider, WebhookVerifier
from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker
from orchestrator.resilience.bulkhead import Bulkhead, BulkheadPolicy
from orchestrator.resilience.provider import CallPolicy, ResilientProvider, Stats
from orchestrator.resilience.retry import Jitter, RetryPolicy
from orchestrator.routing import DEFAULT_ROUTE, Route, Router
from orchestrator.secrets import Secret, secret_from
from orchestrator.store import DEFAULT_DATABASE_URL, parse_database_url, schema_lock
from orchestrator.webhooks.intake import NamedVerifier

log = logging.getLogger("payorch")

# Provider type -> the adapter module whose from_config(name, table) builds it.
ADAPTERS = {
    "sandbox": "adapters.sandbox",
    "stripe": "adapters.stripe",
    "razorpay": "adapters.razorpay",
    "adyen": "adapters.adyen",
}
DEFAULT_TIMEOUT = 3.0  # seconds: one provider call, retries included
# Seconds a SIGTERM'd server waits for its commands in flight. Kubernetes kills a pod 30 s
# (terminationGracePeriodSeconds) after its SIGTERM; 20 s lets a command that fails over
# across a few providers (3 s each by default) end and be recorded, and leaves 10 s for
# stopping the listeners and workers and closing the store before the SIGKILL.
DEFAULT_DRAIN_GRACE = 20.0


@dataclass(frozen=True)
class Settings:
    grpc_listen: str = "127.0.0.1:50051"
    database_url: str = DEFAULT_DATABASE_URL
    config: str | None = None
    sandbox_listen: str = "127.0.0.1:8181"
    sandbox_url: str | None = None
    grpc_workers: int = DEFAULT_WORKERS
    http_listen: str = "127.0.0.1:8080"
    webhook_max_body: int = 1024 * 1024
    insecure: bool = False  # listen off loopback without TLS and caller auth (--insecure)
    drain_grace: float = DEFAULT_DRAIN_GRACE  # seconds, on SIGTERM (--drain-grace)
    workers: str = "here"  # where the background workers run (--workers, orchestrator.background)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Flags win over PAYORCH_* environment variables, which win over defaults."""
        env = {
            "grpc_listen": os.environ.get("PAYORCH_GRPC_LISTEN"),
            "database_url": os.environ.get("PAYORCH_DATABASE_URL"),
            "config": os.environ.get("PAYORCH_CONFIG"),
            "sandbox_listen": os.environ.get("PAYORCH_SANDBOX_LISTEN"),
            "sandbox_url": os.environ.get("PAYORCH_SANDBOX_URL"),
            "grpc_workers": os.environ.get("PAYORCH_GRPC_WORKERS"),
            "http_listen": os.environ.get("PAYORCH_HTTP_LISTEN"),
            "webhook_max_body": os.environ.get("PAYORCH_WEBHOOK_MAX_BODY"),
            "drain_grace": os.environ.get("PAYORCH_DRAIN_GRACE"),
            "workers": os.environ.get("PAYORCH_WORKERS"),
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        for number in ("grpc_workers", "webhook_max_body"):
            if number in values:
                values[number] = int(values[number])
        if "drain_grace" in values:
            values["drain_grace"] = _seconds("PAYORCH_DRAIN_GRACE", values["drain_grace"])
        if values.get("workers", "here") not in WORKER_MODES:
            raise ValueError(
                f"PAYORCH_WORKERS: choose from {', '.join(WORKER_MODES)}, not {values['workers']!r}"
            )
        return cls(**values)


def _seconds(name: str, value: object) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return seconds


def sandbox_webhook_secret_from_env() -> Secret | None:
    """The secret the webhooks of a sandbox payorch did not start are signed with, if it
    sends any: PAYORCH_SANDBOX_WEBHOOK_SECRET_FILE (a secret file) or
    PAYORCH_SANDBOX_WEBHOOK_SECRET. It serves ``--sandbox-url``'s sandbox and every sandbox
    provider of the configuration file that names no webhook secret of its own."""
    variable = "PAYORCH_SANDBOX_WEBHOOK_SECRET"
    if f"{variable}_FILE" in os.environ:
        spec = {"webhook_secret_file": os.environ[f"{variable}_FILE"]}
    elif variable in os.environ:
        spec = {"webhook_secret_env": variable}  # the variable's name, not its value
    else:
        return None
    return secret_from(spec, "webhook_secret", owner="sandbox")


@dataclass(frozen=True)
class RecoverySettings:
    schedule: tuple[float, ...] = DEFAULT_RECOVERY_SCHEDULE
    interval: float = 1.0  # seconds between scans for operations in doubt


@dataclass(frozen=True)
class Configuration:
    router: Router
    recovery: RecoverySettings
    stats: Stats  # what the resilient layer did, across every provider
    tls: TlsSettings | None = None  # [grpc.tls]
    auth: AuthSettings | None = None  # [auth]: None, every call is anonymous
    listing_interval: float = DEFAULT_LISTING_INTERVAL  # [listing] interval: seconds


def load_configuration(
    config_path: str | None,
    sandbox_url: str | None,
    *,
    sandbox_webhook_secret: Secret | None = None,
    metrics: Metrics | None = None,
) -> Configuration:
    """Providers, routes and recovery from the TOML file; without one, every region goes to
        the sandbox at ``sandbox_url`` with the default policies. ``sandbox_webhook_secret``
        verifies the webhooks of that sandbox, and of every sandbox provider of the file that
        names no secret of its own (``payorch serve`` passes PAYORCH_SANDBOX_WEBHOOK_SECRET's, or
        one it generated for its in-process sandbox). ``metrics``: what each provider's resilient
    layer and breaker report to (none: nothing is reported)."""
    stats = Stats()
    if config_path is None:
        if sandbox_url is None:
            raise ValueError("no provider configuration and no sandbox URL")
        secrets = [sandbox_webhook_secret] if sandbox_webhook_secret is not None else []
        adapter = SandboxAdapter(sandbox_url, name="sandbox", webhook_secrets=secrets)
        route = resilient_route("sandbox", "sandbox", adapter, {}, stats, metrics=metrics)
        return Configuration(
            Router({"sandbox": route}, {DEFAULT_ROUTE: ["sandbox"]}), RecoverySettings(), stats
        )
    config = tomllib.loads(Path(config_path).read_text())
    providers = {
        name: build_route(
            name,
            _with_sandbox_url(spec, sandbox_url),
            stats,
            sandbox_webhook_secret=sandbox_webhook_secret,
            metrics=metrics,
        )
        for name, spec in config.get("providers", {}).items()
    }
    routes = {str(key): list(names) for key, names in config.get("routes", {}).items()}
    tls, auth = read_trust(config, Path(config_path).parent)
    listing = float(config.get("listing", {}).get("interval", DEFAULT_LISTING_INTERVAL))
    if listing <= 0:
        raise ValueError("[listing] interval must be positive")
    return Configuration(
        Router(providers, routes), _recovery(config.get("recovery", {})), stats, tls, auth,
        listing,
    )  # fmt: skip


def load_router(config_path: str | None, sandbox_url: str | None) -> Router:
    return load_configuration(config_path, sandbox_url).router


def _with_sandbox_url(spec: Mapping[str, Any], sandbox_url: str | None) -> dict[str, Any]:
    spec = dict(spec)
    if spec.get("type") == "sandbox" and not spec.get("base_url") and sandbox_url:
        spec["base_url"] = sandbox_url
    return spec


def build_route(
    name: str,
    spec: Mapping[str, Any],
    stats: Stats,
    *,
    sandbox_webhook_secret: Secret | None = None,
    metrics: Metrics | None = None,
) -> Route:
    """One provider: its adapter, wrapped in its own breaker, retries and timeouts."""
    kind = str(spec.get("type", name))
    if kind not in ADAPTERS:
        raise ValueError(f"provider {name!r}: unknown type {kind!r} (known: {sorted(ADAPTERS)})")
    adapter: PaymentProvider
    if kind == "sandbox":
        # The one provider whose webhook secret may come from outside its table: the sandbox
        # is run next to payorch, and given its secret the way payorch is.
        adapter = sandbox_from_config(name, spec, default_webhook_secret=sandbox_webhook_secret)
    else:
        adapter = importlib.import_module(ADAPTERS[kind]).from_config(name, spec)
    return resilient_route(name, kind, adapter, spec, stats, metrics=metrics)


def resilient_route(
    name: str,
    kind: str,
    adapter: PaymentProvider,
    spec: Mapping[str, Any],
    stats: Stats,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Jitter | None = None,
    metrics: Metrics | None = None,
) -> Route:
    """``clock``, ``sleep`` and ``jitter`` drive the breaker and the retries: real time in
    service, simulated time and a seeded random source in the simulator."""
    timeout = float(spec.get("timeout", DEFAULT_TIMEOUT))
    if not spec.get("resilient", True):
        # The bare adapter: only to measure what the resilient path costs.
        return Route(adapter, timeout=timeout, kind=kind, adapter=adapter)
    retry = RetryPolicy(**_numbers(spec.get("retry", {}), RetryPolicy, name))
    retry = RetryPolicy(retry.base, retry.maximum, retry.max_attempts, min(retry.max_time, timeout))
    breaker = CircuitBreaker(
        name,
        BreakerPolicy(**_numbers(spec.get("breaker", {}), BreakerPolicy, name)),
        clock=clock,
        on_change=metrics.breaker_changed if metrics is not None else None,
    )
    policy = CallPolicy(attempt_timeout=float(spec.get("attempt_timeout", timeout)), retry=retry)
    bulkhead = Bulkhead(name, bulkhead_policy(name, spec), clock=clock)
    provider = ResilientProvider(
        adapter,
        breaker,
        policy,
        sleep=sleep,
        clock=clock,
        jitter=jitter,
        stats=stats,
        bulkhead=bulkhead,
        observer=metrics,
    )
    return Route(
        provider, timeout=timeout, breaker=breaker, kind=kind, adapter=adapter, bulkhead=bulkhead
    )


def bulkhead_policy(name: str, spec: Mapping[str, Any]) -> BulkheadPolicy:
    """A provider table's outbound limits: ``max_concurrent_calls`` (calls in flight at
    once) and ``max_calls_per_second`` (attempts sent a second); each unlimited if absent."""
    try:
        return BulkheadPolicy(
            max_concurrent_calls=spec.get("max_concurrent_calls"),
            max_calls_per_second=spec.get("max_calls_per_second"),
        )
    except ValueError as e:
        raise ValueError(f"provider {name!r}: {e}") from None


def webhook_verifiers(router: Router) -> dict[str, list[NamedVerifier]]:
    """The providers that verify webhooks, by provider type (the URL's ``{provider}``)."""
    verifiers: dict[str, list[NamedVerifier]] = {}
    for name, route in sorted(router.routes.items()):
        if isinstance(route.adapter, WebhookVerifier):
            verifiers.setdefault(route.kind, []).append(NamedVerifier(name, route.adapter))
    return verifiers


def warn_of_webhooks_without_secret(config: Configuration) -> None:
    """One warning per provider that takes webhooks at an endpoint but cannot verify them:
    the provider sees only 401s, and nothing else at start-up would say why. Names the
    provider and its endpoint, never a secret."""
    for kind, verifiers in sorted(webhook_verifiers(config.router).items()):
        for verifier in verifiers:
            if not getattr(verifier.verifier, "has_webhook_secret", True):
                where = "its table's webhook_secret_env or webhook_secret_file"
                if kind == "sandbox":
                    where = f"PAYORCH_SANDBOX_WEBHOOK_SECRET(_FILE) or {where}"
                log.warning(
                    "provider %r has no webhook secret: its deliveries to /webhooks/%s will "
                    "be refused (401 no webhook secret configured); set %s",
                    verifier.name, kind, where,
                )  # fmt: skip


def _numbers(table: Mapping[str, Any], policy: type, owner: str) -> dict[str, Any]:
    names = {"max": "maximum"}
    fields = set(policy.__dataclass_fields__)  # type: ignore[attr-defined]
    values = {names.get(k, k): v for k, v in table.items()}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(
            f"provider {owner!r}: unknown {policy.__name__} settings {sorted(unknown)}"
        )
    return values


def _recovery(table: Mapping[str, Any]) -> RecoverySettings:
    schedule: Sequence[float] = table.get("schedule", DEFAULT_RECOVERY_SCHEDULE)
    return RecoverySettings(
        schedule=tuple(float(s) for s in schedule), interval=float(table.get("interval", 1.0))
    )


def build_payments(
    database_url: str,
    router: Router,
    *,
    recovery_schedule: Sequence[float] | None = None,
    default_account: str = DEFAULT_ACCOUNT,
) -> Payments:
    """``default_account`` (``[auth] default_account``) owns the payments stored before
    payments named their account."""
    store = parse_database_url(database_url)
    log.info("event store: %s", store.display)
    with schema_lock(store):
        app = Payments(
            env=store.env,
            router=router,
            recovery_schedule=recovery_schedule or DEFAULT_RECOVERY_SCHEDULE,
            default_account=default_account,
        )
    cipher = app.mapper.cipher
    if isinstance(cipher, KeyedAESCipher) and cipher.ring.current is not None:
        log.info(
            "event state encrypted with key id %s (%d key(s) held)",
            cipher.ring.current,
            len(cipher.ring.keys),
        )
    return app
