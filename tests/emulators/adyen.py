"""An emulator of Adyen's Checkout API v71, and a receiver for its standard webhooks.

What it speaks, and where it comes from (docs.adyen.com unless said otherwise):

- ``POST /v71/payments`` with a stored card: ``paymentMethod {"type": "scheme",
  "storedPaymentMethodId"}``, ``shopperReference``, ``returnUrl`` (required in v71, per the
  Checkout v71 OpenAPI types in Adyen/adyen-node-api-library). Answers HTTP 200 with
  ``resultCode``, also for refusals (``refusalReason``/``refusalReasonCode``, "Refusal reasons").
  ``captureDelayHours: 0`` captures at once, ``additionalData.manualCapture: "true"`` holds the
  authorisation; with neither, the merchant account's default (immediate, as Adyen's is).
- ``POST /v71/payments/{pspReference}/captures|cancels|refunds``: HTTP 201 with
  ``status: "received"``; the result comes in a CAPTURE, CANCELLATION or REFUND webhook.
  Over-captures and over-refunds are refused there with "Insufficient balance on payment"
  (Adyen help centre). Multiple partial captures are taken as enabled on the account.
- ``X-API-Key``: missing or wrong -> 401 ``{"status":401,"errorCode":"000","message":"HTTP
  Status Response - Unauthorized","errorType":"security"}``; a merchant account the key may not
  use -> 403 ``901 Invalid Merchant Account``.
- ``Idempotency-Key`` ("API idempotency"): scoped to the company account; the first answer is
  stored and replayed for the same key, whatever the body (Adyen documents no comparison); a
  key still in flight -> 422 ``704 request already processed or in progress``; an answer
  marked ``Transient-Error: true`` is not stored, so the next request is processed as the first.
  Answers echo the ``Idempotency-Key`` header.
- Standard webhooks (``{"live": "false", "notificationItems": [{"NotificationRequestItem":
  ...}]}``) signed with ``additionalData.hmacSignature``, delivered to ``webhook_url`` before the
  API answer is written (Adyen sends them moments later; here they are never late).

Test tokens, all stored for shopper ``shopper_1`` (pass ``"shopper_1:<token>"``):
``stored_approved`` (Authorised), ``stored_refused`` (Refused, "Refused", code 2),
``stored_error`` (Error, "Acquirer Error", code 4), ``stored_pending`` (Pending, no webhook),
``stored_no_connection`` and ``stored_ioexception`` (Adyen's ``requestedTestErrorResponseCode``
scenarios NO_CONNECTION_AVAILABLE, transient, and IOEXCEPTION_RECEIVED, stored for the key;
HTTP 500 for both, a status Adyen does not document).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from adapters.adyen import AdyenNotifications
from adapters.adyen.transformers import hmac_signature
from tests.emulators.base import Drop, Emulator, IdempotencyStore, Reply, Request

API_KEY = "AQEtest-payorch-api-key"
COMPANY = "PayorchCompany"
MERCHANT_ACCOUNT = "PayorchTestMerchant"
SHOPPER = "shopper_1"
# The key of Adyen's own HMAC test vector (Adyen/adyen-python-api-library test/UtilTest.py).
HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"

APPROVED = f"{SHOPPER}:stored_approved"
REFUSED = f"{SHOPPER}:stored_refused"
ERROR = f"{SHOPPER}:stored_error"
PENDING = f"{SHOPPER}:stored_pending"
NO_CONNECTION = f"{SHOPPER}:stored_no_connection"
IOEXCEPTION = f"{SHOPPER}:stored_ioexception"

_TOKENS = {
    "stored_approved",
    "stored_refused",
    "stored_error",
    "stored_pending",
    "stored_no_connection",
    "stored_ioexception",
}
_MODIFICATION = re.compile(r"^/v71/payments/([^/]+)/(captures|cancels|refunds)$")
_EVENTS = {"captures": "CAPTURE", "cancels": "CANCELLATION", "refunds": "REFUND"}
_INSUFFICIENT = "Insufficient balance on payment"


@dataclass(frozen=True)
class Account:
    """An API credential of a company account, and the merchant accounts it may use."""

    api_key: str
    company: str
    merchant_accounts: frozenset[str]


@dataclass
class Payment:
    psp: str
    merchant_account: str
    reference: str
    currency: str
    authorised: int
    captured: int = 0
    refunded: int = 0
    cancelled: bool = False


@dataclass
class _Result:
    reply: Reply
    transient: bool = False
    webhooks: list[dict[str, Any]] = field(default_factory=list)


def error_reply(
    status: int, code: str, message: str, kind: str, headers: dict[str, str] | None = None
) -> Reply:
    """Adyen's error body."""
    body = {"status": status, "errorCode": code, "message": message, "errorType": kind}
    return Reply(status, json.dumps(body).encode(), dict(headers or {}))


UNAUTHORIZED = error_reply(401, "000", "HTTP Status Response - Unauthorized", "security")


