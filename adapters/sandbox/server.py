"""The sandbox payment provider: a real HTTP service that behaves like a payment provider.

It exists so that local runs, our tests and users' integration tests exercise the same wire
protocol, idempotency rules and failure modes a real provider has, without a real provider.
Everything lives in memory behind one lock; faults (errors, hangs, dropped responses,
ignored idempotency keys) are switched on at run time through ``/_sandbox/faults``.
When ``/_sandbox/webhooks`` is configured, everything the sandbox does is also told as a signed
webhook (Standard Webhooks), delivered at least once with retries, by a background sender.

Standard library only (plus ``adapters.sandbox.webhooks`` for the Standard Webhooks signature,
itself standard library and ``orchestrator`` only), so that the sandbox runs wherever payorch's
own code runs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import http.client
import json
import logging
import random
import re
import secrets
import signal
import socket
import socketserver
import ssl
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

from adapters.sandbox.webhooks import SECRET_PREFIX, sign_standard_webhook, signing_key

__all__ = [
    "FaultSettings",
    "SandboxServer",
    "SandboxState",
    "WebhookSettings",
    "parse_listen",
    "run_sandbox",
    "start_sandbox",
]

logger = logging.getLogger("payorch.sandbox")

JSONObject = dict[str, Any]

DECLINE_TOKENS: Final[dict[str, str]] = {
    "pm_card_declined": "card_declined",
    "pm_insufficient_funds": "insufficient_funds",
}
MAX_BODY_BYTES: Final = 1 << 20
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
_CURRENCY = re.compile(r"[A-Z]{3}")
_PAYMENT_PATH = re.compile(r"/v1/payments/([^/]+)")
_PAYMENT_ACTION_PATH = re.compile(r"/v1/payments/([^/]+)/(capture|void|refunds)")
_DISPUTE_OPEN_PATH = re.compile(r"/_sandbox/payments/([^/]+)/dispute")
_DISPUTE_CLOSE_PATH = re.compile(r"/_sandbox/disputes/([^/]+)/close")
_CREATE_PARAMS: Final = frozenset(
    {"amount", "currency", "payment_method", "capture", "reference", "metadata"}
)

Action = Literal["create", "capture", "void", "refunds"]
_ACTIONS: Final[dict[str, Action]] = {"capture": "capture", "void": "void", "refunds": "refunds"}


# --- errors and answers -------------------------------------------------------------------


class SandboxError(Exception):
    """An error answer. ``store`` says whether it belongs under the idempotency key: only
    answers produced once processing began are stored, so a fixed request can be retried."""

    def __init__(self, status: int, error: JSONObject, *, store: bool) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.body: JSONObject = {"error": error}
        self.store = store


def _invalid(message: str) -> SandboxError:
    return SandboxError(400, {"type": "invalid_request_error", "message": message}, store=False)


def _refused(message: str) -> SandboxError:
    return SandboxError(400, {"type": "invalid_request_error", "message": message}, store=True)


def _missing(object_id: str, kind: str = "payment") -> SandboxError:
    error = {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "message": f"no such {kind}: {object_id!r}",
    }
    return SandboxError(404, error, store=True)


def _encode(body: JSONObject) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    replayed: bool = False


_INJECTED_ERROR: Final = _Answer(
    500, _encode({"error": {"type": "api_error", "message": "sandbox injected error"}})
)


# --- faults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSettings:
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_after_processing_rate: float = 0.0
    latency_ms: int = 0
    hang_ms: int = 10_000
    honor_idempotency: bool = True
    seed: int | None = None

    def to_json(self) -> JSONObject:
        return asdict(self)


_FAULT_FIELDS: Final = frozenset(FaultSettings.__dataclass_fields__)


def _rate(update: JSONObject, name: str, current: float) -> float:
    if name not in update:
        return current
    value = update[name]
    # bool is an int subclass; true/false as a rate is a caller mistake, not 1.0/0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _invalid(f"{name} must be a number between 0 and 1")
    return float(value)


def _millis(update: JSONObject, name: str, current: int) -> int:
    if name not in update:
        return current
    value = update[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(f"{name} must be an integer >= 0")
    return value


def _flag(update: JSONObject, name: str, current: bool) -> bool:
    if name not in update:
        return current
    value = update[name]
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false")
    return value


def _seed(update: JSONObject, current: int | None) -> int | None:
    if "seed" not in update:
        return current
    value = update["seed"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _invalid("seed must be an integer or null")
    return value


def apply_fault_update(current: FaultSettings, update: object) -> FaultSettings:
    """Merge a ``PUT /_sandbox/faults`` body into ``current``; all or nothing."""
    if not isinstance(update, dict):
        raise _invalid("faults must be a JSON object")
    unknown = sorted(set(update) - _FAULT_FIELDS)
    if unknown:
        raise _invalid(f"unknown fault setting(s): {', '.join(unknown)}")
    return FaultSettings(
        error_rate=_rate(update, "error_rate", current.error_rate),
        timeout_rate=_rate(update, "timeout_rate", current.timeout_rate),
        drop_after_processing_rate=_rate(
            update, "drop_after_processing_rate", current.drop_after_processing_rate
        ),
        latency_ms=_millis(update, "latency_ms", current.latency_ms),
        hang_ms=_millis(update, "hang_ms", current.hang_ms),
        honor_idempotency=_flag(update, "honor_idempotency", current.honor_idempotency),
        seed=_seed(update, current.seed),
    )


# --- request validation -------------------------------------------------------------------


class _InvalidJSON:
    """Marks a body that did not parse; validation turns it into a 400."""


_INVALID_JSON: Final = _InvalidJSON()


def _parse_body(raw: bytes) -> object:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID_JSON


def _fingerprint(method: str, path: str, raw: bytes, parsed: object) -> str:
    # canonical JSON, so that key order or whitespace differences are not "another request"
    if isinstance(parsed, _InvalidJSON):
        canonical = "raw:" + raw.hex()
    else:
        canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def _params(body: object, allowed: frozenset[str]) -> JSONObject:
    if isinstance(body, _InvalidJSON):
        raise _invalid("request body is not valid JSON")
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"received unknown parameter(s): {', '.join(unknown)}")
    return body


def _amount(params: JSONObject, *, required: bool) -> int:
    """A positive amount when required; otherwise 0 (omitted) means "all remaining"."""
    value = params.get("amount")
    if value is None and not required:
        return 0
    minimum = 1 if required else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid("amount must be a positive integer in minor units")
    return value


def _text(params: JSONObject, name: str) -> str:
    value = params.get(name, "")
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _currency(params: JSONObject) -> str:
    value = params.get("currency")
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise _invalid("currency must be a three-letter uppercase code such as USD")
    return value


def _payment_method(params: JSONObject) -> str:
    value = params.get("payment_method")
    if not isinstance(value, str) or not value.startswith("pm_"):
        raise _invalid("payment_method must be a payment method token starting with pm_")
    return value


def _capture_flag(params: JSONObject) -> bool:
    value = params.get("capture", False)
    if not isinstance(value, bool):
        raise _invalid("capture must be true or false")
    return value


def _metadata(params: JSONObject) -> dict[str, str]:
    value = params.get("metadata", {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid("metadata must be an object of string keys and string values")
    return dict(value)


def _new_id(prefix: str) -> str:
    return f"sbx_{prefix}_{secrets.token_hex(12)}"


# --- webhooks -----------------------------------------------------------------------------

WEBHOOK_STATS: Final = ("sent", "delivered", "failed_attempts", "pending", "gave_up")
_MASKED_SECRET: Final = "whsec_********"  # noqa: S105 - what GET shows instead
_WEBHOOK_FIELDS: Final = frozenset(
    {"url", "secret", "max_attempts", "initial_delay_ms", "max_delay_ms", "timeout_ms"}
)
# Standard Webhooks: the key is 24 to 64 random bytes
_WEBHOOK_KEY_BYTES: Final = (24, 64)
_WEBHOOK_LIMITS: Final = {  # name: (minimum, maximum)
    "max_attempts": (1, 1000),
    "initial_delay_ms": (0, 86_400_000),
    "max_delay_ms": (0, 86_400_000),
    "timeout_ms": (1, 600_000),
}
_MAX_WEBHOOK_URL_LENGTH: Final = 2048
_WEBHOOK_THREADS: Final = 4  # one scheduler per shard; the events of a payment share a shard
_WEBHOOK_STOP_WAIT_S: Final = 2.0


def _wall_clock() -> float:
    """Unix time for ``webhook-timestamp``, read at each attempt (a seam for tests)."""
    return time.time()


def _check_webhook_url(url: object) -> None:
    problem = "url must be an absolute http:// or https:// URL"
    if not isinstance(url, str) or len(url) > _MAX_WEBHOOK_URL_LENGTH:
        raise ValueError(problem)
    # http.client refuses these at send time; refuse them now instead of failing every attempt
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(problem + " without spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(problem) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials")


def _check_webhook_secret(secret: object) -> None:
    problem = (
        f"secret must be a Standard Webhooks secret: {SECRET_PREFIX} followed by the "
        f"base64 of {_WEBHOOK_KEY_BYTES[0]} to {_WEBHOOK_KEY_BYTES[1]} random bytes"
    )
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(problem)
    try:
        key = signing_key(secret)  # decoded exactly as the signer and the verifier decode it
    except ValueError:
        raise ValueError(problem) from None  # never echo the secret
    if not _WEBHOOK_KEY_BYTES[0] <= len(key) <= _WEBHOOK_KEY_BYTES[1]:
        raise ValueError(problem)


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how the sandbox delivers webhooks; checked on creation (``ValueError``)."""

    url: str
    secret: str = field(repr=False)
    max_attempts: int = 8
    initial_delay_ms: int = 200
    max_delay_ms: int = 30_000
    timeout_ms: int = 5_000

    def __post_init__(self) -> None:
        _check_webhook_url(self.url)
        _check_webhook_secret(self.secret)
        for name, (minimum, maximum) in _WEBHOOK_LIMITS.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not minimum <= value <= maximum
            ):
                raise ValueError(f"{name} must be an integer from {minimum} to {maximum}")
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError("max_delay_ms must be at least initial_delay_ms")

    def retry_delay_s(self, failed_attempts: int, rng: random.Random) -> float:
        """The wait after the ``failed_attempts``-th failure: ``initial_delay_ms`` doubling,
        capped at ``max_delay_ms``, then jittered down to between half and all of it."""
        doubled = self.initial_delay_ms << min(failed_attempts - 1, 40)
        return min(doubled, self.max_delay_ms) * (0.5 + rng.random() / 2) / 1000

    def to_json(self) -> JSONObject:
        return {
            "enabled": True,
            "url": self.url,
            "secret": _MASKED_SECRET,
            "max_attempts": self.max_attempts,
            "initial_delay_ms": self.initial_delay_ms,
            "max_delay_ms": self.max_delay_ms,
            "timeout_ms": self.timeout_ms,
        }


