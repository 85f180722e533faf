"""The sandbox provider over real HTTP on loopback: every endpoint, rule and fault."""

from __future__ import annotations

import re
import signal
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from adapters.sandbox import SandboxServer, start_sandbox
from adapters.sandbox.server import parse_listen
from tests.adapters.sandbox_process import sandbox_process, stderr_until

# building an SSL context per client costs ~80 ms; these clients only speak plain HTTP anyway
TLS = ssl.create_default_context()
ID = {
    "pay": re.compile(r"sbx_pay_[0-9a-f]{24}"),
    "cap": re.compile(r"sbx_cap_[0-9a-f]{24}"),
    "void": re.compile(r"sbx_void_[0-9a-f]{24}"),
    "re": re.compile(r"sbx_re_[0-9a-f]{24}"),
    "led": re.compile(r"sbx_led_[0-9a-f]{24}"),
}


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=2.0, verify=TLS) as http:
        yield http


def payment_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": 1000,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "capture": False,
        "reference": "pay_1",
        "metadata": {"order_reference": "order-1"},
    }
    body.update(overrides)
    return body


def post(client: httpx.Client, path: str, body: Any, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(path, json=body, headers=headers)


def create(client: httpx.Client, key: str | None = None, **overrides: Any) -> dict[str, Any]:
    response = post(client, "/v1/payments", payment_body(**overrides), key)
    assert response.status_code == 200, response.text
    payment: dict[str, Any] = response.json()
    return payment


def ledger(client: httpx.Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = client.get("/_sandbox/ledger").json()["entries"]
    return entries


def kinds(client: httpx.Client) -> list[str]:
    return [entry["kind"] for entry in ledger(client)]


def set_faults(client: httpx.Client, **settings: Any) -> dict[str, Any]:
    response = client.put("/_sandbox/faults", json=settings)
    assert response.status_code == 200, response.text
    faults: dict[str, Any] = response.json()
    return faults


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def wait_for(condition: Any, within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


DEFAULT_FAULTS = {
    "error_rate": 0.0,
    "timeout_rate": 0.0,
    "drop_after_processing_rate": 0.0,
    "latency_ms": 0,
    "hang_ms": 10000,
    "honor_idempotency": True,
    "seed": None,
}


# --- server lifecycle -------------------------------------------------------------------------


def test_server_binds_a_free_port_and_reports_its_url(server: SandboxServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{server.url}/_sandbox/faults").json() == DEFAULT_FAULTS


def test_stop_closes_the_socket() -> None:
    server = SandboxServer().start()
    url = server.url
    assert httpx.get(f"{url}/_sandbox/ledger").status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sandbox/ledger", timeout=0.5)


def test_stop_ends_keep_alive_connections_promptly(server: SandboxServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/_sandbox/ledger").status_code == 200  # leaves a pooled connection
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5


def test_start_sandbox_parses_the_listen_address() -> None:
    server = start_sandbox("127.0.0.1:0")
    try:
        assert server.host == "127.0.0.1"
        assert httpx.get(f"{server.url}/_sandbox/ledger").json() == {"entries": []}
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8181", ("127.0.0.1", 8181)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8181", "127.0.0.1", "127.0.0.1:", ":8181", "h:99999", "h:x"])
def test_parse_listen_rejects_malformed_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def test_run_sandbox_serves_until_sigterm() -> None:
    with sandbox_process() as (process, port):
        expected = f"listening on http://127.0.0.1:{port}"
        seen = stderr_until(process, expected)
        assert any(expected in line for line in seen), seen
        assert httpx.get(f"http://127.0.0.1:{port}/_sandbox/ledger").json() == {"entries": []}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0


# --- authorize ----------------------------------------------------------------------------


def test_authorize_without_capture(client: httpx.Client) -> None:
    response = post(client, "/v1/payments", payment_body(), key="k-auth")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in response.headers
    payment = response.json()
    assert ID["pay"].fullmatch(payment["id"])
    assert {k: v for k, v in payment.items() if k not in ("id", "created")} == {
        "object": "payment",
        "status": "authorized",
        "amount": 1000,
        "currency": "USD",
        "amount_captured": 0,
        "amount_refunded": 0,
        "payment_method": "pm_card_visa",
        "reference": "pay_1",
        "metadata": {"order_reference": "order-1"},
        "idempotency_key": "k-auth",
        "decline_code": None,
        "captures": [],
        "refunds": [],
        "void": None,
    }
    assert abs(payment["created"] - time.time()) < 5
    assert client.get(f"/v1/payments/{payment['id']}").json() == payment


def test_authorize_with_automatic_capture(client: httpx.Client) -> None:
    payment = create(client, key="k-auto", capture=True, amount=2500)
    assert payment["status"] == "captured"
    assert payment["amount_captured"] == 2500
    [capture] = payment["captures"]
    assert ID["cap"].fullmatch(capture["id"])
    assert capture["amount"] == 2500
    assert capture["idempotency_key"] == "k-auto"
    assert [(e["kind"], e["amount"]) for e in ledger(client)] == [
        ("authorization", 2500),
        ("capture", 2500),
    ]


def test_authorize_without_idempotency_key_records_null(client: httpx.Client) -> None:
    payment = create(client)
    assert payment["idempotency_key"] is None
    assert ledger(client)[0]["idempotency_key"] is None


def test_optional_fields_default(client: httpx.Client) -> None:
    body = {"amount": 5, "currency": "EUR", "payment_method": "pm_x"}
    payment = post(client, "/v1/payments", body).json()
    assert (payment["status"], payment["reference"], payment["metadata"]) == ("authorized", "", {})


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("pm_card_declined", "card_declined"), ("pm_insufficient_funds", "insufficient_funds")],
)
def test_magic_tokens_decline(client: httpx.Client, token: str, decline_code: str) -> None:
    response = post(client, "/v1/payments", payment_body(payment_method=token), key="k-dec")
    assert response.status_code == 402
    error = error_of(response)
    assert error["type"] == "card_error"
    assert error["code"] == "card_declined"
    assert error["decline_code"] == decline_code
    assert error["message"]
    payment = error["payment"]
    assert payment["status"] == "declined"
    assert payment["decline_code"] == decline_code
    assert payment["idempotency_key"] == "k-dec"
    assert client.get(f"/v1/payments/{payment['id']}").json()["status"] == "declined"
    assert ledger(client) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (payment_body(payment_method="card_4242"), "payment_method"),
        (payment_body(payment_method=""), "payment_method"),
        (payment_body(amount=0), "amount"),
        (payment_body(amount=-5), "amount"),
        (payment_body(amount="1000"), "amount"),
        (payment_body(amount=10.5), "amount"),
        (payment_body(amount=True), "amount"),
        (payment_body(currency="usd"), "currency"),
        (payment_body(currency="US"), "currency"),
        (payment_body(capture="yes"), "capture"),
        (payment_body(reference=7), "reference"),
        (payment_body(metadata={"n": 1}), "metadata"),
        (payment_body(metadata=["x"]), "metadata"),
        (payment_body(card_number="4242424242424242"), "unknown parameter"),
        ({"currency": "USD", "payment_method": "pm_x"}, "amount"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_payment_requests_are_refused(
    client: httpx.Client, body: Any, message: str
) -> None:
    response = post(client, "/v1/payments", body, key="k-invalid")
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert client.get("/v1/payments").json() == {"data": []}
    assert ledger(client) == []


def test_non_json_body_is_refused(client: httpx.Client) -> None:
    response = client.post(
        "/v1/payments", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in error_of(response)["message"]


def test_validation_failure_is_not_stored_under_the_key(client: httpx.Client) -> None:
    bad = post(client, "/v1/payments", payment_body(payment_method="tok_visa"), key="k-fix")
    assert bad.status_code == 400
    fixed = post(client, "/v1/payments", payment_body(), key="k-fix")
    assert fixed.status_code == 200
    assert "idempotent-replayed" not in fixed.headers
    assert kinds(client) == ["authorization"]


# --- capture ------------------------------------------------------------------------------


def test_partial_and_multiple_captures(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    first = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 300}, key="c1")
    assert first.status_code == 200
    assert (first.json()["status"], first.json()["amount_captured"]) == ("captured", 300)
    second = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 200}, key="c2")
    assert second.json()["amount_captured"] == 500
    rest = post(client, f"/v1/payments/{payment_id}/capture", {}, key="c3").json()
    assert rest["amount_captured"] == 1000
    assert [(c["amount"], c["idempotency_key"]) for c in rest["captures"]] == [
        (300, "c1"),
        (200, "c2"),
        (500, "c3"),
    ]
    assert all(ID["cap"].fullmatch(c["id"]) for c in rest["captures"])
    assert [(e["kind"], e["amount"]) for e in ledger(client)] == [
        ("authorization", 1000),
        ("capture", 300),
        ("capture", 200),
        ("capture", 500),
    ]
    done = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 0}, key="c4")
    assert done.status_code == 400
    assert "fully captured" in error_of(done)["message"]


