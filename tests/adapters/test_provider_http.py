"""``ProviderHttp``, the HTTP client every provider adapter sends through, against small real
servers on loopback: a kept connection the provider closed, TLS, and the proxy the standard
variables name."""

from __future__ import annotations

import select
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters._http import ProviderHttp, default_tls
from orchestrator.ports import ProviderNotReached
from tests.certs import Authority

TIMEOUT = 2.0
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Listener:
    """A TCP server on loopback that runs ``serve(connection)`` for each connection it
    accepts, on a thread of its own, and counts the connections."""

    def __init__(self, serve: Callable[[Listener, socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.accepted = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.serve, args=(self, conn), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += conn.recv(4096)
    return head


@contextmanager
def listening(serve: Callable[[Listener, socket.socket], None]) -> Iterator[Listener]:
    listener = Listener(serve)
    try:
        yield listener
    finally:
        listener.close()


def answer_once_then_close(listener: Listener, conn: socket.socket) -> None:
    """Answers one request as if the connection stayed open (HTTP/1.1, no ``Connection:
    close``), then closes it: what a provider's idle timeout does to a kept connection."""
    with conn:
        listener.requests.append(read_request(conn))
        conn.sendall(ANSWER)


def test_a_kept_connection_the_provider_closed_is_replaced_before_sending() -> None:
    with listening(answer_once_then_close) as provider:
        http = ProviderHttp("p", f"http://127.0.0.1:{provider.port}")
        assert http.send("POST", "/a", timeout=TIMEOUT, what="t", json={}).status_code == 200
        kept = http._connection().conn
        assert kept is not None and kept.sock is not None  # nothing said it would close
        # the provider's end is closed by now: the socket reads EOF
        select.select([kept.sock], [], [], TIMEOUT)
        # Sent on the dead connection, the request would fail after sending: an unknown
        # outcome for a request the provider never saw. It goes on a new connection instead.
        assert http.send("POST", "/b", timeout=TIMEOUT, what="t", json={}).status_code == 200
        assert provider.accepted == 2
        assert [r.split(b" ")[1] for r in provider.requests] == [b"/a", b"/b"]
        http.close()


def tunnel(listener: Listener, conn: socket.socket) -> None:
    """An HTTP proxy that takes ``CONNECT host:port`` to a loopback port and relays bytes."""
    with conn:
        head = read_request(conn)
        listener.requests.append(head)
        method, target, _ = head.split(b"\r\n")[0].split(b" ")
        host, _, port = target.decode().rpartition(":")
        if method != b"CONNECT" or host != "127.0.0.1":
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection((host, int(port))) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            relay(conn, upstream)


def relay(a: socket.socket, b: socket.socket) -> None:
    while True:
        ready, _, _ = select.select([a, b], [], [], TIMEOUT)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


def keep_answering(listener: Listener, conn: socket.socket) -> None:
    with conn:
        while head := read_request(conn):
            listener.requests.append(head)
            conn.sendall(ANSWER)


def test_calls_go_through_the_proxy_the_standard_variables_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with listening(keep_answering) as provider, listening(tunnel) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://user:secret@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = ProviderHttp("p", f"http://127.0.0.1:{provider.port}")
        for path in ("/a", "/b"):
            assert http.send("POST", path, timeout=TIMEOUT, what="t", json={}).status_code == 200
        http.close()
        # one tunnel, kept alive for both requests, with the proxy's credentials on it
        (connect,) = proxy.requests
        assert connect.startswith(f"CONNECT 127.0.0.1:{provider.port} ".encode())
        assert b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=" in connect
        assert [r.split(b" ")[1] for r in provider.requests] == [b"/a", b"/b"]

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = ProviderHttp("p", f"http://127.0.0.1:{provider.port}")
        assert direct.send("GET", "/c", timeout=TIMEOUT, what="t").status_code == 200
        direct.close()
        assert len(proxy.requests) == 1


def test_a_tunnel_the_proxy_refuses_is_not_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening(tunnel) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = ProviderHttp("p", "http://provider.invalid:8080")
        with pytest.raises(ProviderNotReached, match="ConnectError"):
            http.send("POST", "/a", timeout=TIMEOUT, what="t", json={})
        assert proxy.requests[0].startswith(b"CONNECT provider.invalid:8080 ")


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("provider test CA")


def tls_answering(authority: Authority) -> Callable[[Listener, socket.socket], None]:
    """``keep_answering`` behind TLS, with a certificate for 127.0.0.1 from ``authority``."""
    issued = authority.server_certificate()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        cert, key = issued.write(Path(directory), "provider")
        context.load_cert_chain(cert, key)

    def serve(listener: Listener, conn: socket.socket) -> None:
        try:
            wrapped = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            listener.requests.append(b"refused TLS")
            conn.close()
            return
        keep_answering(listener, wrapped)

    return serve


def trusting(authority: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=authority.pem.decode())


def test_https_verifies_the_provider_against_the_ca_it_is_given(authority: Authority) -> None:
    with listening(tls_answering(authority)) as provider:
        url = f"https://127.0.0.1:{provider.port}"
        http = ProviderHttp("p", url, tls=trusting(authority))
        for path in ("/a", "/b"):
            assert http.send("POST", path, timeout=TIMEOUT, what="t", json={}).status_code == 200
        assert provider.accepted == 1  # one handshake, kept alive
        http.close()
        # The default trust (certifi's bundle) does not know this CA: the handshake fails,
        # before any byte of the request left.
        stranger = ProviderHttp("p", url)
        with pytest.raises(ProviderNotReached, match="ConnectError"):
            stranger.send("POST", "/c", timeout=TIMEOUT, what="t", json={})
        assert [r.split(b" ")[1] for r in provider.requests if r != b"refused TLS"] == [
            b"/a",
            b"/b",
        ]


def test_https_through_the_proxy_is_tls_end_to_end(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listening(tls_answering(authority)) as provider, listening(tunnel) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = ProviderHttp("p", f"https://127.0.0.1:{provider.port}", tls=trusting(authority))
        assert http.send("GET", "/a", timeout=TIMEOUT, what="t").status_code == 200
        http.close()
        (connect,) = proxy.requests  # the proxy saw the tunnel's target, not the request
        assert connect.startswith(f"CONNECT 127.0.0.1:{provider.port} ".encode())
        assert provider.requests[0].startswith(b"GET /a ")


def test_default_trust_is_openssls_store_when_the_standard_variables_name_one(
    authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(authority.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    default_tls.cache_clear()
    try:
        with listening(tls_answering(authority)) as provider:
            http = ProviderHttp("p", f"https://127.0.0.1:{provider.port}")
            assert http.send("GET", "/a", timeout=TIMEOUT, what="t").status_code == 200
            http.close()
    finally:
        default_tls.cache_clear()