_WEBHOOKS_DISABLED: Final[JSONObject] = {
    "enabled": False,
    "url": None,
    "secret": None,
    "max_attempts": None,
    "initial_delay_ms": None,
    "max_delay_ms": None,
    "timeout_ms": None,
}


def parse_webhook_settings(body: object) -> WebhookSettings:
    """A ``PUT /_sandbox/webhooks`` body into settings (a full replacement, not a merge)."""
    params = _params(body, _WEBHOOK_FIELDS)
    missing = [name for name in ("url", "secret") if name not in params]
    if missing:
        raise _invalid(f"missing webhook setting(s): {', '.join(missing)}")
    try:
        return WebhookSettings(**params)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc


def _jitter_rng(seed: int | None) -> random.Random:
    # its own stream, derived from the fault seed: drawing jitter from the fault dice would make
    # a seeded run's faults depend on how webhook deliveries happened to go
    if seed is None:
        return random.Random()  # noqa: S311 - retry jitter, not cryptography
    return random.Random(f"webhook-jitter:{seed}")  # noqa: S311 - reproducible jitter


@dataclass
class _Delivery:
    event_id: str
    body: bytes
    generation: int  # deliveries of an older generation were dropped (disable, reset, stop)
    attempts: int = 0


@dataclass
class _Shard:
    wakeup: threading.Condition
    due: list[tuple[float, int, _Delivery]] = field(default_factory=list)  # a heap


