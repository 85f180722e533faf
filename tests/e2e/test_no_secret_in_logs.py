"""No secret in any log: a real ``payorch serve`` at DEBUG, with every secret a deployment
holds set (provider API keys through its configuration file, webhook secrets, the chain key,
the encryption keys), runs the whole flow (creates on four providers, a decline, webhooks
good and badly signed, bad requests) and then the ``audit`` commands; everything it and they
wrote (stdout, stderr, the answers callers got) is scanned for every secret, in every form
it could leak in (as set, base64, hex, and the bytes a base64 or hex secret stands for)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from adapters.sandbox import SandboxServer, new_webhook_secret, sign_standard_webhook
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.trust import hash_token
from orchestrator.encryption import new_key
from tests.e2e.helpers import create_request
from tests.emulators import adyen, razorpay, stripe

pytestmark = pytest.mark.timeout(180)

RAZORPAY_BODY = (
    Path(__file__).parents[1] / "adapters" / "data" / "razorpay_payment_authorized_webhook.json"
).read_bytes()
SHORTEST_NEEDLE = 8  # shorter fragments would match by chance


class Secrets:
    """Every secret of the deployment under test, by name: what the scan looks for."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, name: str, value: str) -> str:
        self.values[name] = value
        return value

    def needles(self) -> dict[str, str]:
        """'name (form)' -> the text that must appear nowhere."""
        found: dict[str, str] = {}
        for name, value in self.values.items():
            for form, needle in forms_of(value).items():
                if len(needle) >= SHORTEST_NEEDLE:
                    found[f"{name} ({form})"] = needle
        return found

    def scan(self, text: str) -> list[str]:
        """The secrets (and forms) found in ``text``; case-insensitive for hex forms."""
        lowered = text.lower()
        return [
            name
            for name, needle in self.needles().items()
            if needle in text or ("hex" in name and needle.lower() in lowered)
        ]


def forms_of(value: str) -> dict[str, str]:
    raw = value.encode()
    forms = {
        "as set": value,
        "base64": base64.b64encode(raw).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
    }
    # A secret that is itself an encoding (an AES key in base64, a whsec_ key, an HMAC key in
    # hex) could leak as the bytes it stands for.
    body = value.removeprefix("whsec_")
    decoded: dict[str, bytes] = {}
    with contextlib.suppress(binascii.Error, ValueError):
        decoded["its bytes"] = base64.b64decode(body, validate=True)
    with contextlib.suppress(ValueError):
        decoded["its bytes from hex"] = bytes.fromhex(body)
    for origin, data in decoded.items():
        if len(data) >= SHORTEST_NEEDLE // 2:
            forms[f"{origin}, hex"] = data.hex()
            forms[f"{origin}, base64"] = base64.b64encode(data).decode().rstrip("=")
            forms[f"{origin}, urlsafe base64"] = base64.urlsafe_b64encode(data).decode().rstrip("=")
            forms[f"{origin}, latin-1"] = data.decode("latin-1")
    if body != value:
        forms["without its prefix"] = body
    return forms


@pytest.fixture
def emulators() -> Iterator[dict[str, str]]:
    started = {
        "stripe": stripe.StripeEmulator(),
        "razorpay": razorpay.RazorpayEmulator(),
        "adyen": adyen.AdyenEmulator(),
    }
    for emulator in started.values():
        emulator.start()
    try:
        yield {name: emulator.url for name, emulator in started.items()}
    finally:
        for emulator in started.values():
            emulator.stop()


