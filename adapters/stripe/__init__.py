"""The Stripe adapter: the ``PaymentProvider`` port over Stripe's v1 PaymentIntents API.

An authorization is two requests, as Stripe documents server-side confirmation: create the
PaymentIntent (no money moves), then confirm it (the card is authorized, and captured too
when ``capture_method`` is ``automatic``). Each request has its own idempotency key derived
from the operation's provider key, so a re-send of the operation replays both. Captures,
cancels and refunds are single requests on the PaymentIntent. Everything Stripe-specific
(paths, form encoding, statuses, error bodies) stays in this package; the wire format itself
is in ``transformers``.

``lookup`` finds an operation by what it wrote into Stripe's metadata: our payment id and the
operation's key on PaymentIntents and Refunds, and a per-capture marker on the PaymentIntent.
Stripe's search is eventually consistent (new objects can take up to a minute to appear, more
during incidents): a ``None`` for a fresh authorization means "not found yet". Since Stripe
honours keys for at least 24 hours, the core re-sends with the same key on ``None``, which is
safe either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar
from urllib.parse import quote

from adapters._http import (
    Answer,
    HttpAdapter,
    JSONObject,
    MalformedAnswerError,
    ProviderHttp,
    get_str,
    json_object,
)
from adapters._webhooks import DEFAULT_TOLERANCE, webhook_secrets
from adapters.stripe.transformers import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    PAGE_SIZE,
    AmountError,
    Classification,
    StripeError,
    Verdict,
    authorization_outcome,
    cancel_outcome,
    capture_outcome,
    capture_params,
    classify,
    create_params,
    form_encode,
    found_cancel,
    found_capture,
    idempotency_key,
    listed,
    made_by,
    parse_error,
    refund_outcome,
    refund_params,
    search_query,
    to_stripe_amount,
)
from adapters.stripe.webhooks import StripeWebhooks
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret, secret_from

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "Classification",
    "StripeAdapter",
    "StripeError",
    "StripeWebhooks",
    "Verdict",
    "classify",
    "from_config",
]

_MIN_STEP: Final = 0.05  # seconds: below this, a second request of a call is not started
_FORM: Final = "application/x-www-form-urlencoded"

T = TypeVar("T")


class StripeAdapter(HttpAdapter):
    """``PaymentProvider`` for Stripe, and ``WebhookVerifier`` for its webhook endpoint when
    ``webhook_secrets`` (the endpoint's ``whsec_...`` signing secrets) are given. Thread-safe."""

    # Stripe stores the first answer under an Idempotency-Key for at least 24 hours and
    # replays it to every re-send with the same parameters.
    honors_idempotency_keys = True

    def __init__(
        self,
        secret_key: Secret,
        *,
        name: str = "stripe",
        base_url: str = DEFAULT_BASE_URL,
        connect_timeout: float = 1.0,
        api_version: str = DEFAULT_API_VERSION,
        multicapture: bool = False,
        webhook_secrets: Sequence[Secret] = (),
        webhook_tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.name = name
        self._secret = secret_key
        self._webhooks = (
            StripeWebhooks(webhook_secrets, tolerance=webhook_tolerance)
            if webhook_secrets
            else None
        )
        self._api_version = api_version  # "" sends none: the account's default applies
        # Multicapture (an IC+ feature) lets a PaymentIntent be captured in parts; without
        # it Stripe releases whatever the first capture leaves.
        self._multicapture = multicapture
        self._http = ProviderHttp(
            name, base_url, connect_timeout=connect_timeout, honors_idempotency_keys=True,
        )  # fmt: skip

    # --- the port ---------------------------------------------------------------------------

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        deadline = time.monotonic() + timeout
        refused = _refused(operation, needs_reference=False)
        if refused is not None:
            return refused
        amount = to_stripe_amount(operation.amount, operation.currency)
        params = create_params(operation, amount, multicapture=self._multicapture)
        response = self._post(
            operation, "/v1/payment_intents", params, deadline=deadline, what="authorize:create"
        )
        created = _object_or_outcome(response)
        if isinstance(created, ProviderOutcome):
            return created
        intent_id = _read(created, lambda intent: get_str(intent, "id"))
        path = f"/v1/payment_intents/{quote(intent_id, safe='')}/confirm"
        confirmed = self._post(operation, path, {}, deadline=deadline, step="confirm")
        outcome = _outcome(confirmed, lambda i: authorization_outcome(i, operation.currency))
        if outcome.provider_reference:
            return outcome
        # a refusal without the PaymentIntent in its body still concerns this one
        return replace(outcome, provider_reference=intent_id)

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        refused = _refused(operation, needs_reference=True)
        if refused is not None:
            return refused
        amount = to_stripe_amount(operation.amount, operation.currency)
        params = capture_params(operation, amount, multicapture=self._multicapture)
        response = self._post(
            operation, self._intent_path(operation, "capture"), params,
            deadline=time.monotonic() + timeout,
        )  # fmt: skip
        return _outcome(response, lambda intent: capture_outcome(intent, operation))

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        refused = _refused(operation, needs_reference=True, has_amount=False)
        if refused is not None:
            return refused
        response = self._post(
            operation, self._intent_path(operation, "cancel"), {},
            deadline=time.monotonic() + timeout,
        )  # fmt: skip
        return _outcome(response, cancel_outcome)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        refused = _refused(operation, needs_reference=True)
        if refused is not None:
            return refused
        params = refund_params(operation, to_stripe_amount(operation.amount, operation.currency))
        response = self._post(operation, "/v1/refunds", params, deadline=time.monotonic() + timeout)
        return _outcome(response, lambda refund: refund_outcome(refund, operation.currency))

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        deadline = time.monotonic() + timeout
        try:
            return self._lookup(operation, deadline)
        except MalformedAnswerError as exc:
            raise ProviderOutcomeUnknown(f"stripe lookup answer malformed: {exc}") from exc

    # --- lookup -----------------------------------------------------------------------------

    def _lookup(self, operation: ProviderOperation, deadline: float) -> ProviderOutcome | None:
        if operation.kind is OperationKind.AUTHORIZE:
            return self._find_authorization(operation, deadline)
        if not operation.provider_reference:
            return None  # follow-ups are never sent without the PaymentIntent's id
        if operation.kind is OperationKind.REFUND:
            return self._find_refund(operation, deadline)
        intent = self._get(operation, self._intent_path(operation), {}, deadline)
        if intent is None:
            return None
        if operation.kind is OperationKind.CANCEL:
            return found_cancel(intent)
        return _found_capture(intent, operation)

    def _find_authorization(
        self, operation: ProviderOperation, deadline: float
    ) -> ProviderOutcome | None:
        for intent in self._search(operation, deadline):
            if made_by(intent, operation.provider_key):
                return authorization_outcome(intent, operation.currency)
        return None

    def _find_refund(self, operation: ProviderOperation, deadline: float) -> ProviderOutcome | None:
        for refund in self._refunds(operation, deadline):
            if made_by(refund, operation.provider_key):
                return refund_outcome(refund, operation.currency)
        return None

    def _search(self, operation: ProviderOperation, deadline: float) -> Iterator[JSONObject]:
        """Every PaymentIntent made for our payment (one per authorization attempt)."""
        params = {"query": search_query(operation.payment_id), "limit": str(PAGE_SIZE)}
        while True:
            page = self._get(operation, "/v1/payment_intents/search", params, deadline)
            if page is None:
                return
            yield from listed(page)
            if page.get("has_more") is not True:
                return
            params = {**params, "page": get_str(page, "next_page")}

    def _refunds(self, operation: ProviderOperation, deadline: float) -> Iterator[JSONObject]:
        params = {"payment_intent": operation.provider_reference, "limit": str(PAGE_SIZE)}
        while True:
            page = self._get(operation, "/v1/refunds", params, deadline)
            if page is None:
                return
            refunds = listed(page)
            yield from refunds
            if page.get("has_more") is not True or not refunds:
                return
            params = {**params, "starting_after": get_str(refunds[-1], "id")}

    # --- HTTP -------------------------------------------------------------------------------

    def _intent_path(self, operation: ProviderOperation, action: str = "") -> str:
        path = f"/v1/payment_intents/{quote(operation.provider_reference, safe='')}"
        return f"{path}/{action}" if action else path

    def _post(
        self,
        operation: ProviderOperation,
        path: str,
        params: Mapping[str, Any],
        *,
        deadline: float,
        step: str = "",
        what: str = "",
    ) -> Answer:
        """POST under the key of this ``step`` of the operation (the first: no step)."""
        key = idempotency_key(operation.provider_key, step)
        what = what or (f"{operation.kind.value}:{step}" if step else operation.kind.value)
        return self._http.send(
            "POST", path, timeout=_remaining(deadline, what), what=what, key=key,
            content=form_encode(params), headers={**self._headers(), "Idempotency-Key": key,
            "Content-Type": _FORM},
        )  # fmt: skip

    def _get(
        self, operation: ProviderOperation, path: str, params: Mapping[str, str], deadline: float
    ) -> JSONObject | None:
        """The object at ``path``; None when Stripe says it does not exist."""
        what = f"lookup:{operation.kind.value}"
        response = self._http.send(
            "GET", path, timeout=_remaining(deadline, what), what=what,
            key=operation.provider_key, params=dict(params), headers=self._headers(),
        )  # fmt: skip
        return _lookup_answer(response)

    def _headers(self) -> dict[str, str]:
        # The only place the key is revealed: the header of a request about to be sent.
        headers = {"Authorization": f"Bearer {self._secret.reveal()}"}
        if self._api_version:
            headers["Stripe-Version"] = self._api_version
        return headers


# --- answers --------------------------------------------------------------------------------


def _refused(
    operation: ProviderOperation, *, needs_reference: bool, has_amount: bool = True
) -> ProviderOutcome | None:
    """A call that cannot be made, answered without sending anything (so nothing moved)."""
    if needs_reference and not operation.provider_reference:
        return ProviderOutcome(OutcomeStatus.FAILED, message="no provider reference")
    if has_amount:
        try:
            to_stripe_amount(operation.amount, operation.currency)
        except AmountError as exc:
            return ProviderOutcome(OutcomeStatus.FAILED, message=str(exc))
    return None


def _remaining(deadline: float, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining < _MIN_STEP:
        # Only ever before a second request of a call: the first one was answered, and
        # this one was not sent.
        raise ProviderNotReached(f"stripe: no time left for {what}", breaker_failure=False)
    return remaining


def _outcome(response: Answer, read: Callable[[JSONObject], ProviderOutcome]) -> ProviderOutcome:
    answer = _object_or_outcome(response)
    if isinstance(answer, ProviderOutcome):
        return answer
    return _read(answer, read)


def _read(answer: JSONObject, read: Callable[[JSONObject], T]) -> T:
    try:
        return read(answer)
    except MalformedAnswerError as exc:
        raise _malformed(exc) from exc


def _malformed(exc: MalformedAnswerError) -> ProviderOutcomeUnknown:
    # A 2xx we cannot read is stored under the key like any answer: re-sending would
    # replay it, so ask what happened instead.
    return ProviderOutcomeUnknown(f"stripe answer malformed: {exc}", lookup_first=True)


def _object_or_outcome(response: Answer) -> JSONObject | ProviderOutcome:
    """The answer's object when Stripe did what was asked; the final outcome when it
    refused; an exception when the outcome is not known."""
    error = None if response.is_success else parse_error(response)
    verdict = classify(response.status_code, response.headers, error)
    if verdict.verdict is Verdict.SUCCESS:
        try:
            return json_object(response)
        except MalformedAnswerError as exc:
            raise _malformed(exc) from exc
    return _settle(verdict, error or StripeError())


def _settle(verdict: Classification, error: StripeError) -> ProviderOutcome:
    if verdict.verdict is Verdict.DECLINED:
        return ProviderOutcome(
            OutcomeStatus.DECLINED, provider_reference=error.payment_intent,
            decline_code=verdict.decline_code, message=verdict.reason,
        )  # fmt: skip
    if verdict.verdict is Verdict.FAILED:
        return ProviderOutcome(
            OutcomeStatus.FAILED, provider_reference=error.payment_intent, message=verdict.reason
        )
    if verdict.verdict is Verdict.NOT_REACHED:
        raise ProviderNotReached(
            verdict.reason, retry_after=verdict.retry_after,
            breaker_failure=verdict.breaker_failure,
        )  # fmt: skip
    raise ProviderOutcomeUnknown(
        verdict.reason, retry_after=verdict.retry_after, breaker_failure=verdict.breaker_failure,
        lookup_first=verdict.lookup_first,
    )  # fmt: skip


def _lookup_answer(response: Answer) -> JSONObject | None:
    error = None if response.is_success else parse_error(response)
    if response.status_code == 404 and error is not None and error.code == "resource_missing":
        return None
    verdict = classify(response.status_code, response.headers, error)
    if verdict.verdict is Verdict.SUCCESS:
        return json_object(response)
    if verdict.verdict is Verdict.NOT_REACHED:
        raise ProviderNotReached(
            f"stripe lookup: {verdict.reason}", retry_after=verdict.retry_after,
            breaker_failure=verdict.breaker_failure,
        )  # fmt: skip
    # A lookup moves no money: whatever else went wrong, the operation stays in doubt.
    raise ProviderOutcomeUnknown(
        f"stripe lookup answered HTTP {response.status_code}: {verdict.reason}",
        retry_after=verdict.retry_after,
        breaker_failure=verdict.breaker_failure,
    )


def _found_capture(intent: JSONObject, operation: ProviderOperation) -> ProviderOutcome | None:
    captured = found_capture(intent, operation.provider_key)
    if captured is None:
        return None
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=operation.provider_reference,
        captured_amount=captured,
    )


# --- configuration --------------------------------------------------------------------------


def from_config(name: str, spec: Mapping[str, Any]) -> StripeAdapter:
    """The adapter from its TOML table: ``secret_key_env`` or ``secret_key_file`` (never the
    key itself), and optionally ``base_url``, ``connect_timeout``, ``api_version`` ("" for
    the account's default), ``multicapture`` (true only where Stripe enabled it), and the
    webhook endpoint's signing secret as ``webhook_secret_env``/``_file`` (plus
    ``webhook_secret_previous_env``/``_file`` while one is rolled; none: no webhooks)."""
    multicapture = spec.get("multicapture", False)
    if not isinstance(multicapture, bool):
        raise ValueError(f"provider {name!r}: multicapture must be true or false")
    owner = f"provider {name!r}"
    return StripeAdapter(
        secret_from(spec, "secret_key", owner=owner),
        name=name,
        base_url=str(spec.get("base_url", DEFAULT_BASE_URL)),
        connect_timeout=float(spec.get("connect_timeout", 1.0)),
        api_version=str(spec.get("api_version", DEFAULT_API_VERSION)),
        multicapture=multicapture,
        webhook_secrets=webhook_secrets(spec, owner=owner),
    )
