"""Callers prove who they are: mutual TLS and bearer tokens over real TLS, real gRPC on
loopback, the sandbox provider over HTTP. Certificates are made here, by tests/certs.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.api.trust import hash_token
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration
from tests.certs import Authority, Issued
from tests.e2e.conftest import Running
from tests.e2e.helpers import create_request, error_reason, retry_delay

pytestmark = pytest.mark.timeout(60)

WRITER, READER, OLD_TOKEN, NEW_TOKEN = "tok-writer-1", "tok-reader-1", "tok-old", "tok-new"


@dataclass
class Trusted:
    """A payorch server with [grpc.tls] and [auth], and the means to call it."""

    app: Payments
    server: PaymentServer
    ca: Authority
    sandbox: SandboxServer
    channels: list[grpc.Channel] = field(default_factory=list)

    def stub(
        self,
        *,
        certificate: Issued | None = None,
        trust: bytes | None = None,
        port: int | None = None,
    ) -> payments_pb2_grpc.PaymentOrchestratorStub:
        credentials = grpc.ssl_channel_credentials(
            trust or self.ca.pem,
            certificate.key_pem if certificate else None,
            certificate.cert_pem if certificate else None,
        )
        channel = grpc.secure_channel(f"localhost:{port or self.server.port}", credentials)
        self.channels.append(channel)
        return payments_pb2_grpc.PaymentOrchestratorStub(channel)

    def health(self, certificate: Issued | None = None) -> int:
        credentials = grpc.ssl_channel_credentials(
            self.ca.pem,
            certificate.key_pem if certificate else None,
            certificate.cert_pem if certificate else None,
        )
        with grpc.secure_channel(f"localhost:{self.server.port}", credentials) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            return int(answer.status)

    def written(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def authorizations(self) -> int:
        entries = httpx.get(f"{self.sandbox.url}/_sandbox/ledger").json()["entries"]
        return sum(1 for e in entries if e["kind"] == "authorization")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


CALLERS = f"""
[[auth.callers]]
name = "checkout"
account = "shop"
roles = ["payments.write", "payments.read"]
token_sha256 = ["{hash_token(WRITER)}"]
identities = ["spiffe://shop/checkout"]

[[auth.callers]]
name = "refunds"
account = "shop"
roles = ["payments.write", "payments.read"]
token_sha256 = ["{hash_token("tok-refunds")}"]
identities = ["dns:refunds.shop.internal"]

[[auth.callers]]
name = "ledger"
account = "shop"
roles = ["payments.read"]
token_sha256 = ["{hash_token(READER)}"]
identities = ["cn:ledger-reader"]