def test_capture_amount_zero_takes_everything(client: httpx.Client) -> None:
    payment_id = create(client, amount=700)["id"]
    captured = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 0}).json()
    assert captured["amount_captured"] == 700


def test_over_capture_is_refused(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    post(client, f"/v1/payments/{payment_id}/capture", {"amount": 600})
    response = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 401}, key="over")
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert "exceeds the 400 left" in error["message"]
    assert client.get(f"/v1/payments/{payment_id}").json()["amount_captured"] == 600
    assert kinds(client) == ["authorization", "capture"]


def test_state_refusal_is_stored_under_the_key(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    path = f"/v1/payments/{payment_id}/capture"
    refused = post(client, path, {"amount": 5000}, key="over")
    replay = post(client, path, {"amount": 5000}, key="over")
    assert (refused.status_code, replay.status_code) == (400, 400)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == refused.json()


@pytest.mark.parametrize("body", [{"amount": -1}, {"amount": "5"}, {"amount": 1, "x": 1}])
def test_invalid_capture_body_is_refused(client: httpx.Client, body: Any) -> None:
    payment_id = create(client)["id"]
    response = post(client, f"/v1/payments/{payment_id}/capture", body, key="bad-cap")
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"
    good = post(client, f"/v1/payments/{payment_id}/capture", {"amount": 1}, key="bad-cap")
    assert good.status_code == 200  # the refusal was not stored under the key


def test_capture_of_declined_payment_is_refused(client: httpx.Client) -> None:
    declined = post(client, "/v1/payments", payment_body(payment_method="pm_card_declined"))
    payment_id = error_of(declined)["payment"]["id"]
    response = post(client, f"/v1/payments/{payment_id}/capture", {})
    assert response.status_code == 400
    assert "declined" in error_of(response)["message"]


@pytest.mark.parametrize("action", ["capture", "void", "refunds"])
def test_unknown_payment_is_404(client: httpx.Client, action: str) -> None:
    response = post(client, f"/v1/payments/sbx_pay_{'0' * 24}/{action}", {})
    assert response.status_code == 404
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "resource_missing")


