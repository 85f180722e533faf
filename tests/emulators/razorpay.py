"""An emulator of Razorpay's REST API (v1): Orders, recurring (saved-token) payments,
capture, refunds, and the lookups over them, with Razorpay's JSON shapes and errors.

What it follows (razorpay/markdown-docs, razorpay/razorpay-python, hyperswitch's connector):

- Basic auth with key id and key secret; anything else gets 401 with Razorpay's
  ``{"error": {"code": "BAD_REQUEST_ERROR", "description": "The api key provided is
  invalid", "source": "NA", "step": "NA", "reason": "NA", "metadata": {}}}``.
- JSON request bodies; fields an endpoint does not take are refused ("... is/are not required
  and should not be sent"); errors are 400 ``BAD_REQUEST_ERROR`` with field/source/step/reason.
- NO idempotency on Orders and payments: a repeated POST really makes another payment and
  moves money again. Refunds honour ``X-Refund-Idempotency`` (same key and body: the stored
  refund; another body or a request still running: 409).
- A payment is captured once and in full ("Capture amount must be equal to the amount
  authorized"); only captured payments are refunded; there is no void endpoint.
- A failed payment is answered 400 with its id in ``metadata``, and reads back ``failed``
  with ``error_code``/``error_reason``.

Test tokens, all belonging to customer ``CUSTOMER`` (a payment method is
``"<customer_id>:<token_id>"``):

- ``token_approved``: authorized (and captured at once when the Order says
  ``payment_capture``);
- ``token_declined_insufficient_funds``: fails with reason ``insufficient_funds``;
- ``token_pending``: stays ``created`` until ``complete_pending()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any, Final

from tests.emulators.base import Drop, Emulator, IdempotencyStore, Reply, Request

KEY_ID: Final = "rzp_test_Emulator0001"
KEY_SECRET: Final = "emulator_secret_0000000001"
CUSTOMER: Final = "cust_Emulator000001"
APPROVED: Final = "token_approved"
DECLINED: Final = "token_declined_insufficient_funds"
PENDING: Final = "token_pending"

CURRENCIES: Final = frozenset(
    {"INR", "USD", "EUR", "GBP", "SGD", "AED", "MYR", "JPY", "KWD", "BHD", "OMR"}
)
_THREE_DECIMAL: Final = frozenset({"KWD", "BHD", "OMR"})
_REFUND_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")

Entity = dict[str, Any]


def error_reply(
    status: int,
    description: str,
    *,
    field: str | None = None,
    source: str = "business",
    step: str = "payment_initiation",
    reason: str = "input_validation_failed",
    metadata: dict[str, str] | None = None,
    code: str = "BAD_REQUEST_ERROR",
) -> Reply:
    """An answer in Razorpay's error shape (errors.md)."""
    error: Entity = {
        "code": code,
        "description": description,
        "source": source,
        "step": step,
        "reason": reason,
        "metadata": metadata or {},
    }
    if field is not None:
        error["field"] = field
    return Reply(status, json.dumps({"error": error}).encode())


def na_error_reply(status: int, description: str, *, code: str = "BAD_REQUEST_ERROR") -> Reply:
    """An error about the request as a whole: Razorpay fills source, step and reason with NA."""
    return error_reply(status, description, source="NA", step="NA", reason="NA", code=code)


UNAUTHORIZED: Final = na_error_reply(401, "The api key provided is invalid")
NOT_FOUND: Final = na_error_reply(400, "The requested URL was not found on the server")


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _invalid(description: str, field: str | None = None) -> _Refused:
    return _Refused(error_reply(400, description, field=field))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