def deployment(
    tmp_path: Path, sandbox: SandboxServer, urls: dict[str, str]
) -> tuple[Secrets, dict[str, str]]:
    """The secrets and the environment of a deployment where every secret is set: some in
    the environment, some in secret files, providers named in the configuration file."""
    secrets = Secrets()
    files = tmp_path / "secrets"
    files.mkdir()

    def secret_file(name: str, value: str) -> str:
        (files / name).write_text(value + "\n")
        return str(files / name)

    k2, k1 = new_key("k2"), new_key("k1")
    for entry in (k2, k1):  # id:base64: the id is a name, the key is the secret
        secrets.add(f"encryption key {entry[:2]}", entry.partition(":")[2])
    env = {
        "PAYORCH_AUDIT_CHAIN_KEY": secrets.add("chain key", "chain-key-" + os.urandom(16).hex()),
        "PAYORCH_ENCRYPTION_KEYS": f"{k2},{k1}",
        "SANDBOX_WEBHOOK_SECRET": secrets.add("sandbox webhook secret", new_webhook_secret()),
        "RAZORPAY_KEY_ID": razorpay.KEY_ID,  # an identifier, public in Razorpay's dashboard
        "RAZORPAY_KEY_SECRET": secrets.add("razorpay key secret", razorpay.KEY_SECRET),
        "RAZORPAY_WEBHOOK_SECRET": secrets.add(
            "razorpay webhook secret", "rzp-whsec-" + os.urandom(12).hex()
        ),
        "STRIPE_WEBHOOK_SECRET": secrets.add("stripe webhook secret", new_webhook_secret()),
    }
    # The one credential the Razorpay adapter sends: HTTP Basic of the id and the secret.
    basic = base64.b64encode(f"{razorpay.KEY_ID}:{razorpay.KEY_SECRET}".encode()).decode()
    secrets.add("razorpay basic auth", basic)
    stripe_key = secret_file("stripe", secrets.add("stripe secret key", stripe.SECRET_KEY))
    adyen_key = secret_file("adyen", secrets.add("adyen api key", adyen.API_KEY))
    adyen_hmac = secret_file("adyen-hmac", secrets.add("adyen hmac key", adyen.HMAC_KEY))
    # Callers' bearer tokens: the one that works, and a wrong one a caller tries first.
    token = secrets.add("bearer token", "tok-" + os.urandom(16).hex())
    secrets.add("wrong bearer token", "tok-" + os.urandom(16).hex())
    config = tmp_path / "providers.toml"
    config.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'
        'webhook_secret_env = "SANDBOX_WEBHOOK_SECRET"\n'
        f'[providers.stripe-gb]\ntype = "stripe"\nbase_url = "{urls["stripe"]}"\n'
        f'secret_key_file = "{stripe_key}"\nwebhook_secret_env = "STRIPE_WEBHOOK_SECRET"\n'
        f'[providers.razorpay-in]\ntype = "razorpay"\nbase_url = "{urls["razorpay"]}"\n'
        'key_id_env = "RAZORPAY_KEY_ID"\nkey_secret_env = "RAZORPAY_KEY_SECRET"\n'
        'webhook_secret_env = "RAZORPAY_WEBHOOK_SECRET"\n'
        f'[providers.adyen-nl]\ntype = "adyen"\nbase_url = "{urls["adyen"]}/v71"\n'
        f'api_key_file = "{adyen_key}"\nmerchant_account = "{adyen.MERCHANT_ACCOUNT}"\n'
        f'return_url = "https://shop.example.com/return"\nwebhook_secret_file = "{adyen_hmac}"\n'
        '[routes]\nUS = ["sandbox"]\nGB = ["stripe-gb"]\nIN = ["razorpay-in"]\n'
        'NL = ["adyen-nl"]\n"*" = ["sandbox"]\n'
        f'[[auth.callers]]\nname = "checkout"\naccount = "shop"\n'
        f'roles = ["payments.write", "payments.read", "events.stream"]\n'
        f'token_sha256 = ["{hash_token(token)}"]\n'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env |= {
        "PAYORCH_CONFIG": str(config),
        "PAYORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'payorch.db'}",
        "PAYORCH_GRPC_LISTEN": "127.0.0.1:0",
        "PAYORCH_HTTP_LISTEN": "127.0.0.1:0",
    }
    return secrets, base | env


class Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends a caller's bearer token with every call, as a calling service does."""

    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(
            details._replace(metadata=[*(details.metadata or []), *self.metadata]), request
        )


def payorch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--log-level", "DEBUG", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for(pattern: str, log: Path, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared:\n{log.read_text()}")