# --- void ---------------------------------------------------------------------------------


def test_void_an_authorization(client: httpx.Client) -> None:
    payment_id = create(client, amount=800)["id"]
    response = post(client, f"/v1/payments/{payment_id}/void", {}, key="v1")
    assert response.status_code == 200
    payment = response.json()
    assert payment["status"] == "voided"
    assert ID["void"].fullmatch(payment["void"]["id"])
    assert payment["void"]["idempotency_key"] == "v1"
    assert [(e["kind"], e["amount"], e["idempotency_key"]) for e in ledger(client)] == [
        ("authorization", 800, None),
        ("void", 800, "v1"),
    ]
    again = post(client, f"/v1/payments/{payment_id}/void", {})
    assert again.status_code == 400
    capture = post(client, f"/v1/payments/{payment_id}/capture", {})
    assert capture.status_code == 400
    assert "voided" in error_of(capture)["message"]


def test_void_without_body(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    response = client.post(f"/v1/payments/{payment_id}/void")
    assert response.status_code == 200
    assert response.json()["status"] == "voided"


@pytest.mark.parametrize("capture_amount", [1, 1000])
def test_void_after_capture_is_refused(client: httpx.Client, capture_amount: int) -> None:
    payment_id = create(client)["id"]
    post(client, f"/v1/payments/{payment_id}/capture", {"amount": capture_amount})
    response = post(client, f"/v1/payments/{payment_id}/void", {})
    assert response.status_code == 400
    assert "only an uncaptured authorization" in error_of(response)["message"]
    assert client.get(f"/v1/payments/{payment_id}").json()["status"] == "captured"
    assert kinds(client) == ["authorization", "capture"]


# --- refunds ------------------------------------------------------------------------------


def test_partial_and_multiple_refunds(client: httpx.Client) -> None:
    payment = create(client, capture=True)
    path = f"/v1/payments/{payment['id']}/refunds"
    first = post(client, path, {"amount": 300, "reason": "requested_by_customer"}, key="r1")
    assert first.status_code == 200
    refund = first.json()
    assert ID["re"].fullmatch(refund["id"])
    assert {k: v for k, v in refund.items() if k not in ("id", "created")} == {
        "object": "refund",
        "payment": payment["id"],
        "amount": 300,
        "currency": "USD",
        "status": "succeeded",
        "reason": "requested_by_customer",
        "idempotency_key": "r1",
    }
    second = post(client, path, {"amount": 700}, key="r2")
    assert (second.status_code, second.json()["amount"], second.json()["reason"]) == (200, 700, "")
    over = post(client, path, {"amount": 1}, key="r3")
    assert over.status_code == 400
    assert "nothing captured left" in error_of(over)["message"]
    after = client.get(f"/v1/payments/{payment['id']}").json()
    assert after["amount_refunded"] == 1000
    assert after["status"] == "captured"
    assert [r["id"] for r in after["refunds"]] == [refund["id"], second.json()["id"]]
    assert kinds(client) == ["authorization", "capture", "refund", "refund"]


def test_over_refund_is_refused(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    post(client, f"/v1/payments/{payment_id}/capture", {"amount": 400})
    response = post(client, f"/v1/payments/{payment_id}/refunds", {"amount": 401})
    assert response.status_code == 400
    assert "exceeds the 400 refundable" in error_of(response)["message"]
    assert client.get(f"/v1/payments/{payment_id}").json()["amount_refunded"] == 0


def test_refund_without_amount_refunds_the_rest(client: httpx.Client) -> None:
    payment_id = create(client, capture=True)["id"]
    post(client, f"/v1/payments/{payment_id}/refunds", {"amount": 250})
    rest = post(client, f"/v1/payments/{payment_id}/refunds", {"reason": "duplicate"}).json()
    assert (rest["amount"], rest["reason"]) == (750, "duplicate")


def test_refund_of_uncaptured_authorization_is_refused(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    response = post(client, f"/v1/payments/{payment_id}/refunds", {"amount": 1})
    assert response.status_code == 400
    assert kinds(client) == ["authorization"]


# --- reads --------------------------------------------------------------------------------


def test_get_unknown_payment_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/payments/sbx_pay_nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "resource_missing"


def test_list_payments_by_reference_oldest_first(client: httpx.Client) -> None:
    first = create(client, reference="pay_a")
    create(client, reference="pay_b")
    third = create(client, reference="pay_a", capture=True)
    listed = client.get("/v1/payments", params={"reference": "pay_a"}).json()
    assert [p["id"] for p in listed["data"]] == [first["id"], third["id"]]
    assert listed["data"][1]["status"] == "captured"
    assert client.get("/v1/payments", params={"reference": "pay_z"}).json() == {"data": []}
    assert len(client.get("/v1/payments").json()["data"]) == 3


def test_ledger_records_every_movement_in_order(client: httpx.Client) -> None:
    kept = create(client, key="a1", reference="pay_k", currency="EUR")
    voided = create(client, key="a2", reference="pay_v")
    post(client, f"/v1/payments/{kept['id']}/capture", {"amount": 900}, key="c1")
    post(client, f"/v1/payments/{kept['id']}/refunds", {"amount": 100}, key="r1")
    post(client, f"/v1/payments/{voided['id']}/void", {}, key="v1")
    post(client, "/v1/payments", payment_body(payment_method="pm_card_declined"), key="d1")
    entries = ledger(client)
    assert [
        (e["kind"], e["payment"], e["amount"], e["currency"], e["idempotency_key"], e["reference"])
        for e in entries
    ] == [
        ("authorization", kept["id"], 1000, "EUR", "a1", "pay_k"),
        ("authorization", voided["id"], 1000, "USD", "a2", "pay_v"),
        ("capture", kept["id"], 900, "EUR", "c1", "pay_k"),
        ("refund", kept["id"], 100, "EUR", "r1", "pay_k"),
        ("void", voided["id"], 1000, "USD", "v1", "pay_v"),
    ]
    assert all(ID["led"].fullmatch(e["id"]) for e in entries)
    assert len({e["id"] for e in entries}) == 5
    assert all(isinstance(e["created"], int) for e in entries)


def test_unknown_routes_are_404(client: httpx.Client) -> None:
    assert client.get("/v2/payments").status_code == 404
    assert client.post("/v1/payments/x/explode", json={}).status_code == 404
    assert client.put("/v1/payments", json={}).status_code == 404
    assert client.delete("/_sandbox/faults").status_code == 404
    assert client.post("/_sandbox/payments/x/refund", json={}).status_code == 404
    assert error_of(client.get("/nope"))["type"] == "invalid_request_error"


# --- idempotency --------------------------------------------------------------------------


def test_idempotent_replay(client: httpx.Client) -> None:
    first = post(client, "/v1/payments", payment_body(capture=True), key="k-replay")
    # same body with keys in another order: the same request
    reordered = dict(reversed(list(payment_body(capture=True).items())))
    replay = post(client, "/v1/payments", reordered, key="k-replay")
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert len(client.get("/v1/payments").json()["data"]) == 1
    assert kinds(client) == ["authorization", "capture"]


def test_replay_of_a_decline(client: httpx.Client) -> None:
    body = payment_body(payment_method="pm_insufficient_funds")
    first = post(client, "/v1/payments", body, key="k-d")
    replay = post(client, "/v1/payments", body, key="k-d")
    assert (first.status_code, replay.status_code) == (402, 402)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert len(client.get("/v1/payments").json()["data"]) == 1


def test_replay_of_follow_ups(client: httpx.Client) -> None:
    payment_id = create(client, capture=True)["id"]
    path = f"/v1/payments/{payment_id}/refunds"
    first = post(client, path, {"amount": 100}, key="k-r")
    replay = post(client, path, {"amount": 100}, key="k-r")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert kinds(client) == ["authorization", "capture", "refund"]


def test_key_reuse_with_another_body_is_refused(client: httpx.Client) -> None:
    create(client, key="k-reuse")
    response = post(client, "/v1/payments", payment_body(amount=999), key="k-reuse")
    assert response.status_code == 400
    assert error_of(response)["type"] == "idempotency_error"
    assert kinds(client) == ["authorization"]


def test_key_reuse_on_another_path_is_refused(client: httpx.Client) -> None:
    payment_id = create(client, key="k-path")["id"]
    response = post(client, f"/v1/payments/{payment_id}/void", {}, key="k-path")
    assert response.status_code == 400
    assert error_of(response)["type"] == "idempotency_error"
    assert client.get(f"/v1/payments/{payment_id}").json()["status"] == "authorized"


def test_keys_without_header_never_replay(client: httpx.Client) -> None:
    create(client)
    create(client)
    assert kinds(client) == ["authorization", "authorization"]


def test_overlong_key_is_refused(client: httpx.Client) -> None:
    response = post(client, "/v1/payments", payment_body(), key="k" * 256)
    assert response.status_code == 400
    assert ledger(client) == []


def test_same_key_in_flight_answers_409(client: httpx.Client) -> None:
    set_faults(client, timeout_rate=1, hang_ms=400)
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/payments",
            json=payment_body(),
            headers={"Idempotency-Key": "k-busy"},
            timeout=0.2,
        )
    busy = post(client, "/v1/payments", payment_body(), key="k-busy")
    assert busy.status_code == 409
    error = error_of(busy)
    assert (error["type"], error["code"]) == ("idempotency_error", "request_in_progress")
    wait_for(lambda: len(ledger(client)) == 1)
    done = post(client, "/v1/payments", payment_body(), key="k-busy")
    assert done.status_code == 200
    assert done.headers["idempotent-replayed"] == "true"
    assert kinds(client) == ["authorization"]


# --- faults -------------------------------------------------------------------------------


def test_faults_default_and_merge(client: httpx.Client) -> None:
    assert client.get("/_sandbox/faults").json() == DEFAULT_FAULTS
    set_faults(client, error_rate=0.25)
    merged = set_faults(client, latency_ms=5, honor_idempotency=False)
    assert merged == {
        **DEFAULT_FAULTS,
        "error_rate": 0.25,
        "latency_ms": 5,
        "honor_idempotency": False,
    }
    assert client.get("/_sandbox/faults").json() == merged


@pytest.mark.parametrize(
    "update",
    [
        {"error_rate": 1.5},
        {"timeout_rate": -0.1},
        {"drop_after_processing_rate": "0.5"},
        {"error_rate": True},
        {"latency_ms": -1},
        {"latency_ms": 1.5},
        {"hang_ms": True},
        {"hang_ms": None},
        {"honor_idempotency": "yes"},
        {"honor_idempotency": 1},
        {"seed": "42"},
        {"seed": 4.2},
        {"surprise": 1},
        {"error_rate": 0.5, "latency_ms": -1},
        [],
        "error_rate",
    ],
)
def test_invalid_faults_are_refused_and_change_nothing(client: httpx.Client, update: Any) -> None:
    set_faults(client, timeout_rate=0.1)
    response = client.put("/_sandbox/faults", json=update)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert client.get("/_sandbox/faults").json() == {**DEFAULT_FAULTS, "timeout_rate": 0.1}


def test_error_fault_stores_nothing_and_a_retry_processes_once(client: httpx.Client) -> None:
    set_faults(client, error_rate=1)
    failed = post(client, "/v1/payments", payment_body(), key="k-err")
    assert failed.status_code == 500
    assert error_of(failed) == {"type": "api_error", "message": "sandbox injected error"}
    assert client.get("/v1/payments").json() == {"data": []}
    assert ledger(client) == []
    set_faults(client, error_rate=0)
    retried = post(client, "/v1/payments", payment_body(), key="k-err")
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    again = post(client, "/v1/payments", payment_body(), key="k-err")
    assert again.headers["idempotent-replayed"] == "true"
    assert kinds(client) == ["authorization"]


def test_error_fault_applies_to_follow_ups_too(client: httpx.Client) -> None:
    payment_id = create(client)["id"]
    set_faults(client, error_rate=1)
    assert post(client, f"/v1/payments/{payment_id}/capture", {}).status_code == 500
    assert client.get(f"/v1/payments/{payment_id}").json()["amount_captured"] == 0


def test_faults_do_not_touch_reads(client: httpx.Client) -> None:
    set_faults(client, error_rate=1, drop_after_processing_rate=1)
    assert client.get("/_sandbox/ledger").status_code == 200
    assert client.get("/v1/payments").status_code == 200


def test_timeout_fault_processes_after_the_caller_gave_up(client: httpx.Client) -> None:
    set_faults(client, timeout_rate=1, hang_ms=300)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/payments",
            json=payment_body(reference="pay_hang"),
            headers={"Idempotency-Key": "k-hang"},
            timeout=0.2,
        )
    assert client.get("/v1/payments", params={"reference": "pay_hang"}).json() == {"data": []}

    def created() -> bool:
        listed = client.get("/v1/payments", params={"reference": "pay_hang"}).json()
        return len(listed["data"]) == 1

    wait_for(created)
    assert time.monotonic() - started >= 0.3
    assert kinds(client) == ["authorization"]
    assert ledger(client)[0]["idempotency_key"] == "k-hang"


def test_timeout_fault_answers_a_patient_caller(client: httpx.Client) -> None:
    set_faults(client, timeout_rate=1, hang_ms=150)
    started = time.monotonic()
    response = post(client, "/v1/payments", payment_body())
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


def test_drop_fault_moves_money_but_answers_nothing(client: httpx.Client) -> None:
    set_faults(client, drop_after_processing_rate=1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, "/v1/payments", payment_body(capture=True), key="k-drop")
    assert kinds(client) == ["authorization", "capture"]
    set_faults(client, drop_after_processing_rate=0)
    retried = post(client, "/v1/payments", payment_body(capture=True), key="k-drop")
    assert retried.status_code == 200
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.json()["status"] == "captured"
    assert kinds(client) == ["authorization", "capture"]


def test_replays_are_not_dropped(client: httpx.Client) -> None:
    create(client, key="k-first")
    set_faults(client, drop_after_processing_rate=1, error_rate=1)
    replay = post(client, "/v1/payments", payment_body(), key="k-first")
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"


def test_ignoring_idempotency_charges_twice(client: httpx.Client) -> None:
    set_faults(client, honor_idempotency=False)
    first = post(client, "/v1/payments", payment_body(capture=True), key="k-twice")
    second = post(client, "/v1/payments", payment_body(capture=True), key="k-twice")
    assert (first.status_code, second.status_code) == (200, 200)
    assert "idempotent-replayed" not in second.headers
    assert first.json()["id"] != second.json()["id"]
    assert kinds(client) == ["authorization", "capture", "authorization", "capture"]
    # even another body under the same key is processed: the header is ignored entirely
    third = post(client, "/v1/payments", payment_body(amount=5), key="k-twice")
    assert third.status_code == 200


def test_latency_fault(client: httpx.Client) -> None:
    set_faults(client, latency_ms=120)
    started = time.monotonic()
    create(client)
    assert time.monotonic() - started >= 0.12


def test_reset_clears_everything(client: httpx.Client) -> None:
    create(client, key="k-reset", capture=True)
    set_faults(client, error_rate=0.5, seed=3, honor_idempotency=False)
    response = client.post("/_sandbox/reset")
    assert response.status_code == 200
    assert client.get("/_sandbox/faults").json() == DEFAULT_FAULTS
    assert ledger(client) == []
    assert client.get("/v1/payments").json() == {"data": []}
    again = post(client, "/v1/payments", payment_body(capture=True), key="k-reset")
    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers


def test_webhooks_are_off_by_default(server: SandboxServer, client: httpx.Client) -> None:
    assert client.get("/_sandbox/webhooks").json() == {
        "enabled": False,
        "url": None,
        "secret": None,
        "max_attempts": None,
        "initial_delay_ms": None,
        "max_delay_ms": None,
        "timeout_ms": None,
        "stats": {"sent": 0, "delivered": 0, "failed_attempts": 0, "pending": 0, "gave_up": 0},
    }
    create(client, capture=True)
    assert server.state.webhook_stats()["sent"] == 0
    assert client.delete("/_sandbox/webhooks").json()["enabled"] is False  # already off: fine


def test_disputes_move_money_without_webhooks(server: SandboxServer, client: httpx.Client) -> None:
    payment = create(client, capture=True, amount=900)
    dispute = post(client, f"/_sandbox/payments/{payment['id']}/dispute", {}).json()
    assert (dispute["amount"], dispute["status"], dispute["payment"]) == (
        900,
        "open",
        payment["id"],
    )
    post(client, f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "won"})
    assert kinds(client) == ["authorization", "capture", "dispute", "dispute_reversal"]
    # the payment object itself is unchanged by disputes
    assert client.get(f"/v1/payments/{payment['id']}").json() == payment
    client.post("/_sandbox/reset")
    assert server.state.disputes() == []
    assert post(client, f"/_sandbox/disputes/{dispute['id']}/close", {}).status_code == 400
    closing = post(client, f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "lost"})
    assert closing.status_code == 404


def _outcomes(client: httpx.Client, seed: int) -> list[int]:
    set_faults(client, error_rate=0.5, seed=seed)
    return [post(client, "/v1/payments", payment_body()).status_code for _ in range(24)]


def test_seed_makes_faults_reproducible(client: httpx.Client) -> None:
    first = _outcomes(client, seed=42)
    client.post("/_sandbox/reset")
    second = _outcomes(client, seed=42)
    assert first == second
    assert set(first) == {200, 500}
    client.post("/_sandbox/reset")
    assert _outcomes(client, seed=7) != first


def test_state_object_exposes_what_happened(server: SandboxServer, client: httpx.Client) -> None:
    payment = create(client, key="k-state", capture=True)
    assert server.state.payment(payment["id"]) == payment
    assert [p["id"] for p in server.state.payments()] == [payment["id"]]
    assert [e["kind"] for e in server.state.ledger()] == ["authorization", "capture"]
    assert server.state.faults.hang_ms == 10000
    server.state.ledger().clear()  # a copy: the sandbox's own ledger is untouched
    assert len(ledger(client)) == 2