[[auth.callers]]
name = "rotating"
account = "shop"
roles = ["payments.write"]
token_sha256 = ["{hash_token(OLD_TOKEN)}", "{hash_token(NEW_TOKEN)}"]
"""


class TrustedFactory:
    def __init__(self, url: str, tmp_path: Path, sandbox: SandboxServer) -> None:
        self.url, self.tmp_path, self.sandbox = url, tmp_path, sandbox
        self.ca = Authority()
        self.ca_file = tmp_path / "callers-ca.pem"
        self.ca_file.write_bytes(self.ca.pem)
        self.ca.server_certificate().write(tmp_path, "server")
        self.running: list[Trusted] = []

    def __call__(
        self,
        *,
        client_ca: bool = True,
        callers: str = CALLERS,
        auth: str = "",
        token_listen: bool = False,
    ) -> Trusted:
        tls = '[grpc.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n'
        if client_ca:
            tls += 'client_ca_file = "callers-ca.pem"\n'
        if token_listen:
            tls += 'token_listen = "127.0.0.1:0"\n'
        toml = (
            f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{self.sandbox.url}"\n'
            f'[routes]\n"*" = ["sandbox"]\n{tls}[auth]\n{auth}\n{callers}'
        )
        path = self.tmp_path / f"payorch-{len(self.running)}.toml"
        path.write_text(toml)
        config = load_configuration(str(path), None)
        app = build_payments(self.url, config.router)
        server = create_server("127.0.0.1:0", app, tls=config.tls, auth=config.auth)
        server.start()
        running = Trusted(app, server, self.ca, self.sandbox)
        self.running.append(running)
        return running

    def close(self) -> None:
        for running in self.running:
            for channel in running.channels:
                channel.close()
            running.server.stop(grace=1)
            running.app.close()


@pytest.fixture
def trusted(sqlite_url: str, tmp_path: Path, sandbox: SandboxServer) -> Iterator[TrustedFactory]:
    factory = TrustedFactory(sqlite_url, tmp_path, sandbox)
    try:
        yield factory
    finally:
        factory.close()


# --- mutual TLS ------------------------------------------------------------------------------


def test_a_trusted_client_certificate_names_its_caller_by_its_spiffe_id(
    trusted: TrustedFactory,
) -> None:
    server = trusted()
    checkout = server.ca.issue("whatever", uris=("spiffe://shop/checkout",))
    payment = server.stub(certificate=checkout).CreatePayment(create_request("mtls-1"))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert server.authorizations() == 1


def test_a_certificate_is_named_by_its_dns_san_then_its_common_name(
    trusted: TrustedFactory,
) -> None:
    server = trusted()
    refunds = server.ca.issue("x", dns=("refunds.shop.internal",))
    created = server.stub(certificate=refunds).CreatePayment(create_request("dns-1"))
    reader = server.stub(certificate=server.ca.issue("ledger-reader"))
    assert reader.GetPayment(pb.GetPaymentRequest(payment_id=created.payment_id)) == created
    with pytest.raises(grpc.RpcError) as refused:  # ledger may read, not write
        reader.CreatePayment(create_request("cn-write"))
    assert error_reason(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


@pytest.mark.parametrize("which", ["untrusted", "expired", "none"])
def test_a_certificate_from_another_ca_an_expired_one_and_none_are_refused(
    trusted: TrustedFactory, which: str
) -> None:
    server = trusted()
    certificate = {
        "untrusted": Authority("another CA").issue("c", uris=("spiffe://shop/checkout",)),
        "expired": server.ca.issue("c", uris=("spiffe://shop/checkout",), expired=True),
        "none": None,
    }[which]
    with pytest.raises(grpc.RpcError) as refused:
        server.stub(certificate=certificate).CreatePayment(create_request("refused"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    assert (server.written(), server.authorizations()) == (0, 0)


def test_a_trusted_certificate_that_names_no_caller_is_unauthenticated(
    trusted: TrustedFactory,
) -> None:
    server = trusted()
    stranger = server.stub(certificate=server.ca.issue("stranger", uris=("spiffe://x/y",)))
    with pytest.raises(grpc.RpcError) as refused:
        stranger.CreatePayment(create_request("stranger"))
    assert error_reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert (server.written(), server.authorizations()) == (0, 0)


def test_with_a_client_ca_a_token_caller_presents_a_certificate_and_its_token_names_it(
    trusted: TrustedFactory,
) -> None:
    # grpcio cannot ask for an optional client certificate: with a client CA every connection
    # needs one, and a token still names a caller the certificate does not.
    server = trusted()
    holder = server.stub(certificate=server.ca.issue("batch-host", dns=("batch.internal",)))
    payment = holder.CreatePayment(create_request("both-1"), metadata=bearer(WRITER))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().CreatePayment(create_request("both-2"), metadata=bearer(WRITER), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake
    assert server.authorizations() == 1


# --- bearer tokens (TLS without client certificates) ----------------------------------------


def test_a_valid_token_creates_and_an_invalid_one_is_unauthenticated(
    trusted: TrustedFactory,
) -> None:
    server = trusted(client_ca=False, callers=_token_callers())
    stub = server.stub()
    payment = stub.CreatePayment(create_request("tok-1"), metadata=bearer(WRITER))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    written = server.written()
    for metadata in (bearer("tok-writer-2"), [("authorization", WRITER)], []):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreatePayment(create_request("tok-2"), metadata=metadata)
        assert error_reason(refused.value) == (
            grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
        )  # fmt: skip
        with pytest.raises(grpc.RpcError) as unread:
            stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id), metadata=metadata)
        assert unread.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (server.written(), server.authorizations()) == (written, 1)


def test_both_tokens_of_a_rotation_work_and_a_revoked_one_no_longer_does(
    trusted: TrustedFactory,
) -> None:
    during = trusted(client_ca=False, callers=_token_callers())
    stub = during.stub()
    stub.CreatePayment(create_request("rot-old"), metadata=bearer(OLD_TOKEN))
    stub.CreatePayment(create_request("rot-new"), metadata=bearer(NEW_TOKEN))
    # The old token is removed from the configuration (revoked), the server restarted.
    after = trusted(
        client_ca=False,
        callers=_token_callers().replace(f'"{hash_token(OLD_TOKEN)}", ', ""),
    )
    stub = after.stub()
    stub.CreatePayment(create_request("rot-new-2"), metadata=bearer(NEW_TOKEN))
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreatePayment(create_request("rot-old-2"), metadata=bearer(OLD_TOKEN))
    assert error_reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert after.authorizations() == 3


def test_a_reader_cannot_create_or_stream_but_can_read(trusted: TrustedFactory) -> None:
    server = trusted(client_ca=False, callers=_token_callers())
    stub = server.stub()
    created = stub.CreatePayment(create_request("r-1"), metadata=bearer(WRITER))
    written = server.written()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreatePayment(create_request("r-2"), metadata=bearer(READER))
    assert error_reason(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    with pytest.raises(grpc.RpcError) as refused:
        stub.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key="c", payment_id=created.payment_id),
            metadata=bearer(READER),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.StreamEvents(pb.StreamEventsRequest(), metadata=bearer(READER)))
    assert error_reason(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert (server.written(), server.authorizations()) == (written, 1)
    read = stub.GetPayment(
        pb.GetPaymentRequest(payment_id=created.payment_id), metadata=bearer(READER)
    )
    assert read.payment_id == created.payment_id
    events = stub.ListPaymentEvents(
        pb.ListPaymentEventsRequest(payment_id=created.payment_id), metadata=bearer(READER)
    )
    assert len(events.events) >= 2


def test_health_stays_open_and_reflection_can_be_switched_off(trusted: TrustedFactory) -> None:
    server = trusted(client_ca=False, callers=_token_callers(), auth="reflection = false")
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    channel = grpc.secure_channel(
        f"localhost:{server.server.port}", grpc.ssl_channel_credentials(server.ca.pem)
    )
    server.channels.append(channel)
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as absent:
        list(reflect(iter([b""]), timeout=5))
    assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_same_key_from_two_callers_is_two_payments_and_two_provider_calls(
    database_url: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    factory = TrustedFactory(database_url, tmp_path, sandbox)
    try:
        server = factory()
        checkout = server.stub(certificate=server.ca.issue("c", uris=("spiffe://shop/checkout",)))
        refunds = server.stub(certificate=server.ca.issue("r", dns=("refunds.shop.internal",)))
        first = checkout.CreatePayment(create_request("shared-key"))
        second = refunds.CreatePayment(create_request("shared-key"))
        assert first.payment_id != second.payment_id
        assert server.authorizations() == 2
        # Each caller's retry still replays its own payment, with no provider call.
        assert checkout.CreatePayment(create_request("shared-key")) == first
        assert refunds.CreatePayment(create_request("shared-key")) == second
        assert server.authorizations() == 2
    finally:
        factory.close()


# --- limits ---------------------------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_and_writes_nothing(
    trusted: TrustedFactory,
) -> None:
    server = trusted(client_ca=False, callers=_token_callers(), auth="max_message_bytes = 4096")
    stub = server.stub()
    big = create_request("big", metadata={"note": "x" * 5000})
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreatePayment(big, metadata=bearer(WRITER))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (server.written(), server.authorizations()) == (0, 0)
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert stub.CreatePayment(create_request("small"), metadata=bearer(WRITER)).payment_id


def test_a_caller_over_its_rate_is_told_when_to_retry_and_writes_nothing(
    trusted: TrustedFactory,
) -> None:
    limited = _token_callers().replace(
        'name = "checkout"', 'name = "checkout"\nrate = {per_second = 0.01, burst = 2}'
    )
    server = trusted(client_ca=False, callers=limited)
    stub = server.stub()
    first = stub.CreatePayment(create_request("rate-1"), metadata=bearer(WRITER))
    stub.CreatePayment(create_request("rate-2"), metadata=bearer(WRITER))
    written = server.written()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreatePayment(create_request("rate-3"), metadata=bearer(WRITER))
    assert error_reason(refused.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    delay = retry_delay(refused.value)
    assert delay is not None and 90 < delay <= 100  # one token at 0.01 per second
    assert (server.written(), server.authorizations()) == (written, 2)
    # Other callers have their own bucket; the server stays healthy.
    read = stub.GetPayment(
        pb.GetPaymentRequest(payment_id=first.payment_id), metadata=bearer(READER)
    )
    assert read.payment_id == first.payment_id
    assert server.health() == health_pb2.HealthCheckResponse.SERVING


def test_streams_beyond_the_bound_are_refused_until_one_ends(trusted: TrustedFactory) -> None:
    streamer = '\n[[auth.callers]]\nname = "feed"\naccount = "shop"\nroles = ["events.stream"]\n'
    streamer += f'token_sha256 = ["{hash_token("tok-feed")}"]\n'
    server = trusted(client_ca=False, callers=_token_callers() + streamer, auth="max_streams = 1")
    stub = server.stub()
    stub.CreatePayment(create_request("s-1"), metadata=bearer(WRITER))
    following = stub.StreamEvents(pb.StreamEventsRequest(follow=True), metadata=bearer("tok-feed"))
    assert next(following).position == 1  # the stream is open and holds the one slot
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.StreamEvents(pb.StreamEventsRequest(), metadata=bearer("tok-feed")))
    assert error_reason(refused.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
    following.cancel()
    for _ in range(50):  # the slot comes back once the server sees the cancellation
        try:
            events = list(stub.StreamEvents(pb.StreamEventsRequest(), metadata=bearer("tok-feed")))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
        else:
            assert len(events) >= 2
            break
    else:
        raise AssertionError("the cancelled stream never gave its slot back")


def _token_callers() -> str:
    """CALLERS without certificate identities (this server has no client CA)."""
    return "\n".join(line for line in CALLERS.splitlines() if not line.startswith("identities"))


def test_without_auth_a_message_over_one_mebibyte_is_refused_before_it_is_parsed(
    running: Running,
) -> None:
    big = create_request("huge", metadata={"note": "x" * (1024 * 1024)})
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.CreatePayment(big)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not running.ledger()
    assert running.stub.CreatePayment(create_request("after-huge")).payment_id


def test_another_accounts_caller_finds_nothing_through_the_real_interceptor(
    trusted: TrustedFactory,
) -> None:
    """Accounts end to end with real tokens over TLS: every RPC on shop's payment answers a
    market caller NOT_FOUND, word for word as for an id that does not exist, and its stream
    shows none of shop's events."""
    market = f"""
[[auth.callers]]
name = "market-checkout"
account = "market"
roles = ["payments.write", "payments.read", "events.stream"]
token_sha256 = ["{hash_token("tok-market")}"]

[[auth.callers]]
name = "shop-feed"
account = "shop"
roles = ["events.stream"]
token_sha256 = ["{hash_token("tok-shop-feed")}"]
"""
    server = trusted(client_ca=False, callers=_token_callers() + market)
    stub = server.stub()
    shops = stub.CreatePayment(create_request("acct-1"), metadata=bearer(WRITER))
    written, theirs = server.written(), bearer("tok-market")
    unknown = "00000000-0000-4000-8000-000000000000"

    def refusals(payment_id: str) -> list[tuple[grpc.StatusCode, str, str]]:
        calls = [
            lambda: stub.GetPayment(pb.GetPaymentRequest(payment_id=payment_id), metadata=theirs),
            lambda: stub.ListPaymentEvents(
                pb.ListPaymentEventsRequest(payment_id=payment_id), metadata=theirs
            ),
            lambda: stub.CapturePayment(
                pb.CapturePaymentRequest(idempotency_key="m-c", payment_id=payment_id),
                metadata=theirs,
            ),
            lambda: stub.CancelPayment(
                pb.CancelPaymentRequest(idempotency_key="m-x", payment_id=payment_id),
                metadata=theirs,
            ),
            lambda: stub.RefundPayment(
                pb.RefundPaymentRequest(idempotency_key="m-r", payment_id=payment_id),
                metadata=theirs,
            ),
        ]
        found = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            code, reason = error_reason(refused.value)
            found.append((code, reason, refused.value.details().replace(payment_id, "<id>")))
        return found

    answers = refusals(shops.payment_id)
    assert {code for code, _, _ in answers} == {grpc.StatusCode.NOT_FOUND}
    assert answers == refusals(unknown)  # no existence leak
    assert (server.written(), server.authorizations()) == (written, 1)

    markets = stub.CreatePayment(create_request("acct-1"), metadata=theirs)  # same key
    assert markets.payment_id != shops.payment_id
    assert server.authorizations() == 2

    def streamed(token: str) -> set[str]:
        events = stub.StreamEvents(pb.StreamEventsRequest(), metadata=bearer(token))
        return {e.payment_id for e in events}

    assert streamed("tok-market") == {markets.payment_id}
    assert streamed("tok-shop-feed") == {shops.payment_id}


