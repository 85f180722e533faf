"""What every HTTP provider adapter shares: sending a request and telling "certainly not
sent" from "sent, outcome unknown", the Retry-After hint, and strict reading of JSON answers.
Provider wire formats stay in each adapter; this module knows none of them."""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlencode, urlsplit
from urllib.request import getproxies_environment, proxy_bypass

import certifi

from adapters._webhooks import no_secret
from orchestrator.ports import (
    ProviderNotReached,
    ProviderOutcomeUnknown,
    WebhookEvent,
    WebhookVerifier,
)
from orchestrator.tracing import client_span

JSONObject = dict[str, object]


class MalformedAnswerError(Exception):
    """The provider's answer does not have the shape we rely on."""


class Answer:
    """A provider's HTTP answer, read whole: its status, its headers (names in lower case)
    and its body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes = b"") -> None:
        self.status_code = status_code
        self.headers = {name.lower(): value for name, value in headers.items()}
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> object:
        """The body as JSON; ``ValueError`` when it is not."""
        return json.loads(self.content)

    @classmethod
    def of_json(
        cls, status_code: int, body: object, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """An answer with a JSON body (tests build the answers they classify with it)."""
        return cls(status_code, headers or {}, json.dumps(body).encode())


class _Failed(Exception):
    """A request that failed, named as our logs and errors name it (``ConnectError``,
    ``ReadTimeout``...); ``sent``: whether any byte of it may have left."""

    def __init__(self, error_type: str, *, sent: bool) -> None:
        super().__init__(error_type)
        self.error_type, self.sent = error_type, sent  # error.type on a trace's client span


@cache
def default_tls() -> ssl.SSLContext:
    """The TLS context provider calls verify with: certifi's CA bundle (as httpx used), or
    OpenSSL's own store when ``SSL_CERT_FILE``/``SSL_CERT_DIR`` name one. Made once per
    process: loading a bundle takes tens of ms."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Origin:
    """Where a provider's requests go: its scheme, host and port, through the proxy the
    standard variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) name for it, if any.
    Through a proxy, a tunnel (``CONNECT``) carries the request, TLS inside it end to end."""

    def __init__(self, base_url: str, tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"a provider base URL must be http(s)://host[:port][/path], not {base_url!r}"
            )
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        # never the base URL's user:password, if one was written into it
        self.url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{self.prefix}"
        self.tls = (tls or default_tls()) if self.https else None
        self.proxy: tuple[str, int, dict[str, str]] | None = None
        proxy = getproxies_environment().get(parts.scheme)
        if proxy and not proxy_bypass(self.host):
            self.proxy = _proxy(proxy)

    def connection(self, connect_timeout: float) -> http.client.HTTPConnection:
        """A new connection, not yet connected."""
        host, port = (self.proxy[0], self.proxy[1]) if self.proxy else (self.host, self.port)
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        if self.proxy:
            conn.set_tunnel(self.host, self.port, headers=self.proxy[2])
        return conn


def _proxy(url: str) -> tuple[str, int, dict[str, str]]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"a proxy for provider calls must be http://host:port, not {parts.scheme}://..."
        )
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return parts.hostname, parts.port or 80, headers