class _WebhookSender:
    """Delivers events at least once, from a few scheduler threads with a heap of due
    deliveries each.

    The events of one payment share a thread, so with a healthy receiver they arrive in the
    order they happened; a failed delivery waits out its backoff while later events go ahead
    (real providers reorder too). Settings are read at each attempt, so a new ``PUT`` applies to
    pending retries; disabling, a reset or stopping drops whatever is pending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: WebhookSettings | None = None
        self._shards = [_Shard(threading.Condition(self._lock)) for _ in range(_WEBHOOK_THREADS)]
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._stopped.set()  # threads start with the first configuration
        self._generation = 0
        self._sequence = 0  # heap tie-break: first in, first out among equally due deliveries
        self._stats = dict.fromkeys(WEBHOOK_STATS, 0)
        self._rng = _jitter_rng(None)
        self._connections: set[http.client.HTTPConnection] = set()
        self._tls_context: ssl.SSLContext | None = None  # built once: it costs tens of ms

    @property
    def enabled(self) -> bool:
        return self._settings is not None and not self._stopped.is_set()

    @property
    def settings(self) -> WebhookSettings | None:
        with self._lock:
            return self._settings

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def configure(self, settings: WebhookSettings) -> None:
        with self._lock:
            self._settings = settings
            if self._stopped.is_set():
                self._start()

    def disable(self) -> None:
        with self._lock:
            self._settings = None
            self._drop_pending()

    def reset(self, seed: int | None) -> None:
        """Forget deliveries and counts (the configuration stays), and reseed the jitter."""
        with self._lock:
            self._drop_pending()
            self._stats = dict.fromkeys(WEBHOOK_STATS, 0)
            self._rng = _jitter_rng(seed)

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._rng = _jitter_rng(seed)

    def emit(self, shard_key: str, event_id: str, body: bytes) -> None:
        with self._lock:
            if self._settings is None or self._stopped.is_set():
                return
            self._stats["sent"] += 1
            self._stats["pending"] += 1
            shard = self._shards[zlib.crc32(shard_key.encode()) % len(self._shards)]
            self._schedule(shard, _Delivery(event_id, body, self._generation), time.monotonic())

    def stop(self) -> None:
        """Stop promptly: pending deliveries are dropped and attempts in flight cut off."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self._drop_pending()
            for shard in self._shards:
                shard.wakeup.notify_all()
            threads, self._threads = self._threads, []
            connections = list(self._connections)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _WEBHOOK_STOP_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # internals; the lock is held unless said otherwise

    def _start(self) -> None:
        stopped = self._stopped = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(shard, stopped),
                name=f"payorch-sandbox-webhooks-{number}",
                daemon=True,
            )
            for number, shard in enumerate(self._shards)
        ]
        for thread in self._threads:
            thread.start()

    def _tls(self) -> ssl.SSLContext:
        # built outside the lock (emit runs under the state's lock); a race builds two, harmless
        context = self._tls_context
        if context is None:
            context = self._tls_context = ssl.create_default_context()
        return context

    def _drop_pending(self) -> None:
        self._generation += 1  # attempts in flight now settle into nothing
        for shard in self._shards:
            shard.due.clear()
        self._stats["pending"] = 0

    def _schedule(self, shard: _Shard, delivery: _Delivery, due: float) -> None:
        self._sequence += 1
        heapq.heappush(shard.due, (due, self._sequence, delivery))
        shard.wakeup.notify()

    def _work(self, shard: _Shard, stopped: threading.Event) -> None:
        """A scheduler thread (runs without the lock, taking it around each step)."""
        while True:
            with self._lock:
                job = self._next(shard, stopped)
            if job is None:
                return
            settings, delivery = job
            delivered = self._attempt(settings, delivery, stopped)
            with self._lock:
                self._settle(shard, delivery, delivered=delivered)

    def _next(
        self, shard: _Shard, stopped: threading.Event
    ) -> tuple[WebhookSettings, _Delivery] | None:
        while not stopped.is_set():
            now = time.monotonic()
            if shard.due and shard.due[0][0] <= now:
                delivery = heapq.heappop(shard.due)[2]
                if self._settings is None or delivery.generation != self._generation:
                    continue
                delivery.attempts += 1
                return self._settings, delivery
            shard.wakeup.wait(shard.due[0][0] - now if shard.due else None)
        return None

    def _settle(self, shard: _Shard, delivery: _Delivery, *, delivered: bool) -> None:
        if delivery.generation != self._generation or self._settings is None:
            return  # dropped while in flight
        if delivered:
            self._stats["delivered"] += 1
            self._stats["pending"] -= 1
            return
        self._stats["failed_attempts"] += 1
        settings = self._settings
        if delivery.attempts >= settings.max_attempts:
            self._stats["gave_up"] += 1
            self._stats["pending"] -= 1
            logger.warning(
                "gave up webhook %s after %d attempts", delivery.event_id, delivery.attempts
            )
            return
        delay = settings.retry_delay_s(delivery.attempts, self._rng)
        self._schedule(shard, delivery, time.monotonic() + delay)

    def _attempt(
        self, settings: WebhookSettings, delivery: _Delivery, stopped: threading.Event
    ) -> bool:
        """One POST (without the lock); True on a 2xx answer."""
        parts = urlsplit(settings.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        timestamp = int(_wall_clock())
        headers = {
            "content-type": "application/json",
            "user-agent": "payorch-sandbox/1",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard_webhook(
                settings.secret, delivery.event_id, timestamp, delivery.body
            ),
        }
        timeout = settings.timeout_ms / 1000
        connection = (
            http.client.HTTPSConnection(
                str(parts.hostname), parts.port, timeout=timeout, context=self._tls()
            )
            if parts.scheme == "https"
            else http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=timeout)
        )
        with self._lock:
            if stopped.is_set():
                return False
            self._connections.add(connection)
        try:
            connection.request("POST", target, body=delivery.body, headers=headers)
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: what http.client raises on a header or URL it cannot send; a
            # scheduler thread must never die of one delivery
            logger.info(
                "webhook %s attempt %d to %s failed: %s",
                delivery.event_id,
                delivery.attempts,
                settings.url,
                type(exc).__name__,
            )
            return False
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()
        if 200 <= status < 300:
            return True
        logger.info(
            "webhook %s attempt %d to %s answered %d",
            delivery.event_id,
            delivery.attempts,
            settings.url,
            status,
        )
        return False


