"""A local OTLP/HTTP trace receiver for bench/metrics.py: it decodes every
ExportTraceServiceRequest it is sent (as a collector would, so the export is paid in full on
the server's side) and counts spans; ``GET /count`` answers ``{"spans": n, "requests": r}``.

    python bench/otlp_sink.py --listen 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ANSWER = ExportTraceServiceResponse().SerializeToString()


class Counts:
    def __init__(self) -> None:
        self.spans = self.requests = 0
        self.lock = threading.Lock()


def handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector offers

        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with counts.lock:
                counts.spans += spans
                counts.requests += 1
            self._answer("application/x-protobuf", _ANSWER)

        def do_GET(self) -> None:
            with counts.lock:
                body = json.dumps({"spans": counts.spans, "requests": counts.requests})
            self._answer("application/json", body.encode())

        def _answer(self, content_type: str, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(Counts()))
    print(f"otlp sink listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