class _Connection:
    """The one keep-alive connection a thread sends a provider's requests on: a thread
    sends one request at a time, so a connection of its own never waits for another's."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def request(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str], *,
        timeout: float, connect_timeout: float,
    ) -> Answer:  # fmt: skip
        conn = self._connected(connect_timeout)
        assert conn.sock is not None
        try:
            conn.sock.settimeout(timeout)
            conn.request(method, target, body=body, headers=headers)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # Some of the request may have left (a header http.client refuses is refused
            # before any byte is sent, but nothing here tells which): the provider may act.
            self.close()
            name = "WriteTimeout" if isinstance(exc, TimeoutError) else "WriteError"
            raise _Failed(name, sent=True) from exc
        try:
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            self.close()
            raise _Failed("ReadTimeout", sent=True) from exc
        except (http.client.HTTPException, ValueError, ConnectionError) as exc:
            # the connection ended, or what came back is not HTTP: after the request left
            self.close()
            # (http.client's RemoteDisconnected is both: the peer closed without answering)
            protocol = isinstance(exc, (http.client.HTTPException, ValueError))
            raise _Failed("RemoteProtocolError" if protocol else "ReadError", sent=True) from exc
        except OSError as exc:
            self.close()
            raise _Failed("ReadError", sent=True) from exc
        if response.will_close:
            self.close()
        return Answer(response.status, _headers(response.getheaders()), content)

    def _connected(self, connect_timeout: float) -> http.client.HTTPConnection:
        """The thread's connection, connected; a kept one the provider has closed (its socket
        reads EOF, or anything at all between answers) is replaced. Nothing of the request
        has left while this raises."""
        kept = self.conn
        if kept is not None and (kept.sock is None or _readable(kept.sock)):
            self.close()
        if self.conn is None:
            conn = self.origin.connection(connect_timeout)
            try:
                conn.connect()
            except TimeoutError as exc:
                conn.close()
                raise _Failed("ConnectTimeout", sent=False) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _Failed("ConnectError", sent=False) from exc
            self.conn = conn
        return self.conn


def _readable(sock: socket.socket) -> bool:
    """Whether a kept connection has something to read between answers: its end (EOF, a
    reset) or bytes no request asked for. ``poll``: ``select`` fails past descriptor 1023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Header names in lower case; a repeated header's values joined with ", "."""
    headers: dict[str, str] = {}
    for given, value in pairs:
        name = given.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class ProviderHttp:
    """One provider's HTTP client, on the standard library's HTTP/1.1 connections: each
    thread that calls the provider keeps one keep-alive connection of its own (a thread
    sends one request at a time). It tells "certainly not sent" (the connection, its TLS
    handshake or its proxy tunnel failed: ``ProviderNotReached``) from "sent, outcome
    unknown" (anything after the first byte: ``ProviderOutcomeUnknown``). httpx did the
    same at 2.5 times the CPU per call (``bench/http_client.py``)."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        honors_idempotency_keys: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.provider = provider
        self._origin = _Origin(base_url, tls)
        self.base_url = self._origin.url
        self.connect_timeout = connect_timeout
        self.honors_idempotency_keys = honors_idempotency_keys
        self._local = threading.local()
        # weakly: a thread that ends takes its connection with it (closed on collection)
        self._owned: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._closed = False
        self._lock = threading.Lock()
        self.log = logging.getLogger(f"payorch.adapters.{provider}")

    def close(self) -> None:
        """Closes every thread's connection; no request is sent after."""
        with self._lock:
            self._closed = True
            owned = list(self._owned)
        for connection in owned:
            connection.close()

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"the HTTP client of {self.provider} is closed")
                connection = _Connection(self._origin)
                self._owned.add(connection)
            self._local.connection = connection
        elif self._closed:
            raise RuntimeError(f"the HTTP client of {self.provider} is closed")
        return connection

    def send(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        what: str,
        key: str = "",
        json: object = None,
        content: bytes | str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Sends the request within ``timeout`` seconds per step (connecting within the
        connect timeout). A failure before sending raises ``ProviderNotReached``; after
        sending, ``ProviderOutcomeUnknown``, which asks for a lookup first where the provider
        would not deduplicate a re-sent request."""
        started = time.monotonic()
        target = self._origin.prefix + path + (f"?{urlencode(params)}" if params else "")
        body, sent_headers = _body(json, content), dict(headers or {})
        if json is not None:
            sent_headers.setdefault("Content-Type", "application/json")
        connection = self._connection()
        try:
            with client_span(method, self.base_url + target, sent_headers) as traced:
                answer = connection.request(
                    method, target, body, sent_headers,
                    timeout=timeout, connect_timeout=min(self.connect_timeout, timeout),
                )  # fmt: skip
                traced(answer.status_code)
        except _Failed as exc:
            self._log(what, key, exc.error_type, started)
            if not exc.sent:
                raise ProviderNotReached(f"{self.provider} not reached: {exc.error_type}") from exc
            raise ProviderOutcomeUnknown(
                f"{self.provider} outcome unknown: {exc.error_type} after sending",
                lookup_first=not self.honors_idempotency_keys,
            ) from exc
        self._log(what, key, str(answer.status_code), started, quiet=answer.status_code < 500)
        return answer

    def _log(self, what: str, key: str, result: str, started: float, quiet: bool = False) -> None:
        # Never headers (credentials) nor bodies (personal data): the operation, its key,
        # what came back and how long it took. Answers at DEBUG, trouble at INFO.
        self.log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s key=%s -> %s in %.1f ms",
            self.provider, what, key, result, (time.monotonic() - started) * 1000,
        )  # fmt: skip


def _body(json_body: object, content: bytes | str | None) -> bytes | None:
    if json_body is not None:
        return json.dumps(json_body, separators=(",", ":")).encode()
    if isinstance(content, str):
        return content.encode()
    return content


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


def retry_after(response: Answer) -> float | None:
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


def json_object(response: Answer) -> JSONObject:
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