# --- state --------------------------------------------------------------------------------


@dataclass
class _KeyRecord:
    fingerprint: str
    answer: _Answer | None = None  # None while the first request with the key is in flight


@dataclass(frozen=True)
class _Route:
    action: Action
    payment_id: str = ""


@dataclass(frozen=True)
class _Admission:
    """A request let through to processing, with its fault rolls already made."""

    record: _KeyRecord | None  # the key it holds in flight, when idempotency is honoured
    key: str | None
    recorded_key: str | None  # what objects and ledger entries say created them
    error: bool
    hang_s: float
    drop: bool


class SandboxState:
    """Payments, disputes, ledger, idempotency store and faults, all guarded by one lock.

    Handlers never sleep while holding the lock: latency and hang faults happen outside it,
    so a hanging request does not stall the others. Webhook events are made under the lock,
    as things happen, and handed to the sender, which delivers them on its own threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payments: dict[str, JSONObject] = {}
        self._disputes: dict[str, JSONObject] = {}
        self._ledger: list[JSONObject] = []
        self._keys: dict[str, _KeyRecord] = {}
        self._faults = FaultSettings()
        self._rng = random.Random()  # noqa: S311 - fault dice, not cryptography
        self._webhooks = _WebhookSender()
        self._arrived = 0  # money requests whose body was read, before any latency fault

    # read access for tests and the HTTP layer

    @property
    def arrived(self) -> int:
        """Money requests received so far, counted before their latency: a test that kills a
        caller mid-request waits for this, so the provider has the request to act on."""
        with self._lock:
            return self._arrived

    def note_arrival(self) -> None:
        with self._lock:
            self._arrived += 1

    @property
    def faults(self) -> FaultSettings:
        with self._lock:
            return self._faults

    def ledger(self) -> list[JSONObject]:
        with self._lock:
            return copy.deepcopy(self._ledger)

    def payments(self) -> list[JSONObject]:
        with self._lock:
            return copy.deepcopy(list(self._payments.values()))

    def payment(self, payment_id: str) -> JSONObject | None:
        with self._lock:
            found = self._payments.get(payment_id)
            return copy.deepcopy(found) if found is not None else None

    def disputes(self) -> list[JSONObject]:
        with self._lock:
            return copy.deepcopy(list(self._disputes.values()))

    def webhook_settings(self) -> WebhookSettings | None:
        return self._webhooks.settings

    def webhook_stats(self) -> dict[str, int]:
        """``sent`` (events queued), ``delivered``, ``failed_attempts``, ``pending`` (queued,
        waiting to retry or in flight) and ``gave_up`` (after ``max_attempts``)."""
        return self._webhooks.stats()

    def webhooks_json(self) -> JSONObject:
        settings = self._webhooks.settings
        shown = settings.to_json() if settings is not None else dict(_WEBHOOKS_DISABLED)
        return {**shown, "stats": self._webhooks.stats()}

    # administration

    def reset(self) -> None:
        """Forget payments, disputes, keys, faults and webhook deliveries and counts; the
        webhook configuration stays (it is how the sandbox is wired, like its address)."""
        with self._lock:
            self._payments.clear()
            self._disputes.clear()
            self._ledger.clear()
            self._keys.clear()
            self._faults = FaultSettings()
            self._rng = random.Random()  # noqa: S311 - fault dice, not cryptography
            self._webhooks.reset(None)

    def update_faults(self, update: object) -> FaultSettings:
        with self._lock:
            self._faults = apply_fault_update(self._faults, update)
            if isinstance(update, dict) and "seed" in update:
                self._rng = random.Random(self._faults.seed)  # noqa: S311 - reproducible faults
                self._webhooks.reseed(self._faults.seed)
            return self._faults

    def configure_webhooks(self, settings: WebhookSettings) -> None:
        """Send webhooks from now on (replacing earlier settings; pending retries use these)."""
        self._webhooks.configure(settings)

    def disable_webhooks(self) -> None:
        """Send no more webhooks; pending deliveries are dropped."""
        self._webhooks.disable()

    def close(self) -> None:
        """Stop the webhook sender (promptly; pending deliveries are dropped)."""
        self._webhooks.stop()

    # the money path: admit -> (fault) -> process

    def admit(self, key: str | None, fingerprint: str) -> _Admission | _Answer:
        """Apply the idempotency rules; either answer right away or let the request in."""
        with self._lock:
            faults = self._faults
            honored = key if faults.honor_idempotency else None
            record: _KeyRecord | None = None
            if honored is not None:
                existing = self._keys.get(honored)
                if existing is not None:
                    return _existing_key_answer(existing, fingerprint)
                record = _KeyRecord(fingerprint)
                self._keys[honored] = record
            # always three draws, so a seeded run's n-th request sees the same dice
            error, hang, drop = (self._rng.random() for _ in range(3))
            return _Admission(
                record=record,
                key=honored,
                recorded_key=key,
                error=error < faults.error_rate,
                hang_s=faults.hang_ms / 1000 if hang < faults.timeout_rate else 0.0,
                drop=drop < faults.drop_after_processing_rate,
            )

    def release(self, admission: _Admission) -> None:
        """Forget an admitted request that was never processed, so a retry processes."""
        with self._lock:
            self._settle(admission, None)

    def process(self, route: _Route, body: object, admission: _Admission) -> _Answer:
        with self._lock:
            try:
                status, payload = self._dispatch(route, body, admission.recorded_key)
                store = True
            except SandboxError as exc:
                status, payload, store = exc.status, exc.body, exc.store
            answer = _Answer(status, _encode(payload))
            self._settle(admission, answer if store else None)
            return answer

    def get_payment(self, payment_id: str) -> _Answer:
        with self._lock:
            payment = self._payments.get(payment_id)
            if payment is None:
                error = _missing(payment_id)
                return _Answer(error.status, _encode(error.body))
            return _Answer(200, _encode(payment))

    def list_payments(self, reference: str | None) -> _Answer:
        with self._lock:
            data = [
                p
                for p in self._payments.values()
                if reference is None or p["reference"] == reference
            ]
            return _Answer(200, _encode({"data": data}))

    def ledger_answer(self) -> _Answer:
        with self._lock:
            return _Answer(200, _encode({"entries": self._ledger}))

    # disputes: sandbox-only test endpoints, outside faults and idempotency

    def open_dispute(self, payment_id: str, body: object) -> _Answer:
        with self._lock:
            try:
                return _Answer(200, _encode(self._open_dispute(payment_id, body)))
            except SandboxError as exc:
                return _Answer(exc.status, _encode(exc.body))

    def close_dispute(self, dispute_id: str, body: object) -> _Answer:
        with self._lock:
            try:
                return _Answer(200, _encode(self._close_dispute(dispute_id, body)))
            except SandboxError as exc:
                return _Answer(exc.status, _encode(exc.body))

    # internals; the lock is held

    def _settle(self, admission: _Admission, answer: _Answer | None) -> None:
        if admission.key is None or admission.record is None:
            return
        # identity check: a reset while this request was in flight already forgot the key
        if self._keys.get(admission.key) is not admission.record:
            return
        if answer is None:
            del self._keys[admission.key]
        else:
            admission.record.answer = answer

    def _dispatch(self, route: _Route, body: object, key: str | None) -> tuple[int, JSONObject]:
        if route.action == "create":
            return self._create(body, key)
        if route.action == "capture":
            return self._capture(route.payment_id, body, key)
        if route.action == "void":
            return self._void(route.payment_id, body, key)
        return self._refund(route.payment_id, body, key)

    def _find(self, payment_id: str) -> JSONObject:
        payment = self._payments.get(payment_id)
        if payment is None:
            raise _missing(payment_id)
        return payment

    def _emit(self, event_type: str, payment: JSONObject, **extra: JSONObject) -> None:
        """Queue a webhook telling what just happened, with the objects as they are now."""
        if not self._webhooks.enabled:
            return
        event_id = f"evt_{secrets.token_hex(12)}"
        event = {
            "id": event_id,
            "type": event_type,
            "created": _now(),
            "data": {"payment": payment, **extra},
        }
        self._webhooks.emit(payment["id"], event_id, _encode(event))

    def _record(self, kind: str, payment: JSONObject, amount: int, key: str | None) -> None:
        self._ledger.append(
            {
                "id": _new_id("led"),
                "kind": kind,
                "payment": payment["id"],
                "amount": amount,
                "currency": payment["currency"],
                "idempotency_key": key,
                "reference": payment["reference"],
                "created": int(time.time()),
            }
        )

    def _create(self, body: object, key: str | None) -> tuple[int, JSONObject]:
        params = _params(body, _CREATE_PARAMS)
        payment: JSONObject = {
            "id": _new_id("pay"),
            "object": "payment",
            "status": "authorized",
            "amount": _amount(params, required=True),
            "currency": _currency(params),
            "amount_captured": 0,
            "amount_refunded": 0,
            "payment_method": _payment_method(params),
            "reference": _text(params, "reference"),
            "metadata": _metadata(params),
            "idempotency_key": key,
            "decline_code": None,
            "captures": [],
            "refunds": [],
            "void": None,
            "created": int(time.time()),
        }
        capture = _capture_flag(params)
        self._payments[payment["id"]] = payment
        decline_code = DECLINE_TOKENS.get(payment["payment_method"])
        if decline_code is not None:
            return self._decline(payment, decline_code)
        self._record("authorization", payment, payment["amount"], key)
        self._emit("payment.authorized", payment)
        if capture:
            self._add_capture(payment, payment["amount"], key)
        return 200, payment

    def _decline(self, payment: JSONObject, decline_code: str) -> tuple[int, JSONObject]:
        payment["status"] = "declined"
        payment["decline_code"] = decline_code
        self._emit("payment.declined", payment)
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": f"the card was declined ({decline_code})",
            "payment": payment,
        }
        return 402, {"error": error}

    def _add_capture(self, payment: JSONObject, amount: int, key: str | None) -> None:
        capture = {
            "id": _new_id("cap"),
            "amount": amount,
            "idempotency_key": key,
            "created": _now(),
        }
        payment["captures"].append(capture)
        payment["amount_captured"] += amount
        payment["status"] = "captured"
        self._record("capture", payment, amount, key)
        self._emit("payment.captured", payment, capture=capture)

    def _capture(self, payment_id: str, body: object, key: str | None) -> tuple[int, JSONObject]:
        requested = _amount(_params(body, frozenset({"amount"})), required=False)
        payment = self._find(payment_id)
        if payment["status"] not in ("authorized", "captured"):
            raise _refused(f"payment {payment_id} is {payment['status']} and cannot be captured")
        remaining = payment["amount"] - payment["amount_captured"]
        amount = requested or remaining
        if remaining == 0:
            raise _refused(f"payment {payment_id} is already fully captured")
        if amount > remaining:
            raise _refused(
                f"capture of {amount} exceeds the {remaining} left to capture on {payment_id}"
            )
        self._add_capture(payment, amount, key)
        return 200, payment

    def _void(self, payment_id: str, body: object, key: str | None) -> tuple[int, JSONObject]:
        _params(body, frozenset())
        payment = self._find(payment_id)
        if payment["status"] != "authorized" or payment["amount_captured"] != 0:
            raise _refused(
                f"payment {payment_id} is {payment['status']}; only an uncaptured "
                "authorization can be voided"
            )
        payment["status"] = "voided"
        payment["void"] = {"id": _new_id("void"), "idempotency_key": key, "created": _now()}
        self._record("void", payment, payment["amount"], key)
        self._emit("payment.voided", payment)
        return 200, payment

    def _refund(self, payment_id: str, body: object, key: str | None) -> tuple[int, JSONObject]:
        params = _params(body, frozenset({"amount", "reason"}))
        requested = _amount(params, required=False)
        reason = _text(params, "reason")
        payment = self._find(payment_id)
        remaining = payment["amount_captured"] - payment["amount_refunded"]
        amount = requested or remaining
        if remaining == 0:
            raise _refused(f"payment {payment_id} has nothing captured left to refund")
        if amount > remaining:
            raise _refused(f"refund of {amount} exceeds the {remaining} refundable on {payment_id}")
        refund: JSONObject = {
            "id": _new_id("re"),
            "object": "refund",
            "payment": payment_id,
            "amount": amount,
            "currency": payment["currency"],
            "status": "succeeded",
            "reason": reason,
            "idempotency_key": key,
            "created": _now(),
        }
        payment["refunds"].append(refund)
        payment["amount_refunded"] += amount
        self._record("refund", payment, amount, key)
        self._emit("refund.succeeded", payment, refund=refund)
        return 200, refund

    def _open_dispute(self, payment_id: str, body: object) -> JSONObject:
        params = _params(body, frozenset({"amount", "reason"}))
        requested = _amount(params, required=False)
        reason = _text(params, "reason") or "general"
        payment = self._find(payment_id)
        if payment["status"] != "captured":
            raise _invalid(
                f"payment {payment_id} is {payment['status']}; only a captured payment "
                "can be disputed"
            )
        disputed = sum(
            d["amount"]
            for d in self._disputes.values()
            if d["payment"] == payment_id and d["status"] != "won"
        )
        disputable = payment["amount_captured"] - payment["amount_refunded"] - disputed
        amount = requested or disputable
        if disputable <= 0:
            raise _invalid(f"payment {payment_id} has nothing left to dispute")
        if amount > disputable:
            raise _invalid(
                f"dispute of {amount} exceeds the {disputable} disputable on {payment_id}"
            )
        dispute: JSONObject = {
            "id": _new_id("dp"),
            "object": "dispute",
            "payment": payment_id,
            "amount": amount,
            "currency": payment["currency"],
            "reason": reason,
            "status": "open",
            "created": _now(),
        }
        self._disputes[dispute["id"]] = dispute
        self._record("dispute", payment, amount, None)
        self._emit("dispute.opened", payment, dispute=dispute)
        return dispute

    def _close_dispute(self, dispute_id: str, body: object) -> JSONObject:
        outcome = _params(body, frozenset({"outcome"})).get("outcome")
        if outcome not in ("won", "lost"):
            raise _invalid('outcome must be "won" or "lost"')
        dispute = self._disputes.get(dispute_id)
        if dispute is None:
            raise _missing(dispute_id, "dispute")
        if dispute["status"] != "open":
            raise _invalid(f"dispute {dispute_id} is already closed ({dispute['status']})")
        dispute["status"] = outcome
        payment = self._payments[dispute["payment"]]
        if outcome == "won":
            self._record("dispute_reversal", payment, dispute["amount"], None)
        self._emit("dispute.closed", payment, dispute=dispute)
        return dispute


def _now() -> int:
    return int(time.time())


def _existing_key_answer(record: _KeyRecord, fingerprint: str) -> _Answer:
    if record.answer is None:
        error = {
            "type": "idempotency_error",
            "code": "request_in_progress",
            "message": "a request with this idempotency key is still being processed; retry later",
        }
        return _Answer(409, _encode({"error": error}))
    if record.fingerprint != fingerprint:
        error = {
            "type": "idempotency_error",
            "message": "this idempotency key was already used with a different request",
        }
        return _Answer(400, _encode({"error": error}))
    return replace(record.answer, replayed=True)


# --- HTTP ---------------------------------------------------------------------------------


def _money_route(path: str) -> _Route | None:
    if path == "/v1/payments":
        return _Route("create")
    match = _PAYMENT_ACTION_PATH.fullmatch(path)
    if match is None:
        return None
    return _Route(_ACTIONS[match[2]], match[1])


def _error_answer(status: int, message: str) -> _Answer:
    error = {"type": "invalid_request_error", "message": message}
    return _Answer(status, _encode({"error": error}))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "payorch-sandbox/1"
    # headers and body go out in separate writes; Nagle would hold the body back ~40 ms
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections are closed eventually
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    @property
    def _state(self) -> SandboxState:
        return self.server.state

    def do_GET(self) -> None:
        if self._read_body() is None:
            return
        url = urlsplit(self.path)
        if url.path == "/_sandbox/ledger":
            self._send(self._state.ledger_answer())
        elif url.path == "/_sandbox/faults":
            self._send(_Answer(200, _encode(self._state.faults.to_json())))
        elif url.path == "/_sandbox/webhooks":
            self._send(_Answer(200, _encode(self._state.webhooks_json())))
        elif url.path == "/v1/payments":
            references = parse_qs(url.query).get("reference")
            self._send(self._state.list_payments(references[0] if references else None))
        elif (match := _PAYMENT_PATH.fullmatch(url.path)) is not None:
            self._send(self._state.get_payment(match[1]))
        else:
            self._send_unknown_route()

    def do_PUT(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        path = urlsplit(self.path).path
        try:
            if path == "/_sandbox/faults":
                faults = self._state.update_faults(_parse_body(raw))
                self._send(_Answer(200, _encode(faults.to_json())))
            elif path == "/_sandbox/webhooks":
                self._state.configure_webhooks(parse_webhook_settings(_parse_body(raw)))
                self._send(_Answer(200, _encode(self._state.webhooks_json())))
            else:
                self._send_unknown_route()
        except SandboxError as exc:
            self._send(_Answer(exc.status, _encode(exc.body)))

    def do_DELETE(self) -> None:
        if self._read_body() is None:
            return
        if urlsplit(self.path).path != "/_sandbox/webhooks":
            self._send_unknown_route()
            return
        self._state.disable_webhooks()
        self._send(_Answer(200, _encode(self._state.webhooks_json())))

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        path = urlsplit(self.path).path
        if path == "/_sandbox/reset":
            self._state.reset()
            self._send(_Answer(200, _encode({"reset": True})))
            return
        if (match := _DISPUTE_OPEN_PATH.fullmatch(path)) is not None:
            self._send(self._state.open_dispute(match[1], _parse_body(raw)))
            return
        if (match := _DISPUTE_CLOSE_PATH.fullmatch(path)) is not None:
            self._send(self._state.close_dispute(match[1], _parse_body(raw)))
            return
        route = _money_route(path)
        if route is None:
            self._send_unknown_route()
            return
        self._handle_money(route, path, raw)

    def _handle_money(self, route: _Route, path: str, raw: bytes) -> None:
        self._state.note_arrival()
        latency_ms = self._state.faults.latency_ms
        if latency_ms:
            time.sleep(latency_ms / 1000)
        key = self.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            self._send(_error_answer(400, "Idempotency-Key must be at most 255 characters"))
            return
        parsed = _parse_body(raw)
        admission = self._state.admit(key, _fingerprint("POST", path, raw, parsed))
        if isinstance(admission, _Answer):
            self._send(admission)
            return
        if admission.error:
            self._state.release(admission)
            self._send(_INJECTED_ERROR)
            return
        if admission.hang_s:
            time.sleep(admission.hang_s)  # the caller times out meanwhile; the key stays held
        answer = self._state.process(route, parsed, admission)
        if admission.drop:
            self._drop_connection()
            return
        self._send(answer)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering an unreadable one (and closing)."""
        problem = self._body_problem()
        if problem is None:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        # the unread body would be parsed as the next request; close instead
        self.close_connection = True
        self._send(_error_answer(*problem))
        return None

    def _body_problem(self) -> tuple[int, str] | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return 411, "send the body with a Content-Length"
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            return 400, "invalid Content-Length"
        if int(length) > MAX_BODY_BYTES:
            return 413, "request body too large"
        return None

    def _send_unknown_route(self) -> None:
        self._send(_error_answer(404, f"unrecognized request URL ({self.command} {self.path})"))

    def _send(self, answer: _Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.body)))
            if answer.replayed:
                self.send_header("Idempotent-Replayed", "true")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:
            # the caller gave up (a hang fault) or the server is stopping: nobody to tell
            self.close_connection = True

    def _drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default of 5 drops connections under a parallel benchmark

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall offline
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down keep-alive connections so their handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SandboxServer:
    """The sandbox provider on ``host:port`` (port 0 picks a free one); bound on creation."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = SandboxState()
        self._httpd = _HTTPServer((host, port), self.state)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SandboxServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"payorch-sandbox-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def configure_webhooks(
        self,
        url: str,
        secret: str,
        *,
        max_attempts: int = 8,
        initial_delay_ms: int = 200,
        max_delay_ms: int = 30_000,
        timeout_ms: int = 5_000,
    ) -> WebhookSettings:
        """Send signed webhooks to ``url`` from now on (``ValueError`` on bad settings)."""
        settings = WebhookSettings(
            url,
            secret,
            max_attempts=max_attempts,
            initial_delay_ms=initial_delay_ms,
            max_delay_ms=max_delay_ms,
            timeout_ms=timeout_ms,
        )
        self.state.configure_webhooks(settings)
        return settings

    def disable_webhooks(self) -> None:
        self.state.disable_webhooks()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()
        self.state.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8181`` for IPv6) into its parts."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address must look like host:port, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def start_sandbox(listen: str = "127.0.0.1:0") -> SandboxServer:
    host, port = parse_listen(listen)
    return SandboxServer(host, port).start()


def run_sandbox(
    listen: str, *, webhook_url: str | None = None, webhook_secret: str | None = None
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the ``payorch sandbox`` command),
    sending webhooks to ``webhook_url`` when given (with ``webhook_secret``, both or neither;
    ``ValueError`` before anything starts otherwise)."""
    webhooks: WebhookSettings | None = None
    if webhook_url is not None or webhook_secret is not None:
        if webhook_url is None or webhook_secret is None:
            raise ValueError("sandbox webhooks need both a URL and a secret")
        webhooks = WebhookSettings(webhook_url, webhook_secret)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with start_sandbox(listen) as server:
            logger.info("sandbox provider listening on %s", server.url)
            if webhooks is not None:
                server.state.configure_webhooks(webhooks)
                logger.info("sandbox provider sending webhooks to %s", webhooks.url)
            stop.wait()
            logger.info("sandbox provider stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
