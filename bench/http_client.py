"""What one provider request costs the calling process, per HTTP client, against the sandbox.

One thread posts ``--requests`` authorizations (a new Idempotency-Key each, a JSON body, the
answer read and parsed) to a sandbox in its own process (``payorch sandbox``, port 0, every
fault off), over one kept-alive connection, with:

- ``ProviderHttp``: payorch's client (``adapters/_http.py``, on ``http.client``);
- ``http.client``: the standard library's connection, used bare;
- ``httpx.Client``: what ``ProviderHttp`` sent through before (a client per thread);
- ``httpx transport``: httpx's transport called directly, without the client's layers;
- ``urllib3``: a one-connection pool.

Prints the CPU and wall time per request of this process (``time.process_time``, so the
sandbox's own work is not counted), and each client's CPU as a ratio to ``ProviderHttp``'s.
The rounds rotate through the clients ``--rounds`` times; medians are reported.

    .venv/bin/python bench/http_client.py --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters._http import ProviderHttp  # noqa: E402

BODY = {"amount": 1000, "currency": "USD", "payment_method": "pm_card_visa", "capture": False}
PATH = "/v1/payments"
TIMEOUT = 5.0


def clients(url: str) -> dict[str, Callable[[], None]]:
    host, port = url.split("//")[1].split(":")
    ours = ProviderHttp("sandbox", url)

    def provider_http() -> None:
        answer = ours.send(
            "POST", PATH, timeout=TIMEOUT, what="bench", key="k", json=BODY,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )  # fmt: skip
        answer.json()

    bare = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)

    def stdlib() -> None:
        bare.request(
            "POST", PATH, body=json.dumps(BODY).encode(),
            headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
        )  # fmt: skip
        json.loads(bare.getresponse().read())

    limits = httpx.Limits(max_connections=2, max_keepalive_connections=1)
    client = httpx.Client(limits=limits)
    timeout = httpx.Timeout(TIMEOUT, connect=1.0)

    def httpx_client() -> None:
        client.request(
            "POST", url + PATH, json=BODY, timeout=timeout,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ).json()  # fmt: skip

    transport = httpx.HTTPTransport(limits=limits)
    extensions = {"timeout": timeout.as_dict()}

    def httpx_transport() -> None:
        request = httpx.Request(
            "POST", url + PATH, json=BODY, extensions=extensions,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )  # fmt: skip
        response = transport.handle_request(request)
        response.read()
        response.json()

    pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1)
    u3_timeout = urllib3.Timeout(connect=1.0, read=TIMEOUT)

    def urllib3_pool() -> None:
        response = pool.urlopen(
            "POST", PATH, body=json.dumps(BODY).encode(), retries=False, redirect=False,
            timeout=u3_timeout, preload_content=True,
            headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
        )  # fmt: skip
        json.loads(response.data)

    return {
        "ProviderHttp": provider_http,
        "http.client": stdlib,
        "httpx.Client": httpx_client,
        "httpx transport": httpx_transport,
        "urllib3": urllib3_pool,
    }


def measure(call: Callable[[], None], requests: int) -> tuple[float, float]:
    for _ in range(min(200, requests)):  # warm the connection and the code
        call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        call()
    return (time.process_time() - cpu) / requests, (time.perf_counter() - wall) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sandbox", "--listen=127.0.0.1:0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sandbox.stderr is not None
        url = ""
        for line in sandbox.stderr:
            if found := re.search(r"listening on (http://\S+)", line):
                url = found.group(1)
                break
        if not url:
            raise SystemExit("the sandbox did not start")
        calls = clients(url)
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        wall: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(opts.rounds):
            for name, call in calls.items():
                c, w = measure(call, opts.requests)
                cpu[name].append(c)
                wall[name].append(w)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    ours = statistics.median(cpu["ProviderHttp"])
    print(
        f"{'client':18} {'CPU us/request':>15} {'wall us/request':>16} {'CPU / ProviderHttp':>19}"
    )
    for name in calls:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:18} {c * 1e6:15.0f} {w * 1e6:16.0f} {c / ours:19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
