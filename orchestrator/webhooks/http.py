"""payorch's HTTP side: ``POST /webhooks/{provider}``, liveness and readiness.

Served by uvicorn (httptools' parser) in a thread of its own, with its own event loop, and a
small ASGI app. Bodies are read whole (up to a limit) and handed to the intake as raw bytes:
verification happens over exactly what arrived. Nothing of the body or the signature headers
is logged.

What a slow or hostile client can hold, and for how long (``HttpLimits``, and ``max_body``):
- a connection that has not sent a whole request head within ``header_timeout`` is closed,
  from its first byte (or from its opening) to the end of its headers: a client trickling
  header bytes is cut off like one that sends nothing. uvicorn has no such timer: it is ours
  (``_Protocol``);
- a body not received whole within ``body_timeout`` is answered 408 and the connection
  closed (uvicorn has no body timer either: the app puts a deadline on ``receive``);
- a body declared over ``max_body`` is answered 413 before any of it is read;
- an idle keep-alive connection is closed after ``keep_alive`` seconds (uvicorn's own);
- connections over ``max_connections`` are answered 503 and closed as soon as they open.

The intake writes to the event store synchronously: it runs on a bounded pool of threads,
never on the event loop. Deliveries that arrive while the intake is busy are handed over
together and stored in one transaction (``WebhookIntake.receive_many``); each is
acknowledged only once the transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from orchestrator.metrics import Metrics
from orchestrator.ports import WebhookRejected
from orchestrator.webhooks.intake import Receipt, Request, WebhookIntake

log = logging.getLogger("payorch.http")

MAX_BODY = 1024 * 1024  # bytes; providers' events are a few kB
MAX_BATCH = 128  # deliveries stored in one transaction
_PREFIX = "/webhooks/"
# Adyen expects this exact body to consider a notification accepted.
_ACCEPTED_BODIES = {"adyen": b"[accepted]"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the HTTP side. Seconds, bytes and counts."""

    header_timeout: float = 10.0  # to receive a request's line and headers
    body_timeout: float = 10.0  # to receive its body, from the end of its headers
    keep_alive: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open at once; more are answered 503 and closed
    intake_threads: int = 2  # batches of deliveries verified and stored at once