def failure(call: object) -> str:
    """What a caller sees of a refused call: its code, message and details."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
        return f"{error.code()} {error.details()} {trailers!r}"  # type: ignore[attr-defined]
    raise AssertionError("the call was not refused")


def the_whole_flow(
    stub: payments_pb2_grpc.PaymentOrchestratorStub, http_url: str, secrets: Secrets
) -> tuple[list[str], str]:
    """Creates on every provider, a decline, a capture, webhooks good and bad, bad requests:
    what callers saw, and the sandbox payment's id."""
    seen: list[str] = []
    us = stub.CreatePayment(create_request("flow-us", metadata={"order": "o-1"}))
    seen.append(str(us))
    seen.append(
        str(
            stub.CapturePayment(
                pb.CapturePaymentRequest(
                    idempotency_key="flow-us-capture", payment_id=us.payment_id
                )
            )
        )
    )
    declined = stub.CreatePayment(
        create_request("flow-declined", payment_method="pm_card_declined")
    )
    assert declined.status == pb.PAYMENT_STATUS_DECLINED
    seen.append(str(declined))
    for key, region, currency, method in (
        ("flow-gb", "GB", "GBP", "pm_card_visa"),
        ("flow-in", "IN", "INR", f"{razorpay.CUSTOMER}:{razorpay.APPROVED}"),
        ("flow-nl", "NL", "EUR", adyen.APPROVED),
    ):
        payment = stub.CreatePayment(
            create_request(key, region=region, currency=currency, payment_method=method)
        )
        assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED, (key, payment)
        seen.append(str(payment))
    # Bad requests: refused with what the caller must fix, never a secret.
    seen.append(failure(lambda: stub.CreatePayment(create_request("bad-amount", amount=-5))))
    seen.append(
        failure(
            lambda: stub.CreatePayment(
                create_request("bad-card", metadata={"note": "4242 4242 4242 4242"})
            )
        )
    )
    seen.append(failure(lambda: stub.GetPayment(pb.GetPaymentRequest(payment_id="nope"))))
    # A Razorpay delivery signed with its secret, one signed with another, a sandbox one
    # signed with another: stored, refused, refused.
    rzp = secrets.values["razorpay webhook secret"]
    for secret, event_id, expected in (
        (rzp, "evt_ScanGood", 200),
        ("not-the-secret", "evt_ScanBad", 401),
    ):
        signature = hmac.new(secret.encode(), RAZORPAY_BODY, hashlib.sha256).hexdigest()
        answer = httpx.post(
            f"{http_url}/webhooks/razorpay",
            content=RAZORPAY_BODY,
            headers={"x-razorpay-signature": signature, "x-razorpay-event-id": event_id},
        )
        assert answer.status_code == expected, answer.text
        seen.append(answer.text)
    stamp = int(time.time())
    body = b'{"id":"evt_forged","type":"payment.authorized","created":%d,"data":{}}' % stamp
    forged = httpx.post(
        f"{http_url}/webhooks/sandbox",
        content=body,
        headers={
            "webhook-id": "evt_forged",
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_standard_webhook(
                new_webhook_secret(), "evt_forged", stamp, body
            ),
        },
    )
    assert forged.status_code == 401
    seen.append(forged.text)
    seen.append(
        httpx.post(
            f"{http_url}/webhooks/stripe", content=b"{}", headers={"stripe-signature": "t=1,v1=00"}
        ).text
    )
    return seen, us.payment_id


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_reaches_any_log_or_answer(
    tmp_path: Path, sandbox: SandboxServer, emulators: dict[str, str], log_format: str
) -> None:
    secrets, env = deployment(tmp_path, sandbox, emulators)
    env["PAYORCH_LOG_FORMAT"] = log_format  # the audit commands' logs too
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "--log-level",
                "DEBUG",
                "--log-format",
                log_format,
                "serve",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    captured: list[str] = []
    try:
        port = wait_for(r"payorch gRPC listening on 127\.0\.0\.1:(\d+)", log, process)[1]
        http_port = wait_for(r"payorch HTTP listening on 127\.0\.0\.1:(\d+)", log, process)[1]
        http_url = f"http://127.0.0.1:{http_port}"
        sandbox.configure_webhooks(
            f"{http_url}/webhooks/sandbox",
            secrets.values["sandbox webhook secret"],
            initial_delay_ms=20,
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            wrong = payments_pb2_grpc.PaymentOrchestratorStub(
                grpc.intercept_channel(plain, Bearer(secrets.values["wrong bearer token"]))
            )
            captured.append(failure(lambda: wrong.CreatePayment(create_request("flow-wrong"))))
            channel = grpc.intercept_channel(plain, Bearer(secrets.values["bearer token"]))
            stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
            seen, payment_id = the_whole_flow(stub, http_url, secrets)
            captured.extend(seen)
            # The sandbox's own signed webhooks arrive and are applied.
            wait_for(r"webhook sandbox: 1 stored", log, process)
            request = pb.ListPaymentEventsRequest(payment_id=payment_id)
            deadline = time.monotonic() + 15
            while "ProviderEventReceived" not in [
                e.type for e in stub.ListPaymentEvents(request).events
            ]:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            captured.append(str(stub.ListPaymentEvents(request)))
    finally:
        sandbox.disable_webhooks()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    serve_output = log.read_text()
    assert code == 0, serve_output
    captured.append(serve_output)
    # The audit commands, at DEBUG too, with the same secrets.
    ledger = tmp_path / "ledger.json"
    ledger.write_text(httpx.get(f"{sandbox.url}/_sandbox/ledger").text)
    for args in (
        ["audit", "verify"],
        ["audit", "show", payment_id],
        ["audit", "export", "--format", "jsonl", "--out", str(tmp_path / "export.jsonl")],
        ["audit", "reconcile", "--provider", "sandbox", "--statement", str(ledger)],
        ["audit", "show", "not-a-payment"],
    ):
        done = payorch(*args, env=env, cwd=tmp_path)
        captured.extend([done.stdout, done.stderr])
        assert done.returncode in (0, 1), done.stderr
    captured.append((tmp_path / "export.jsonl").read_text())
    everything = "\n".join(captured)

    # The flow did run, at DEBUG, through every part the scan is meant to cover.
    if log_format == "json":
        lines = [json.loads(line) for line in serve_output.splitlines() if line.strip()]
        assert "DEBUG" in {line["level"] for line in lines}
        assert any(line.get("payment_id") == payment_id for line in lines)
    else:
        assert " DEBUG " in serve_output
    for expected in (
        "webhook razorpay: 1 stored",
        "provider sandbox",
        "no findings",
        "event state encrypted with key id k2",
        "INVALID_AMOUNT",
    ):
        assert expected in everything, expected
    assert "is not set" not in serve_output  # every key was set: no start-up warning
    assert json.loads(captured[-1].splitlines()[0])["payment_id"]
    # ...and no secret is anywhere in it, in any form.
    assert secrets.scan(everything) == []


def test_the_scan_finds_a_secret_in_any_of_its_forms() -> None:
    secrets = Secrets()
    key = secrets.add("encryption key", new_key("k1").partition(":")[2])
    hmac_key = secrets.add("hmac key", adyen.HMAC_KEY)
    whsec = secrets.add("webhook secret", new_webhook_secret())
    clean = "2026-01-01 DEBUG payorch provider sandbox: authorize -> authorized, key id k1"
    assert secrets.scan(clean) == []
    raw_key = base64.b64decode(key)
    raw_whsec = base64.b64decode(whsec.removeprefix("whsec_"))
    for leak, name in (
        (f"DEBUG env PAYORCH_ENCRYPTION_KEYS=k1:{key}", "encryption key (as set)"),
        (f"DEBUG key bytes {raw_key.hex()}", "encryption key (its bytes, hex)"),
        (
            f"DEBUG key {base64.urlsafe_b64encode(raw_key).decode()}",
            "encryption key (its bytes, urlsafe base64)",
        ),
        (f"ERROR hmac {hmac_key.lower()}", "hmac key (its bytes from hex, hex)"),
        (f"DEBUG verifying with {raw_whsec.hex()}", "webhook secret (its bytes, hex)"),
        (f"DEBUG secret {whsec.removeprefix('whsec_')}", "webhook secret (without its prefix)"),
        (f"DEBUG header {base64.b64encode(whsec.encode()).decode()}", "webhook secret (base64)"),
    ):
        assert name in secrets.scan(f"{clean}\n{leak}\n{clean}"), leak
