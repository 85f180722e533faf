"""payorch's HTTP side: ``POST /webhooks/{provider}``, liveness and readiness.

Bodies are read whole (up to a limit) and handed to the intake as raw bytes: verification
happens over exactly what arrived. Nothing of the body or the signature headers is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from orchestrator.ports import WebhookRejected
from orchestrator.webhooks.intake import WebhookIntake

log = logging.getLogger("payorch.http")

MAX_BODY = 1024 * 1024  # bytes; providers' events are a few kB
_PREFIX = "/webhooks/"
# Adyen expects this exact body to consider a notification accepted.
_ACCEPTED_BODIES = {"adyen": b"[accepted]"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # providers retry on refused connections: take bursts


class HttpServer:
    def __init__(
        self,
        listen: str,
        intake: WebhookIntake,
        *,
        ready: Callable[[], bool],
        max_body: int = MAX_BODY,
    ) -> None:
        host, _, port = listen.rpartition(":")
        handler = _handler(intake, ready, max_body)
        self._server = _Server((host.strip("[]") or "127.0.0.1", int(port)), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    intake: WebhookIntake, ready: Callable[[], bool], max_body: int
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        server_version = "payorch"
        sys_version = ""

        def log_message(self, format: str, *args: object) -> None:
            pass  # the request line is logged below, without bodies or headers

        def do_GET(self) -> None:
            path = _path(self.path)
            if path == "/healthz":
                self._json(200, {"status": "alive"})
            elif path == "/readyz":
                ok = _safe(ready)
                self._json(200 if ok else 503, {"status": "ready" if ok else "not ready"})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            path = _path(self.path)
            provider = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
            if not provider or "/" in provider or not intake.knows(provider):
                self._drain_and_refuse(404, "unknown webhook endpoint")
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._refuse(411, "Content-Length required")
                return
            if int(length) > max_body:
                self._refuse(413, f"body over {max_body} bytes")
                return
            body = self.rfile.read(int(length))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                receipt = intake.receive(provider, headers, body)
            except WebhookRejected as e:
                log.info("webhook %s refused %d: %s", provider, e.status, e.reason)
                self._json(e.status, {"error": e.reason})
                return
            except Exception:  # the provider will retry: answer 500, keep the details here
                log.exception("webhook %s could not be stored", provider)
                self._json(500, {"error": "could not store the event; retry later"})
                return
            accepted = _ACCEPTED_BODIES.get(provider)
            if accepted is not None:
                self._send(200, accepted, "text/plain")
            else:
                self._json(200, {"stored": receipt.stored, "duplicates": receipt.duplicates})

        def _drain_and_refuse(self, status: int, reason: str) -> None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= max_body:
                self.rfile.read(int(length))
                self._json(status, {"error": reason})
            else:
                self._refuse(status, reason)

        def _refuse(self, status: int, reason: str) -> None:
            # The body was not read: the connection cannot be reused.
            self.close_connection = True
            self._json(status, {"error": reason})

        def _json(self, status: int, body: dict[str, object]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

    return Handler


def _path(target: str) -> str:
    """The path a request is routed on: without its query string (providers and probes may
    add one, e.g. ``?source=...``) and without one trailing slash, which some dashboards
    append. ``http.server`` has already collapsed a leading ``//``, which ``urlsplit`` would
    read as a host; an absolute-form target (``http://host/path``) gives its path."""
    path = urlsplit(target).path
    return path[:-1] if path.endswith("/") and path != "/" else path


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return False
