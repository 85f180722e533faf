"""An emulator of the part of Stripe's v1 API the Stripe adapter uses, as Stripe documents it.

- Endpoints: ``POST /v1/payment_intents``, ``POST /v1/payment_intents/{id}/confirm``,
  ``.../capture``, ``.../cancel``, ``GET /v1/payment_intents/{id}``,
  ``GET /v1/payment_intents/search`` (``metadata['k']:'v'`` clauses joined by ``AND``),
  ``POST /v1/refunds``, ``GET /v1/refunds?payment_intent=``.
- Auth: ``Authorization: Bearer <secret key>`` (or Basic with the key as user name); a missing
  or wrong key gets Stripe's 401 body, whose message masks the key it quotes.
- Bodies: ``application/x-www-form-urlencoded`` with nested keys (``metadata[k]=v``); unknown
  parameters are refused as Stripe refuses them ("Received unknown parameter: x").
- Idempotency (docs.stripe.com/api/idempotent_requests): the first answer under a key is
  stored once execution begins and replayed, with ``Idempotent-Replayed: true``, to a request
  with the same parameters; other parameters get 400 ``idempotency_error``; a key still in
  flight gets 409. Parameter validation errors are not stored.
- Test payment methods (docs.stripe.com/testing): ``pm_card_visa`` and
  ``pm_card_mastercard`` approve; ``pm_card_chargeDeclined`` declines (``card_declined`` /
  ``generic_decline``); ``pm_card_chargeDeclinedInsufficientFunds`` declines
  (``insufficient_funds``); ``pm_card_authenticationRequired`` needs 3-D Secure
  (``requires_action``).
- Multicapture: requested with ``payment_method_options[card][request_multicapture]``; a
  capture with ``final_capture=false`` keeps the rest of the authorization; the PaymentIntent
  succeeds when a final capture is made or nothing is left to capture. A final capture that
  leaves something releases it (recorded as a "void").

The ledger records amounts in Stripe's units, currencies as upper-case ISO codes. Faults from
the base class (drop, fail, hang) apply to requests that move money: every POST but the
creation of a PaymentIntent, which moves none.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from tests.emulators.base import Drop, Emulator, IdempotencyStore, Reply, Request

SECRET_KEY = "sk_test_51PayorchEmulator00000000000000000000000000000004242"
API_VERSION = "2024-06-20"

NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation",
              "requires_action", "processing")  # fmt: skip
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


@dataclass(frozen=True)
class Card:
    brand: str
    outcome: str  # "approve", "decline" or "authenticate"
    code: str = ""
    decline_code: str = ""
    message: str = ""


CARDS = {
    "pm_card_visa": Card("visa", "approve"),
    "pm_card_mastercard": Card("mastercard", "approve"),
    "pm_card_chargeDeclined": Card(
        "visa", "decline", "card_declined", "generic_decline", "Your card was declined."
    ),
    "pm_card_chargeDeclinedInsufficientFunds": Card(
        "visa",
        "decline",
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_authenticationRequired": Card("visa", "authenticate"),
}


class Invalid(Exception):
    """A request refused before execution began: not stored under its idempotency key."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _ident(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def error_reply(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str = "",
    param: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Reply:
    """Stripe's error body: ``{"error": {"type", "message", "code", "param", ...}}``."""
    error: dict[str, Any] = {"type": type, "message": message}
    if code:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param:
        error["param"] = param
    error.update(extra)
    return Reply(status, json.dumps({"error": error}).encode(), dict(headers or {}))


def invalid(message: str, *, param: str = "", code: str = "") -> Invalid:
    return Invalid(error_reply(400, message, param=param, code=code))


def ok(body: dict[str, Any]) -> Reply:
    return Reply(200, json.dumps(body).encode())


