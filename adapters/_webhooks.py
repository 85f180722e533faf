"""What the webhook verifiers of every adapter share, and no provider's wire format: reading
a header defensively, the signed-timestamp window, parsing a body only once it is verified,
strict reading of the parsed event, and the webhook secrets of a configuration table.

Standard library and ``orchestrator`` only: the sandbox provider, which must run wherever
payorch runs, signs its webhooks with code that imports this.

Every ``WebhookRejected.reason`` written here names a header or a field, never a value: a
value could be a secret, a signature or a piece of a body full of personal data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from orchestrator.ports import WebhookRejected
from orchestrator.secrets import Secret, secret_from

JSONObject = dict[str, object]

# Stripe's and Standard Webhooks' default window for a signed timestamp, in seconds.
DEFAULT_TOLERANCE: Final = 300.0
# Signature headers are a few hundred bytes; a huge one is an attack or a broken proxy, and
# parsing it would only cost us.
MAX_HEADER_LENGTH: Final = 8192
NO_SECRET: Final = "no webhook secret configured"  # noqa: S105 - a refusal, not a secret
_MAX_TIMESTAMP_DIGITS: Final = 12


def no_secret() -> WebhookRejected:
    """The refusal of an adapter that has no webhook secret: nothing can be verified."""
    return WebhookRejected(401, NO_SECRET)


def active_secrets(secrets: Sequence[Secret], owner: str) -> tuple[Secret, ...]:
    """The secrets a verifier checks against; at least one (two while one is rotated out)."""
    active = tuple(secrets)
    if not active:
        raise ValueError(f"{owner}: a webhook verifier needs at least one secret")
    if any(not secret.reveal() for secret in active):
        raise ValueError(f"{owner}: a webhook secret is empty")
    return active


# --- headers ------------------------------------------------------------------------------


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Header ``name`` (lower case), stripped; None when absent or blank. The port promises
    lower-case names; a mixed-case mapping is still searched, as a courtesy to callers."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if value is None:
        return None
    if len(value) > MAX_HEADER_LENGTH:
        raise WebhookRejected(400, f"{name} header too long")
    return value.strip() or None


def required_header(headers: Mapping[str, str], name: str) -> str:
    value = header(headers, name)
    if value is None:
        raise WebhookRejected(400, f"missing {name} header")
    return value


def unix_seconds(text: str, what: str) -> int:
    """A signed Unix timestamp: ASCII digits only (``int`` would also take "+1", " 1" and
    "1_0", which no provider sends)."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_TIMESTAMP_DIGITS:
        raise WebhookRejected(400, f"{what} is not a Unix timestamp")
    return int(text)


def check_timestamp(timestamp: int, *, now: float, tolerance: float) -> None:
    """Refuses a signed timestamp too far in the past (a replay) and too far in the future (a
    signature minted ahead to be replayed later): Stripe's SDK checks only the past."""
    if abs(now - timestamp) > tolerance:
        raise WebhookRejected(400, "timestamp outside tolerance")


# --- the verified body --------------------------------------------------------------------


def verified_json(body: bytes) -> JSONObject:
    """The body as a JSON object; only ever called once its signature has been verified."""
    try:
        document: object = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError and over-long integers
        raise WebhookRejected(400, "body is not JSON") from None
    if not isinstance(document, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    return document


def _malformed(name: str, expected: str) -> WebhookRejected:
    return WebhookRejected(400, f"malformed event: {name} is not {expected}")


def member(parent: JSONObject, name: str) -> JSONObject:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise _malformed(name, "an object")
    return value


def optional_member(parent: JSONObject, name: str) -> JSONObject:
    """An object that may be absent or null (an empty one then)."""
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(name, "an object")
    return value


def text(parent: JSONObject, name: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _malformed(name, "a non-empty string")
    return value


def optional_text(parent: JSONObject, name: str) -> str:
    """A string that may be absent or null ("" then); any other type is malformed."""
    value = parent.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _malformed(name, "a string")
    return value


def integer(parent: JSONObject, name: str) -> int:
    value = parent.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(name, "an integer")
    return value


def string_map(parent: JSONObject, name: str) -> dict[str, str]:
    """Metadata or notes: the string values of an object that may be absent, null or (as
    Razorpay renders empty notes) an empty list."""
    value = parent.get(name)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str)}


# --- configuration ------------------------------------------------------------------------


def webhook_secrets(spec: Mapping[str, Any], *, owner: str) -> list[Secret]:
    """The webhook secrets of a provider's table: ``webhook_secret_env``/``_file`` and, while a
    secret is rotated out, ``webhook_secret_previous_env``/``_file``. None configured: the
    provider takes no webhooks. An inline value is refused by ``secret_from``."""
    secrets: list[Secret] = []
    if _mentions(spec, "webhook_secret"):
        secrets.append(secret_from(spec, "webhook_secret", owner=owner))
    if _mentions(spec, "webhook_secret_previous"):
        if not secrets:
            raise ValueError(f"{owner}: webhook_secret_previous needs a webhook_secret")
        secrets.append(secret_from(spec, "webhook_secret_previous", owner=owner))
    return secrets


def _mentions(spec: Mapping[str, Any], name: str) -> bool:
    return any(key in spec for key in (name, f"{name}_env", f"{name}_file"))