class AdyenEmulator(Emulator):
    def __init__(
        self,
        *,
        accounts: list[Account] | None = None,
        webhook_url: str = "",
        hmac_key: str = HMAC_KEY,
    ) -> None:
        super().__init__()
        self.accounts = {
            a.api_key: a
            for a in accounts or [Account(API_KEY, COMPANY, frozenset({MERCHANT_ACCOUNT}))]
        }
        self.webhook_url = webhook_url
        self.hmac_key = hmac_key
        self.payments: dict[str, Payment] = {}
        self.webhooks_sent: list[dict[str, Any]] = []
        self._keys = IdempotencyStore()
        self._slow: list[float] = []

    def slow_next(self, seconds: float) -> None:
        """Hold the next request ``seconds`` once its key is taken (``hang_next`` holds it
        before): a request under the same key meanwhile finds it in flight."""
        self._slow.append(seconds)

    # --- serving ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply | Drop:
        account = self.accounts.get(request.headers.get("x-api-key", ""))
        if account is None:
            return UNAUTHORIZED  # authentication comes before anything else, keys included
        key = request.headers.get("idempotency-key", "")
        scoped = f"{account.company}\x00{key}"
        if key:
            # Adyen documents no comparison of bodies under a key: the same fingerprint for all.
            earlier = self._keys.begin(scoped, "")
            if earlier == "in_flight":
                return error_reply(
                    422, "704", "request already processed or in progress", "validation"
                )
            if isinstance(earlier, Reply):
                return earlier
        if self._slow:
            time.sleep(self._slow.pop(0))
        result = self._process(request, account)
        reply = result.reply
        if key:
            reply = Reply(reply.status, reply.body, {**reply.headers, "Idempotency-Key": key})
            self._keys.finish(scoped, None if result.transient else reply)
        for item in result.webhooks:
            self._deliver(item)
        return reply

    def _process(self, request: Request, account: Account) -> _Result:
        if request.method != "POST":
            return _Result(error_reply(404, "000", "Not Found", "validation"))
        try:
            body = json.loads(request.body)
        except ValueError:
            return _Result(error_reply(400, "000", "Unable to parse message", "validation"))
        if not isinstance(body, dict):
            return _Result(error_reply(400, "000", "Unable to parse message", "validation"))
        if body.get("merchantAccount") not in account.merchant_accounts:
            return _Result(error_reply(403, "901", "Invalid Merchant Account", "security"))
        if request.path == "/v71/payments":
            return self._pay(body)
        match = _MODIFICATION.match(request.path)
        if match:
            return self._modify(body, match.group(1), match.group(2))
        return _Result(error_reply(404, "000", "Not Found", "validation"))

    # --- /payments --------------------------------------------------------------------------

    def _pay(self, body: dict[str, Any]) -> _Result:
        amount = _amount(body)
        if amount is None:
            return _Result(
                error_reply(422, "100", "Required object 'amount' is not provided.", "validation")
            )
        if not body.get("returnUrl"):
            return _Result(error_reply(422, "14_030", "Return URL is missing.", "validation"))
        method = body.get("paymentMethod") or {}
        if not body.get("shopperReference"):
            return _Result(
                error_reply(
                    422, "000", "Recurring payments require a shopperReference", "validation"
                )
            )
        token = method.get("storedPaymentMethodId")
        if body["shopperReference"] != SHOPPER or token not in _TOKENS:
            return _Result(error_reply(422, "800", "Contract not found", "validation"))
        if token == "stored_no_connection":
            return _Result(
                error_reply(
                    500, "000", "NO_CONNECTION_AVAILABLE", "internal", {"Transient-Error": "true"}
                ),
                transient=True,
            )
        if token == "stored_ioexception":
            return _Result(error_reply(500, "000", "IOEXCEPTION_RECEIVED", "internal"))
        return self._authorise(body, token, *amount)

    def _authorise(self, body: dict[str, Any], token: str, value: int, currency: str) -> _Result:
        psp = _psp()
        answer: dict[str, Any] = {
            "pspReference": psp,
            "merchantReference": body.get("reference", ""),
            "amount": {"value": value, "currency": currency},
        }
        if token == "stored_pending":
            return _Result(_ok(200, {**answer, "resultCode": "Pending"}))
        if token in ("stored_refused", "stored_error"):
            code, reason, number = (
                ("Refused", "Refused", "2")
                if token == "stored_refused"
                else ("Error", "Acquirer Error", "4")
            )
            answer |= {"resultCode": code, "refusalReason": reason, "refusalReasonCode": number}
            item = self._item(
                "AUTHORISATION", psp, body, value, currency, success=False, reason=reason
            )
            return _Result(_ok(200, answer), webhooks=[item])
        payment = Payment(
            psp, body["merchantAccount"], str(body.get("reference", "")), currency, value
        )
        manual = (body.get("additionalData") or {}).get("manualCapture") == "true"
        delay = body.get("captureDelayHours", 0 if not manual else None)
        with self.lock:
            self.payments[psp] = payment
            self.move("authorization", value, currency)
            if delay == 0 and not manual:
                payment.captured = value
                self.move("capture", value, currency)
        item = self._item("AUTHORISATION", psp, body, value, currency, success=True, reason="")
        return _Result(_ok(200, {**answer, "resultCode": "Authorised"}), webhooks=[item])

    # --- modifications ----------------------------------------------------------------------

    def _modify(self, body: dict[str, Any], payment_psp: str, action: str) -> _Result:
        with self.lock:
            payment = self.payments.get(payment_psp)
        if payment is None or payment.merchant_account != body["merchantAccount"]:
            return _Result(
                error_reply(
                    422, "167", "Original pspReference required for this operation", "validation"
                )
            )
        amount = _amount(body)
        if action != "cancels" and amount is None:
            return _Result(
                error_reply(422, "100", "Required object 'amount' is not provided.", "validation")
            )
        psp = _psp()
        answer: dict[str, Any] = {
            "merchantAccount": body["merchantAccount"],
            "paymentPspReference": payment_psp,
            "pspReference": psp,
            "reference": body.get("reference", ""),
            "status": "received",
        }
        value, currency = amount or (payment.authorised, payment.currency)
        if action != "cancels":
            answer["amount"] = {"value": value, "currency": currency}
        reason = self._apply(payment, action, value, currency)
        item = self._item(
            _EVENTS[action], psp, body, value, currency, success=not reason, reason=reason,
            original=payment_psp,
        )  # fmt: skip
        return _Result(_ok(201, answer), webhooks=[item])

    def _apply(self, payment: Payment, action: str, value: int, currency: str) -> str:
        """Books the modification; the failure reason if it cannot be done, else ""."""
        with self.lock:
            if currency != payment.currency:
                return "Modification in different currency than authorisation"
            if action == "captures":
                if payment.cancelled or value > payment.authorised - payment.captured:
                    return _INSUFFICIENT
                payment.captured += value
                self.move("capture", value, currency)
            elif action == "cancels":
                if payment.cancelled or payment.captured:
                    return _INSUFFICIENT
                payment.cancelled = True
                self.move("void", payment.authorised, currency)
            else:
                if value > payment.captured - payment.refunded:
                    return _INSUFFICIENT
                payment.refunded += value
                self.move("refund", value, currency)
        return ""

    # --- webhooks ---------------------------------------------------------------------------

    def _item(
        self, event: str, psp: str, body: dict[str, Any], value: int, currency: str, *,
        success: bool, reason: str, original: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        item: dict[str, Any] = {
            "amount": {"value": value, "currency": currency},
            "eventCode": event,
            "eventDate": "2025-01-01T00:00:00+00:00",
            "merchantAccountCode": body["merchantAccount"],
            # for modifications: the modification's own reference (see the report)
            "merchantReference": str(body.get("reference", "")),
            "paymentMethod": "visa",
            "pspReference": psp,
            "reason": reason,
            "success": "true" if success else "false",
        }
        if original:
            item["originalReference"] = original
        item["additionalData"] = {"hmacSignature": hmac_signature(item, self.hmac_key)}
        return item

    def _deliver(self, item: dict[str, Any]) -> None:
        with self.lock:
            self.webhooks_sent.append(item)
        if not self.webhook_url:
            return
        document = {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(document).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                answer.read()
        except OSError:
            pass  # Adyen would retry later; the emulator does not


def _amount(body: dict[str, Any]) -> tuple[int, str] | None:
    amount = body.get("amount")
    if not isinstance(amount, dict):
        return None
    value, currency = amount.get("value"), amount.get("currency")
    if not isinstance(value, int) or isinstance(value, bool) or not isinstance(currency, str):
        return None
    return value, currency


def _ok(status: int, body: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(body).encode())


def _psp() -> str:
    return secrets.token_hex(8).upper()  # Adyen's pspReference: 16 characters


# --- the merchant's side: a webhook endpoint ---------------------------------------------------


class WebhookReceiver:
    """A merchant's webhook endpoint on loopback: verifies each item's HMAC signature and
    records the items in ``notifications``; answers ``[accepted]`` as Adyen expects."""

    def __init__(self, notifications: AdyenNotifications, hmac_key: str = HMAC_KEY) -> None:
        self.notifications = notifications
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    notifications.accept(body, hmac_key)
                    status, answer = 200, b"[accepted]"
                except ValueError:
                    receiver.rejected += 1
                    status, answer = 401, b"bad signature"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/adyen/webhooks"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Running:
    emulator: AdyenEmulator
    receiver: WebhookReceiver
    notifications: AdyenNotifications


def running() -> Iterator[Running]:
    """An emulator delivering its webhooks to a receiver that feeds ``notifications``."""
    notifications = AdyenNotifications()
    receiver = WebhookReceiver(notifications)
    emulator = AdyenEmulator(webhook_url=receiver.url)
    emulator.start()
    try:
        yield Running(emulator, receiver, notifications)
    finally:
        emulator.stop()
        receiver.stop()