class RazorpayEmulator(Emulator):
    def __init__(self, key_id: str = KEY_ID, key_secret: str = KEY_SECRET) -> None:
        super().__init__()
        self.key_id, self.key_secret = key_id, key_secret
        self.orders: dict[str, Entity] = {}
        self.payments: dict[str, Entity] = {}
        self.refunds: dict[str, list[Entity]] = {}  # by payment id, oldest first
        self.tokens: dict[str, str] = {APPROVED: CUSTOMER, DECLINED: CUSTOMER, PENDING: CUSTOMER}
        self._capture_on_order: dict[str, bool] = {}
        self._refund_keys = IdempotencyStore()

    # --- control, for tests ------------------------------------------------------------

    def complete_pending(self) -> None:
        """The bank answers at last: every ``created`` payment is authorized (and captured
        where its Order said so)."""
        with self.lock:
            for payment in self.payments.values():
                if payment["status"] == "created":
                    self._authorize(payment)

    def orders_with_receipt(self, receipt: str) -> list[Entity]:
        with self.lock:
            return [o for o in self.orders.values() if o["receipt"] == receipt]

    # --- serving -----------------------------------------------------------------------

    def moves_money(self, request: Request) -> bool:
        # Orders move no money; payment creation, capture and refund do.
        return request.method == "POST" and request.path.startswith("/v1/payments/")

    def handle(self, request: Request) -> Reply | Drop:
        if request.headers.get("authorization") != self._expected_authorization():
            return UNAUTHORIZED
        try:
            return self._route(request)
        except _Refused as refused:
            return refused.reply

    def _expected_authorization(self) -> str:
        pair = f"{self.key_id}:{self.key_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _route(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[:1] != ["v1"]:
            return NOT_FOUND
        match method, parts[1:]:
            case "POST", ["orders"]:
                return self._create_order(_body(request))
            case "GET", ["orders"]:
                return self._list_orders(request.query)
            case "GET", ["orders", order_id]:
                return _ok(self._order(order_id))
            case "GET", ["orders", order_id, "payments"]:
                return self._order_payments(order_id)
            case "POST", ["payments", "create", "recurring"]:
                return self._create_recurring(_body(request))
            case "GET", ["payments", payment_id]:
                return _ok(self._payment(payment_id))
            case "POST", ["payments", payment_id, "capture"]:
                return self._capture(payment_id, _body(request))
            case "POST", ["payments", payment_id, "refund"]:
                return self._refund_once(payment_id, request)
            case "GET", ["payments", payment_id, "refunds"]:
                return self._list_refunds(payment_id, request.query)
        return NOT_FOUND

    # --- orders ------------------------------------------------------------------------

    def _create_order(self, body: Entity) -> Reply:
        _only(body, {"amount", "currency", "receipt", "notes", "payment_capture"})
        currency = _currency(body)
        amount = _amount(body, currency)
        receipt = body.get("receipt")
        if receipt is not None and (not isinstance(receipt, str) or len(receipt) > 40):
            raise _invalid("The receipt may not be greater than 40 characters.", "receipt")
        capture = body.get("payment_capture", True)  # the Dashboard default: auto-capture
        if not isinstance(capture, bool):
            raise _invalid("The payment capture field must be true or false.", "payment_capture")
        order: Entity = {
            "id": _new_id("order"),
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": receipt,
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": _notes(body),
            "created_at": int(time.time()),
        }
        with self.lock:
            self.orders[order["id"]] = order
            self._capture_on_order[order["id"]] = capture
        return _ok(order)

    def _list_orders(self, query: dict[str, list[str]]) -> Reply:
        receipt = query.get("receipt", [None])[0]
        with self.lock:
            # newest first, as Razorpay lists
            items = [o for o in reversed(self.orders.values()) if receipt in (None, o["receipt"])]
        return _ok(_collection(_page(items, query)))

    def _order(self, order_id: str) -> Entity:
        with self.lock:
            order = self.orders.get(order_id)
        if order is None:
            raise _invalid("The id provided does not exist")
        return order

    def _order_payments(self, order_id: str) -> Reply:
        self._order(order_id)
        with self.lock:
            items = [p for p in self.payments.values() if p["order_id"] == order_id]
        return _ok(_collection(items))

    # --- payments ----------------------------------------------------------------------

    def _create_recurring(self, body: Entity) -> Reply:
        _only(
            body,
            {"email", "contact", "amount", "currency", "order_id", "customer_id", "token",
             "recurring", "description", "notes"},
        )  # fmt: skip
        for name in ("order_id", "customer_id", "token", "recurring"):
            if name not in body:
                raise _invalid(f"The {name.replace('_', ' ')} field is required.", name)
        order = self._order(str(body["order_id"]))
        if order["status"] == "paid":
            raise _invalid("Your payment has been declined as the order is already paid")
        amount = _amount(body, order["currency"])
        if amount != order["amount"]:
            raise _invalid("The amount must be the same as the order amount.", "amount")
        if body.get("currency", order["currency"]) != order["currency"]:
            raise _invalid("The currency must be the same as the order currency.", "currency")
        if body["recurring"] not in (True, 1, "1"):
            raise _invalid("The recurring field must be true for a token payment.", "recurring")
        token, customer = body["token"], body["customer_id"]
        if self.tokens.get(token) != customer:
            raise _invalid("The id provided does not exist", "token")
        with self.lock:
            payment = self._new_payment(order, body)
            self._process(payment)
        if payment["status"] == "failed":
            return self._failure(payment)
        signed = f"{order['id']}|{payment['id']}".encode()
        signature = hmac.new(self.key_secret.encode(), signed, hashlib.sha256).hexdigest()
        return _ok(
            {
                "razorpay_payment_id": payment["id"],
                "razorpay_order_id": order["id"],
                "razorpay_signature": signature,
            }
        )

    def _new_payment(self, order: Entity, body: Entity) -> Entity:
        payment: Entity = {
            "id": _new_id("pay"),
            "entity": "payment",
            "amount": order["amount"],
            "currency": order["currency"],
            "status": "created",
            "order_id": order["id"],
            "invoice_id": None,
            "international": False,
            "method": "card",
            "amount_refunded": 0,
            "refund_status": None,
            "captured": False,
            "description": body.get("description"),
            "card_id": _new_id("card"),
            "bank": None,
            "wallet": None,
            "vpa": None,
            "email": body.get("email"),
            "contact": body.get("contact"),
            "customer_id": body["customer_id"],
            "token_id": body["token"],
            "notes": _notes(body),
            "fee": None,
            "tax": None,
            "error_code": None,
            "error_description": None,
            "error_source": None,
            "error_step": None,
            "error_reason": None,
            "acquirer_data": {"auth_code": None},
            "created_at": int(time.time()),
        }
        self.payments[payment["id"]] = payment
        order["attempts"] += 1
        order["status"] = "attempted"
        return payment

    def _process(self, payment: Entity) -> None:
        token = payment["token_id"]
        if token == APPROVED:
            self._authorize(payment)
        elif token == DECLINED:
            payment.update(
                status="failed",
                error_code="BAD_REQUEST_ERROR",
                error_description="Payment failed due to insufficient funds in the account.",
                error_source="customer",
                error_step="payment_authorization",
                error_reason="insufficient_funds",
            )
        # PENDING stays "created": the bank has not answered yet

    def _authorize(self, payment: Entity) -> None:
        payment["status"] = "authorized"
        payment["acquirer_data"] = {"auth_code": uuid.uuid4().hex[:6]}
        self.move("authorization", payment["amount"], payment["currency"])
        if self._capture_on_order[payment["order_id"]]:
            self._mark_captured(payment)

    def _mark_captured(self, payment: Entity) -> None:
        payment.update(status="captured", captured=True)
        order = self.orders[payment["order_id"]]
        order.update(status="paid", amount_paid=order["amount"], amount_due=0)
        self.move("capture", payment["amount"], payment["currency"])

    @staticmethod
    def _failure(payment: Entity) -> Reply:
        return error_reply(
            400,
            payment["error_description"],
            source=payment["error_source"],
            step=payment["error_step"],
            reason=payment["error_reason"],
            metadata={"payment_id": payment["id"], "order_id": payment["order_id"]},
        )

    def _payment(self, payment_id: str) -> Entity:
        with self.lock:
            payment = self.payments.get(payment_id)
        if payment is None:
            raise _invalid("The id provided does not exist")
        return payment

    def _capture(self, payment_id: str, body: Entity) -> Reply:
        _only(body, {"amount", "currency"})
        payment = self._payment(payment_id)
        if "currency" not in body:
            raise _invalid("The currency field is required.", "currency")
        amount = _amount(body, payment["currency"])
        with self.lock:
            if payment["captured"]:
                raise _invalid("This payment has already been captured")
            if payment["status"] != "authorized":
                raise _invalid("Only payments which have been authorized can be captured")
            if amount != payment["amount"]:
                raise _invalid("Capture amount must be equal to the amount authorized", "amount")
            if body["currency"] != payment["currency"]:
                raise _invalid("Currency should be same as payment currency", "currency")
            self._mark_captured(payment)
            return _ok(payment)

    # --- refunds -----------------------------------------------------------------------

    def _refund_once(self, payment_id: str, request: Request) -> Reply:
        key = request.headers.get("x-refund-idempotency")
        if key is None:
            return self._refund(payment_id, _body(request))
        if len(key) < 10:
            raise _invalid("The idempotency key must be at least 10 characters long.")
        if not _REFUND_KEY.fullmatch(key):
            raise _invalid(
                "The idempotency key must only contain alphanumeric characters, "
                "underscores, and hyphens"
            )
        fingerprint = payment_id + "\n" + request.body.decode(errors="replace")
        earlier = self._refund_keys.begin(key, fingerprint)
        if isinstance(earlier, Reply):
            return earlier
        if earlier == "mismatch":
            return na_error_reply(
                409, "Different request with the same idempotency key has already been processed."
            )
        if earlier == "in_flight":
            return na_error_reply(
                409, "Another request with the same idempotency key is still in progress."
            )
        try:
            reply = self._refund(payment_id, _body(request))
        except _Refused:
            self._refund_keys.finish(key, None)  # refused: nothing to remember
            raise
        self._refund_keys.finish(key, reply)
        return reply

    def _refund(self, payment_id: str, body: Entity) -> Reply:
        _only(body, {"amount", "speed", "notes", "receipt"})
        payment = self._payment(payment_id)
        with self.lock:
            if payment["refund_status"] == "full":
                raise _invalid("The payment has been fully refunded already")
            if not payment["captured"]:
                raise _invalid("Only captured payments can be refunded")
            left = payment["amount"] - payment["amount_refunded"]
            amount = _amount(body, payment["currency"]) if "amount" in body else left
            if amount > left:
                raise _invalid(
                    "The refund amount provided is greater than amount captured", "amount"
                )
            refund: Entity = {
                "id": _new_id("rfnd"),
                "entity": "refund",
                "amount": amount,
                "currency": payment["currency"],
                "payment_id": payment_id,
                "notes": _notes(body),
                "receipt": body.get("receipt"),
                "acquirer_data": {"arn": None},
                "created_at": int(time.time()),
                "batch_id": None,
                "status": "processed",
                "speed_processed": "normal",
                "speed_requested": body.get("speed", "normal"),
            }
            self.refunds.setdefault(payment_id, []).append(refund)
            payment["amount_refunded"] += amount
            full = payment["amount_refunded"] == payment["amount"]
            payment["refund_status"] = "full" if full else "partial"
            if full:
                payment["status"] = "refunded"
            self.move("refund", amount, payment["currency"])
            return _ok(refund)

    def _list_refunds(self, payment_id: str, query: dict[str, list[str]]) -> Reply:
        self._payment(payment_id)
        with self.lock:
            items = list(reversed(self.refunds.get(payment_id, [])))
        return _ok(_collection(_page(items, query)))


