"""The shared machinery of provider emulators: a real HTTP server on loopback, a ledger of
the money it moved, one-shot faults for tests, and a Stripe-style idempotency store.

An emulator stands in for a provider we cannot reach from here. Each subclass speaks its
provider's documented wire format (paths, auth, bodies, error shapes, idempotency); this base
knows none of them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.adapters.contract import Movement


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Drop:
    """Process the request, then cut the connection without answering."""


class Fault:
    """A one-shot fault for the next money-moving request."""

    def __init__(
        self, *, reply: Reply | None = None, drop: bool = False, hang: float = 0.0
    ) -> None:
        self.reply, self.drop, self.hang = reply, drop, hang


class IdempotencyStore:
    """Stripe's semantics: the first answer under a key is stored and replayed for the same
    request; another request under the key is an error; a key in flight is a conflict."""

    IN_FLIGHT = object()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, object]] = {}

    def begin(self, key: str, fingerprint: str) -> Reply | str | None:
        """None: go ahead. A Reply: replay it. "mismatch" or "in_flight": refuse."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = (fingerprint, self.IN_FLIGHT)
                return None
            stored_fingerprint, answer = entry
        if stored_fingerprint != fingerprint:
            return "mismatch"
        if answer is self.IN_FLIGHT:
            return "in_flight"
        assert isinstance(answer, Reply)
        return answer

    def finish(self, key: str, reply: Reply | None) -> None:
        """Store the answer (None forgets the key: nothing was processed)."""
        with self._lock:
            if reply is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = (self._entries[key][0], reply)


class Emulator:
    """Subclasses implement ``handle``; tests use the control methods."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._movements: list[Movement] = []
        self._faults: deque[Fault] = deque()
        self.requests: list[Request] = []
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer waits ~40 ms for an ACK

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                emulator._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: stop() waits for it, and tests start and stop many.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Emulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- control, for tests ------------------------------------------------------------

    def movements(self) -> list[Movement]:
        with self.lock:
            return list(self._movements)

    def move(self, kind: str, amount: int, currency: str) -> None:
        with self.lock:
            self._movements.append(Movement(kind, amount, currency))

    def drop_next_response(self) -> None:
        self._faults.append(Fault(drop=True))

    def fail_next(self, reply: Reply) -> None:
        """Answer the next money-moving request with ``reply`` without processing it."""
        self._faults.append(Fault(reply=reply))

    def hang_next(self, seconds: float) -> None:
        """Hold the next money-moving request ``seconds`` before processing it."""
        self._faults.append(Fault(hang=seconds))

    # --- serving -----------------------------------------------------------------------

    def handle(self, request: Request) -> Reply | Drop:
        raise NotImplementedError

    def moves_money(self, request: Request) -> bool:
        """Which requests faults apply to: by default every POST."""
        return request.method == "POST"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=handler.rfile.read(length) if length else b"",
        )
        with self.lock:
            self.requests.append(request)
        fault = self._faults.popleft() if self.moves_money(request) and self._faults else None
        if fault is not None and fault.reply is not None:
            self._write(handler, fault.reply)
            return
        if fault is not None and fault.hang:
            time.sleep(fault.hang)
        reply = self.handle(request)
        if isinstance(reply, Drop) or (fault is not None and fault.drop):
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(handler, reply)

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass


Route = Callable[[Request], Reply | Drop]
