"""What every HTTP provider adapter shares: sending a request and telling "certainly not
sent" from "sent, outcome unknown", the Retry-After hint, and strict reading of JSON answers.
Provider wire formats stay in each adapter; this module knows none of them."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import httpx

from adapters._webhooks import no_secret
from orchestrator.ports import (
    ProviderNotReached,
    ProviderOutcomeUnknown,
    WebhookEvent,
    WebhookVerifier,
)

JSONObject = dict[str, object]

# Raised before a single byte of the request left: the provider cannot have acted on it.
NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


# A thread has one request in flight; a second connection covers one the provider is closing.
_PER_THREAD: Final = httpx.Limits(max_connections=2, max_keepalive_connections=1)


class MalformedAnswerError(Exception):
    """The provider's answer does not have the shape we rely on."""


class ProviderHttp:
    """One provider's HTTP client. Each thread that calls the provider gets a small pool of
    its own (a thread sends one request at a time): one pool shared by every gRPC worker
    made each request wait for the pool's lock, and scan every idle connection with a
    ``poll`` under it (bench/README.md: 18 % of a create's time on that lock). An injected
    ``client`` is shared as given."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        honors_idempotency_keys: bool = True,
        client: httpx.Client | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.honors_idempotency_keys = honors_idempotency_keys
        self._shared = client
        # made once: loading the CA bundle takes tens of ms, a client with this context 1 ms
        self._tls = None if client is not None else httpx.create_ssl_context()
        self._local = threading.local()
        # weakly: a thread that ends takes its client with it (its sockets close on collection)
        self._owned: weakref.WeakSet[httpx.Client] = weakref.WeakSet()
        self._closed = False
        self._lock = threading.Lock()
        self.log = logging.getLogger(f"payorch.adapters.{provider}")
        if client is None:
            # The process's first client takes 15 ms (httpx's lazy imports), the next ones
            # 0.2 ms: paid here, at start-up, not between a payment's intent and its call.
            self._client()

    def close(self) -> None:
        """Closes the clients it made (not an injected one); no request is sent after."""
        with self._lock:
            self._closed = True
            owned = list(self._owned)
        for client in owned:
            client.close()

    def _client(self) -> httpx.Client:
        if self._shared is not None:
            return self._shared
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"the HTTP client of {self.provider} is closed")
                client = httpx.Client(limits=_PER_THREAD, verify=self._tls or True)
                self._owned.add(client)
            self._local.client = client
        return client

    def send(
        self, method: str, path: str, *, timeout: float, what: str, key: str = "", **kwargs: Any
    ) -> httpx.Response:
        """Sends the request within ``timeout`` seconds. A failure before sending raises
        ``ProviderNotReached``; after sending, ``ProviderOutcomeUnknown``, which asks for a
        lookup first where the provider would not deduplicate a re-sent request."""
        started = time.monotonic()
        try:
            response = self._client().request(
                method,
                self.base_url + path,
                timeout=httpx.Timeout(timeout, connect=min(self.connect_timeout, timeout)),
                **kwargs,
            )
        except NOT_SENT as exc:
            self._log(what, key, type(exc).__name__, started)
            raise ProviderNotReached(f"{self.provider} not reached: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self._log(what, key, type(exc).__name__, started)
            raise ProviderOutcomeUnknown(
                f"{self.provider} outcome unknown: {type(exc).__name__} after sending",
                lookup_first=not self.honors_idempotency_keys,
            ) from exc
        self._log(what, key, str(response.status_code), started, quiet=response.status_code < 500)
        return response

    def _log(self, what: str, key: str, result: str, started: float, quiet: bool = False) -> None:
        # Never headers (credentials) nor bodies (personal data): the operation, its key,
        # what came back and how long it took. Answers at DEBUG, trouble at INFO.
        self.log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s key=%s -> %s in %.1f ms",
            self.provider, what, key, result, (time.monotonic() - started) * 1000,
        )  # fmt: skip


class HttpAdapter:
    """What every HTTP adapter shares: it owns a ``ProviderHttp`` as ``_http``, and verifies
    its provider's webhooks with ``_webhooks`` (``None``: no webhook secret configured)."""

    _http: ProviderHttp
    _webhooks: WebhookVerifier | None = None

    @property
    def has_webhook_secret(self) -> bool:
        """Whether it can verify its provider's webhooks: without a secret it refuses all."""
        return self._webhooks is not None

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        if self._webhooks is None:
            raise no_secret()
        return self._webhooks.verify_webhook(headers, body, now=now)

    def close(self) -> None:
        """Close the HTTP client, unless the caller passed in their own."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header of an answer, in seconds."""
    return retry_after_header(response.headers)


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """A Retry-After value in seconds (it may be seconds or an HTTP date); names are matched
    without regard to case."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def json_object(response: httpx.Response) -> JSONObject:
    try:
        value: object = response.json()
    except ValueError as exc:
        raise MalformedAnswerError("body is not JSON") from exc
    return as_object(value)


def as_object(value: object) -> JSONObject:
    if not isinstance(value, dict):
        raise MalformedAnswerError("expected a JSON object")
    return value


def get_list(obj: JSONObject, name: str) -> list[object]:
    value = obj.get(name)
    if not isinstance(value, list):
        raise MalformedAnswerError(f"{name} is not a list")
    return value


def get_str(obj: JSONObject, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedAnswerError(f"{name} is not a non-empty string")
    return value


def get_int(obj: JSONObject, name: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedAnswerError(f"{name} is not an integer")
    return value


def optional_str(obj: JSONObject, name: str) -> str:
    value = obj.get(name)
    return value if isinstance(value, str) else ""