def test_token_callers_without_a_certificate_use_the_token_listener_beside_mutual_tls(
    trusted: TrustedFactory,
) -> None:
    """grpcio cannot make a client certificate optional: with a client CA, callers without
    one connect to [grpc.tls] token_listen (TLS, no client certificate), where only a bearer
    token names a caller."""
    server = trusted(token_listen=True)
    token_port = server.server.token_port
    assert token_port not in (None, 0, server.server.port)
    by_token = server.stub(port=token_port)
    payment = by_token.CreatePayment(create_request("tl-1"), metadata=bearer(WRITER))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    checkout = server.ca.issue("whatever", uris=("spiffe://shop/checkout",))
    assert server.stub(certificate=checkout).GetPayment(
        pb.GetPaymentRequest(payment_id=payment.payment_id)
    ) == by_token.GetPayment(
        pb.GetPaymentRequest(payment_id=payment.payment_id), metadata=bearer(WRITER)
    )
    written = server.written()
    with pytest.raises(grpc.RpcError) as refused:  # no token: no certificate names anyone here
        by_token.CreatePayment(create_request("tl-2"))
    assert error_reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    with pytest.raises(grpc.RpcError) as refused:  # the main address still wants a certificate
        server.stub().CreatePayment(create_request("tl-3"), metadata=bearer(WRITER), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (server.written(), server.authorizations()) == (written, 1)