class HttpServer:
    def __init__(
        self,
        listen: str,
        intake: WebhookIntake,
        *,
        ready: Callable[[], bool],
        max_body: int = MAX_BODY,
        limits: HttpLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Binds at once (a taken port fails here, not in a thread); serves from ``start``.
        ``metrics``: served at ``GET /metrics``, and told each delivery's result (none: 404)."""
        limits = limits or HttpLimits()
        self._pool = ThreadPoolExecutor(limits.intake_threads, thread_name_prefix="payorch-http")
        app = _App(intake, ready, limits, max_body, self._pool, metrics=metrics)
        self._server = AsgiServer(listen, app, limits)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> HttpServer:
        self._server.start()
        return self

    def stop(self) -> None:
        """Stops accepting, lets requests in progress finish (at most about a second), then
        closes every connection."""
        self._server.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


class AsgiServer:
    """An ASGI app served by uvicorn with ``limits``, in a thread with its own event loop.
    (``bench/webhooks.py`` serves its empty ceiling app with it too.)"""

    def __init__(self, listen: str, app: Callable[..., Awaitable[None]], limits: HttpLimits):
        self._socket = _bind(listen)
        config = uvicorn.Config(
            app,
            http=_protocol(limits),
            loop="asyncio",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            headers=[("server", "payorch")],
            timeout_keep_alive=max(1, round(limits.keep_alive)),
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="payorch-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self) -> AsgiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._socket.close()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:
            log.exception("the HTTP server stopped")


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)  # providers retry on refused connections: take bursts
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- the connection: timers uvicorn does not have -----------------------------------------


def _protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    class _Protocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a request-head deadline and a connection cap.
        It relies on uvicorn's parser callbacks (``on_message_begin``, ``on_headers_complete``)
        and its ``connections`` set: tests/e2e/test_http_server.py fails if an upgrade of
        uvicorn changes them."""

        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                now = self.loop.time()
                if now - _refusals.last_logged >= 1.0:  # one line a second, not one a refusal
                    _refusals.last_logged = now
                    log.warning("HTTP connections refused: %d open", len(self.connections) - 1)
                transport.write(_OVERLOADED)
                transport.close()
                return
            self._arm_head_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:  # a keep-alive connection's next request
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(limits.header_timeout, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.debug(
                    "HTTP connection closed: no request head within %gs", limits.header_timeout
                )
                self.transport.close()

    return _Protocol


class _refusals:  # noqa: N801 (a namespace)
    last_logged = float("-inf")


def _overloaded() -> bytes:
    body = json.dumps({"error": "too many connections"}).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


_OVERLOADED = _overloaded()


# --- the app: routing, body limits, the intake off the loop -------------------------------


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _App:
    def __init__(
        self,
        intake: WebhookIntake,
        ready: Callable[[], bool],
        limits: HttpLimits,
        max_body: int,
        pool: ThreadPoolExecutor,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.intake = intake
        self.metrics = metrics
        self.ready = ready
        self.limits = limits
        self.max_body = max_body
        self.pool = pool
        self.batches = _Batches(intake, pool, limits.intake_threads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off, websockets are not served
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = _path(scope["path"])
        method = scope["method"]
        try:
            body = await self._body(receive, headers)
        except _Refused as e:  # the body was not read whole: the connection cannot be reused
            await _json(send, e.status, {"error": e.reason}, close=True)
            return
        if method == "GET":
            await self._get(send, path)
        elif method == "POST":
            await self._post(send, path, headers, body)
        else:
            await _json(send, 501, {"error": "not implemented"})

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        """The whole body within ``body_timeout``; over ``max_body`` refused before reading."""
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise _Refused(413, f"body over {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Refused(400, "client disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:  # chunked: no length was declared
                        raise _Refused(413, f"body over {self.max_body} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            log.debug("HTTP request body not received within %gs", self.limits.body_timeout)
            raise _Refused(408, "request body not received in time") from None

    async def _get(self, send: Send, path: str) -> None:
        if path == "/healthz":
            await _json(send, 200, {"status": "alive"})
        elif path == "/readyz":
            ok = await asyncio.get_running_loop().run_in_executor(self.pool, _safe, self.ready)
            await _json(send, 200 if ok else 503, {"status": "ready" if ok else "not ready"})
        elif path == "/metrics" and self.metrics is not None:
            # The collector reads the store: off the event loop, like the intake.
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self.pool, self.metrics.render)
            await _send(send, 200, body, METRICS_CONTENT_TYPE.encode())
        else:
            await _json(send, 404, {"error": "not found"})

    async def _post(self, send: Send, path: str, headers: dict[str, str], body: bytes) -> None:
        provider = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
        if not provider or "/" in provider or not self.intake.knows(provider):
            await _json(send, 404, {"error": "unknown webhook endpoint"})
            return
        if "content-length" not in headers:
            await _json(send, 411, {"error": "Content-Length required"})
            return
        try:
            receipt = await self.batches.receive(Request(provider, headers, body))
        except WebhookRejected as e:
            self._count(provider, f"refused_{e.status}")
            log.info("webhook %s refused %d: %s", provider, e.status, e.reason)
            await _json(send, e.status, {"error": e.reason})
            return
        except Exception:  # the provider will retry: answer 500, keep the details here
            self._count(provider, "error")
            log.exception("webhook %s could not be stored", provider)
            await _json(send, 500, {"error": "could not store the event; retry later"})
            return
        self._count(provider, "stored" if receipt.stored or not receipt.duplicates else "duplicate")
        accepted = _ACCEPTED_BODIES.get(provider)
        if accepted is not None:
            await _send(send, 200, accepted, b"text/plain")
        else:
            await _send(send, 200, _receipt_body(receipt), b"application/json")

    def _count(self, provider: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_delivery(provider, result)


class _Batches:
    """Hands deliveries to the intake from the event loop, in batches: at most ``workers``
    batches are verified and stored at once, each in one store transaction; the deliveries
    that arrive meanwhile wait and make the next batch. A lone delivery goes at once."""

    def __init__(self, intake: WebhookIntake, pool: ThreadPoolExecutor, workers: int) -> None:
        self.intake = intake
        self.pool = pool
        self.workers = workers
        self.pending: list[tuple[Request, asyncio.Future[Receipt]]] = []
        self.running = 0

    async def receive(self, request: Request) -> Receipt:
        answer: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self.pending.append((request, answer))
        self._dispatch()
        return await answer

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending and self.running < self.workers:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            self.running += 1
            job = loop.run_in_executor(
                self.pool, self.intake.receive_many, [request for request, _ in batch]
            )
            job.add_done_callback(functools.partial(self._done, batch))

    def _done(
        self,
        batch: list[tuple[Request, asyncio.Future[Receipt]]],
        job: asyncio.Future[list[Receipt | Exception]],
    ) -> None:
        self.running -= 1
        failure = None if job.cancelled() else job.exception()
        for i, (_, answer) in enumerate(batch):
            if answer.done():
                continue  # its request was cancelled (the server is stopping)
            if job.cancelled():
                answer.cancel()
            elif failure is not None:
                answer.set_exception(failure)
            else:
                result = job.result()[i]
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
        self._dispatch()


async def _json(send: Send, status: int, body: dict[str, object], *, close: bool = False) -> None:
    await _send(send, status, json.dumps(body).encode(), b"application/json", close=close)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, *, close: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@functools.lru_cache(maxsize=64)
def _receipt_body(receipt: Receipt) -> bytes:
    """A receipt's answer, rendered once: nearly every delivery is one of a few."""
    return json.dumps({"stored": receipt.stored, "duplicates": receipt.duplicates}).encode()


def _path(path: str) -> str:
    """The path a request is routed on: without its query string (providers and probes may
    add one, e.g. ``?source=...``; uvicorn has split it off already) and without one trailing
    slash, which some dashboards append. An absolute-form target (``http://host/path``)
    gives its path (httptools parses it)."""
    return path[:-1] if path.endswith("/") and path != "/" else path


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return False