@dataclass
class Intent:
    id: str
    amount: int
    currency: str
    capture_method: str
    payment_method: str | None
    metadata: dict[str, str]
    multicapture_requested: bool
    created: int = 0
    status: str = "requires_payment_method"
    amount_capturable: int = 0
    amount_received: int = 0
    latest_charge: str | None = None
    last_payment_error: dict[str, Any] | None = None
    next_action: dict[str, Any] | None = None
    canceled_at: int | None = None
    cancellation_reason: str | None = None
    refunded: int = 0

    def view(self) -> dict[str, Any]:
        card_options: dict[str, Any] = {"request_three_d_secure": "automatic"}
        if self.multicapture_requested:
            card_options["request_multicapture"] = "if_available"
        return {
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            "amount_received": self.amount_received,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": f"{self.id}_secret_{'x' * 24}",
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": False,
            "metadata": dict(self.metadata),
            "next_action": self.next_action,
            "payment_method": self.payment_method,
            "payment_method_options": {"card": card_options},
            "payment_method_types": ["card"],
            "status": self.status,
        }


class StripeEmulator(Emulator):
    def __init__(self, secret_key: str = SECRET_KEY) -> None:
        super().__init__()
        self.secret_key = secret_key
        self._intents: dict[str, Intent] = {}
        self._refunds: list[dict[str, Any]] = []
        self._keys = IdempotencyStore()
        self._stalls: deque[float] = deque()
        self._stored_failures: deque[Reply] = deque()
        self._clock = itertools.count(int(time.time()))  # strictly increasing "created"

    # --- control, for tests ------------------------------------------------------------

    def intents(self) -> list[dict[str, Any]]:
        with self.lock:
            return [intent.view() for intent in self._intents.values()]

    def intent(self, intent_id: str) -> dict[str, Any]:
        with self.lock:
            return self._intents[intent_id].view()

    def refunds(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(refund) for refund in self._refunds]

    def stall_next(self, seconds: float) -> None:
        """Hold the next POST that carries an Idempotency-Key (the creation of a
        PaymentIntent included) ``seconds`` once its key is taken, so that a request with
        the same key meanwhile finds it in flight."""
        self._stalls.append(seconds)

    def fail_next_stored(self, reply: Reply) -> None:
        """Answer the next money-moving request with ``reply`` after execution began, so
        it is stored under the key and replayed, as Stripe does with a 500."""
        self._stored_failures.append(reply)

    # --- serving -----------------------------------------------------------------------

    def moves_money(self, request: Request) -> bool:
        return request.method == "POST" and request.path != "/v1/payment_intents"

    def handle(self, request: Request) -> Reply | Drop:
        reply = self._authenticated(request)
        return _with_headers(reply, request)

    def _authenticated(self, request: Request) -> Reply:
        key = _credential(request.headers.get("authorization", ""))
        if not key:
            return error_reply(401, NO_KEY, headers={"WWW-Authenticate": 'Basic realm="Stripe"'})
        if not secrets.compare_digest(key, self.secret_key):
            return error_reply(401, f"Invalid API Key provided: {_masked(key)}")
        try:
            if request.method == "GET":
                with self.lock:
                    return self._get(request)
            if request.method == "POST":
                return self._post(request)
        except Invalid as refused:
            return refused.reply
        return _unrecognized(request).reply

    def _get(self, request: Request) -> Reply:
        query = {name: values[-1] for name, values in request.query.items()}
        if request.path == "/v1/payment_intents/search":
            return self._search(query)
        if request.path == "/v1/refunds":
            return self._list_refunds(query)
        match = re.fullmatch(r"/v1/payment_intents/([^/]+)", request.path)
        if match:
            return ok(self._intent(match.group(1)).view())
        raise _unrecognized(request)

    def _post(self, request: Request) -> Reply:
        route = self._route(request)
        params = _form(request)
        key = request.headers.get("idempotency-key")
        if not key:
            with self.lock:
                return route(params)
        begun = self._keys.begin(key, _fingerprint(request.path, params))
        if isinstance(begun, Reply):
            return _replayed(begun)
        if begun == "mismatch":
            raise Invalid(error_reply(400, _MISMATCH.format(key=key), type="idempotency_error"))
        if begun == "in_flight":
            return error_reply(409, _IN_FLIGHT.format(key=key), code="idempotency_key_in_use")
        return self._execute(request, key, route, params)

    def _execute(
        self, request: Request, key: str, route: Callable[[dict[str, Any]], Reply],
        params: dict[str, Any],
    ) -> Reply:  # fmt: skip
        moving = self.moves_money(request)
        if self._stalls:
            time.sleep(self._stalls.popleft())
        try:
            if moving and self._stored_failures:
                reply = self._stored_failures.popleft()
            else:
                with self.lock:
                    reply = route(params)
        except Invalid:
            self._keys.finish(key, None)
            raise
        reply = _with_headers(reply, request)
        self._keys.finish(key, reply)
        return reply

    def _route(self, request: Request) -> Callable[[dict[str, Any]], Reply]:
        if request.path == "/v1/payment_intents":
            return self._create
        if request.path == "/v1/refunds":
            return self._refund
        match = re.fullmatch(r"/v1/payment_intents/([^/]+)/(confirm|capture|cancel)", request.path)
        if match is None:
            raise _unrecognized(request)
        intent_id, action = match.groups()
        actions = {"confirm": self._confirm, "capture": self._capture, "cancel": self._cancel}
        return lambda params: actions[action](intent_id, params)

    # --- PaymentIntents ----------------------------------------------------------------

    def _create(self, params: dict[str, Any]) -> Reply:
        _known(params, "amount", "currency", "payment_method", "capture_method", "metadata",
               "automatic_payment_methods", "payment_method_options", "confirm", "description")  # fmt: skip
        currency = _currency(params)
        amount = _amount(params, "amount", currency, required=True)
        assert amount is not None
        capture_method = params.get("capture_method", "automatic_async")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            raise invalid(f"Invalid capture_method: {capture_method}", param="capture_method")
        method = params.get("payment_method")
        if method is not None and method not in CARDS:
            raise Invalid(_no_such("PaymentMethod", method, "payment_method"))
        intent = Intent(
            id=_ident("pi_"),
            amount=amount,
            currency=currency,
            capture_method=capture_method,
            payment_method=method,
            metadata=_metadata(params),
            multicapture_requested=_multicapture_requested(params),
            created=next(self._clock),
            status="requires_confirmation" if method else "requires_payment_method",
        )
        self._intents[intent.id] = intent
        if params.get("confirm") == "true":
            return self._confirm(intent.id, {})
        return ok(intent.view())

    def _confirm(self, intent_id: str, params: dict[str, Any]) -> Reply:
        _known(params, "payment_method", "return_url", "off_session")
        intent = self._intent(intent_id)
        if intent.status not in ("requires_confirmation", "requires_payment_method"):
            return _unexpected_state(intent, "confirm", "requires_confirmation, "
                                     "requires_payment_method")  # fmt: skip
        method = params.get("payment_method", intent.payment_method)
        if method not in CARDS:
            raise invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        intent.payment_method = method
        card = CARDS[method]
        charge = _ident("ch_")
        intent.latest_charge = charge
        if card.outcome == "decline":
            return self._decline(intent, card, charge)
        if card.outcome == "authenticate":
            intent.status = "requires_action"
            intent.next_action = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            intent.latest_charge = None
            return ok(intent.view())
        self._authorize(intent)
        return ok(intent.view())

    def _authorize(self, intent: Intent) -> None:
        intent.last_payment_error = None
        self.move("authorization", intent.amount, intent.currency.upper())
        if intent.capture_method == "manual":
            intent.status = "requires_capture"
            intent.amount_capturable = intent.amount
            return
        intent.status = "succeeded"
        intent.amount_received = intent.amount
        self.move("capture", intent.amount, intent.currency.upper())

    def _decline(self, intent: Intent, card: Card, charge: str) -> Reply:
        error = {
            "type": "card_error",
            "code": card.code,
            "decline_code": card.decline_code,
            "message": card.message,
            "charge": charge,
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        }
        intent.status = "requires_payment_method"
        intent.last_payment_error = {**error, "payment_method": {"id": intent.payment_method}}
        body = {**error, "payment_intent": intent.view(),
                "payment_method": {"id": intent.payment_method, "object": "payment_method"}}  # fmt: skip
        return Reply(402, json.dumps({"error": body}).encode())

    def _capture(self, intent_id: str, params: dict[str, Any]) -> Reply:
        _known(params, "amount_to_capture", "final_capture", "metadata")
        intent = self._intent(intent_id)
        if intent.status != "requires_capture":
            return _unexpected_state(intent, "capture", "requires_capture")
        amount = _amount(params, "amount_to_capture", intent.currency, required=False)
        amount = intent.amount_capturable if amount is None else amount
        final = _boolean(params, "final_capture", default=True)
        if not final and not intent.multicapture_requested:
            raise invalid(
                "final_capture can only be false when multicapture is available for this "
                "PaymentIntent.",
                param="final_capture",
            )
        if amount > intent.amount_capturable:
            return error_reply(
                400,
                f"The amount to capture ({amount}) must be less than or equal to the amount "
                f"capturable ({intent.amount_capturable}).",
                code="amount_too_large",
                param="amount_to_capture",
            )
        self._take(intent, amount, final=final)
        intent.metadata = _merged(intent.metadata, _metadata(params))
        return ok(intent.view())

    def _take(self, intent: Intent, amount: int, *, final: bool) -> None:
        currency = intent.currency.upper()
        intent.amount_received += amount
        intent.amount_capturable -= amount
        self.move("capture", amount, currency)
        if final or intent.amount_capturable == 0:
            if intent.amount_capturable:
                self.move("void", intent.amount_capturable, currency)  # the rest is released
            intent.amount_capturable = 0
            intent.status = "succeeded"

    def _cancel(self, intent_id: str, params: dict[str, Any]) -> Reply:
        _known(params, "cancellation_reason")
        intent = self._intent(intent_id)
        reason = params.get("cancellation_reason")
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer", "abandoned"):
            raise invalid(f"Invalid cancellation_reason: {reason}", param="cancellation_reason")
        if intent.status not in CANCELABLE:
            return _unexpected_state(intent, "cancel", ", ".join(CANCELABLE))
        if intent.amount_capturable:
            self.move("void", intent.amount_capturable, intent.currency.upper())
            intent.amount_capturable = 0
        intent.status = "canceled"
        intent.canceled_at = next(self._clock)
        intent.cancellation_reason = reason
        return ok(intent.view())

    def _intent(self, intent_id: str) -> Intent:
        intent = self._intents.get(intent_id)
        if intent is None:
            raise Invalid(_no_such("payment_intent", intent_id, "intent", status=404))
        return intent

    # --- refunds -----------------------------------------------------------------------

    def _refund(self, params: dict[str, Any]) -> Reply:
        _known(params, "payment_intent", "amount", "reason", "metadata")
        intent_id = params.get("payment_intent")
        if not intent_id:
            raise invalid("Missing required param: payment_intent.", param="payment_intent")
        intent = self._intents.get(intent_id)
        if intent is None:
            raise Invalid(_no_such("payment_intent", intent_id, "payment_intent", status=404))
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise invalid(f"Invalid reason: {reason}", param="reason")
        left = intent.amount_received - intent.refunded
        amount = _amount(params, "amount", intent.currency, required=False)
        amount = left if amount is None else amount
        refused = _unrefundable(intent, amount, left)
        if refused is not None:
            return refused
        intent.refunded += amount
        refund = {
            "id": _ident("re_"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": _ident("txn_"),
            "charge": intent.latest_charge,
            "created": next(self._clock),
            "currency": intent.currency,
            "metadata": _metadata(params),
            "payment_intent": intent.id,
            "reason": reason,
            "status": "succeeded",
        }
        self._refunds.append(refund)
        self.move("refund", amount, intent.currency.upper())
        return ok(refund)

    def _list_refunds(self, query: dict[str, str]) -> Reply:
        intent_id = query.get("payment_intent")
        # Stripe lists newest first
        refunds = [r for r in reversed(self._refunds) if intent_id in (None, r["payment_intent"])]
        after = query.get("starting_after")
        if after is not None:
            ids = [r["id"] for r in refunds]
            if after not in ids:
                raise Invalid(_no_such("refund", after, "starting_after", status=404))
            refunds = refunds[ids.index(after) + 1 :]
        limit = _limit(query)
        body = {"object": "list", "data": refunds[:limit], "has_more": len(refunds) > limit,
                "url": "/v1/refunds"}  # fmt: skip
        return ok(body)

    # --- search ------------------------------------------------------------------------

    def _search(self, query: dict[str, str]) -> Reply:
        clauses = _clauses(query.get("query", ""))
        found = [
            intent.view()
            for intent in sorted(self._intents.values(), key=lambda i: -i.created)
            if all(intent.metadata.get(k) == v for k, v in clauses)
        ]
        page = query.get("page", "page_0")
        if not re.fullmatch(r"page_\d+", page):
            raise invalid(f"Invalid page: {page}", param="page")
        start, limit = int(page.removeprefix("page_")), _limit(query)
        more = len(found) > start + limit
        body = {
            "object": "search_result",
            "data": found[start : start + limit],
            "has_more": more,
            "next_page": f"page_{start + limit}" if more else None,
            "url": "/v1/payment_intents/search",
        }
        return ok(body)


# --- helpers ----------------------------------------------------------------------------

_MISMATCH = (
    "Keys for idempotent requests can only be used with the same parameters they were first "
    "used with. Try using a key other than '{key}' if you meant to execute a different request."
)
_IN_FLIGHT = (
    "There is currently another in-progress request using this Stripe token (probably means "
    "you clicked twice, and the other request is still going through): {key}. Please try "
    "again later."
)
_CLAUSE = re.compile(r"metadata\['((?:[^'\\]|\\.)*)'\]:'((?:[^'\\]|\\.)*)'")


def _credential(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme == "Bearer":
        return value.strip()
    if scheme == "Basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def _masked(key: str) -> str:
    """Stripe's way of quoting a refused key: its prefix and last four characters."""
    prefix = key[:8] if len(key) > 16 else ""
    tail = key[-4:] if len(key) > 12 else ""
    return prefix + "*" * (len(key) - len(prefix) - len(tail)) + tail


def _with_headers(reply: Reply, request: Request) -> Reply:
    headers = {"Request-Id": _ident("req_"), "Stripe-Version": API_VERSION, **reply.headers}
    if "idempotency-key" in request.headers:
        headers.setdefault("Idempotency-Key", request.headers["idempotency-key"])
    return Reply(reply.status, reply.body, headers, reply.content_type)


def _replayed(stored: Reply) -> Reply:
    headers = {**stored.headers, "Idempotent-Replayed": "true", "Request-Id": _ident("req_"),
               "Original-Request": stored.headers.get("Request-Id", "")}  # fmt: skip
    return Reply(stored.status, stored.body, headers, stored.content_type)


def _unrecognized(request: Request) -> Invalid:
    return Invalid(
        error_reply(
            404,
            f"Unrecognized request URL ({request.method}: {request.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )
    )


def _no_such(kind: str, ident: str, param: str, *, status: int = 400) -> Reply:
    return error_reply(status, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def _unexpected_state(intent: Intent, action: str, allowed: str) -> Reply:
    done = {"confirm": "confirmed", "capture": "captured", "cancel": "canceled"}[action]
    message = (
        f"This PaymentIntent could not be {done} because it has a status of {intent.status}. "
        f"Only a PaymentIntent with one of the following statuses may be {done}: {allowed}."
    )
    return error_reply(400, message, code="payment_intent_unexpected_state",
                       payment_intent=intent.view())  # fmt: skip


def _unrefundable(intent: Intent, amount: int, left: int) -> Reply | None:
    if intent.amount_received == 0:
        return error_reply(
            400, f"This PaymentIntent ({intent.id}) does not have a successful charge to refund."
        )
    if left == 0:
        return error_reply(
            400, f"Charge {intent.latest_charge} has already been refunded.",
            code="charge_already_refunded",
        )  # fmt: skip
    if amount > left:
        return error_reply(
            400,
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
            param="amount",
        )
    return None


def _form(request: Request) -> dict[str, Any]:
    """A form body with nested keys (``metadata[k]=v``) as nested dicts."""
    if request.body and not request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        raise invalid("Invalid request: the body must be application/x-www-form-urlencoded.")
    params: dict[str, Any] = {}
    for name, value in parse_qsl(request.body.decode(), keep_blank_values=True):
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", name)
        if match is None:
            raise invalid(f"Invalid parameter name: {name}")
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = params
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise invalid(f"Invalid object: {path[0]}", param=path[0])
            node = child
        node[path[-1]] = value
    return params


def _fingerprint(path: str, params: dict[str, Any]) -> str:
    return path + "?" + json.dumps(params, sort_keys=True)


def _known(params: dict[str, Any], *names: str) -> None:
    for name in params:
        if name not in names:
            raise invalid(f"Received unknown parameter: {name}", param=name)


def _currency(params: dict[str, Any]) -> str:
    currency = params.get("currency")
    if currency is None:
        raise invalid("Missing required param: currency.", param="currency")
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise invalid(f"Invalid currency: {currency}.", param="currency")
    return str(currency)


def _amount(params: dict[str, Any], name: str, currency: str, *, required: bool) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise invalid(f"Missing required param: {name}.", param=name)
        return None
    if not re.fullmatch(r"\d+", value):
        raise invalid(f"Invalid integer: {value}", param=name)
    amount = int(value)
    if amount < 1:
        raise invalid("This value must be greater than or equal to 1.", param=name)
    if currency == "isk" and amount % 100:
        raise invalid(
            "Invalid amount. Currency ISK has become effectively zero-decimal and charged "
            "amounts must be evenly divisible by 100.",
            param=name, code="invalid_charge_amount_no_decimal_compatible",
        )  # fmt: skip
    if currency in THREE_DECIMAL and amount % 10:
        raise invalid(f"Invalid amount: {currency.upper()} amounts must end in 0.", param=name)
    return amount


def _boolean(params: dict[str, Any], name: str, *, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {value}", param=name)
    return bool(value == "true")


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata", {})
    if not isinstance(metadata, dict):
        raise invalid("Invalid object", param="metadata")
    for key, value in metadata.items():
        if len(key) > 40 or not isinstance(value, str) or len(value) > 500:
            raise invalid(
                "Metadata keys can be at most 40 characters and values at most 500.",
                param=f"metadata[{key}]",
            )
    return dict(metadata)


def _merged(metadata: dict[str, str], update: dict[str, str]) -> dict[str, str]:
    merged = {**metadata, **update}
    return {key: value for key, value in merged.items() if value != ""}  # "" unsets a key


def _multicapture_requested(params: dict[str, Any]) -> bool:
    options = params.get("payment_method_options", {})
    card = options.get("card", {}) if isinstance(options, dict) else {}
    return isinstance(card, dict) and card.get("request_multicapture") == "if_available"


def _limit(query: dict[str, str]) -> int:
    value = query.get("limit", "10")
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise invalid(f"Invalid limit: {value}", param="limit")
    return int(value)


def _clauses(query: str) -> list[tuple[str, str]]:
    clauses = []
    for clause in re.split(r"\s+AND\s+", query.strip()):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise invalid(
                f"The emulator only searches metadata['key']:'value' clauses: {clause!r}",
                param="query",
            )
        key, value = (re.sub(r"\\(.)", r"\1", group) for group in match.groups())
        clauses.append((key, value))
    return clauses