# --- request and answer helpers ---------------------------------------------------------


def _body(request: Request) -> Entity:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise _invalid("The request body must be JSON (Content-Type: application/json).")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise _invalid("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    return body


def _only(body: Entity, allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise _invalid(f"{', '.join(extra)} is/are not required and should not be sent", extra[0])


def _currency(body: Entity) -> str:
    currency = body.get("currency")
    if currency is None:
        raise _invalid("The currency field is required.", "currency")
    if currency not in CURRENCIES:
        raise _invalid("The currency is not supported.", "currency")
    return str(currency)


def _amount(body: Entity, currency: str) -> int:
    amount = body.get("amount")
    if amount is None:
        raise _invalid("The amount field is required.", "amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _invalid("The amount must be an integer.", "amount")
    minimum = 100 if currency == "INR" else 1
    if amount < minimum:
        raise _invalid(f"The amount must be at least {currency} 1.00", "amount")
    if currency in _THREE_DECIMAL and amount % 10:
        raise _invalid("The last decimal of a three decimal currency amount must be 0", "amount")
    return amount


def _notes(body: Entity) -> Entity | list[Any]:
    notes = body.get("notes")
    if notes is None:
        return []  # Razorpay renders empty notes as a list
    if not isinstance(notes, dict) or len(notes) > 15:
        raise _invalid("The notes should be a key-value map of at most 15 pairs.", "notes")
    if any(not isinstance(v, str) or len(v) > 256 for v in notes.values()):
        raise _invalid("The notes values may not be greater than 256 characters.", "notes")
    return dict(notes) or []


def _page(items: list[Entity], query: dict[str, list[str]]) -> list[Entity]:
    count = int(query.get("count", ["10"])[0])
    skip = int(query.get("skip", ["0"])[0])
    return items[skip : skip + min(count, 100)]


def _collection(items: list[Entity]) -> Entity:
    return {"entity": "collection", "count": len(items), "items": items}


def _ok(entity: Entity) -> Reply:
    return Reply(200, json.dumps(entity).encode())
