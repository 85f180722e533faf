"""Who may call, read from the configuration file: ``[grpc.tls]`` (the server's certificate
and the CA that signs callers' certificates) and ``[auth]`` with its ``[[auth.callers]]``.

Key material is read from files named in the table, never written into it; tokens are kept
only as their SHA-256, so the file holds nothing that lets anyone call. Everything is checked
at start-up: a mistake ends the start with a message naming the caller and the key."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.accounts import DEFAULT_ACCOUNT
from orchestrator.api.identity import ROLES, Caller
from orchestrator.domain.command import DEFAULT_SCOPE

# A valid request is tens of kilobytes; gRPC's own default (4 MiB) would let one call make
# the server allocate a hundred times that before anything looks at it.
MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_MAX_STREAMS = 8  # StreamEvents in flight at once: each holds a server worker
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")


class TrustConfigError(ValueError):
    """The ``[grpc.tls]`` or ``[auth]`` configuration cannot be used (the message says why)."""


@dataclass(frozen=True)
class TlsSettings:
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)  # None: no client certificates
    # With a client CA, a second address serving TLS without client certificates, where
    # callers prove who they are by bearer token (grpcio cannot make a certificate optional).
    token_listen: str | None = None


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float


@dataclass(frozen=True)
class CallerSpec:
    caller: Caller
    token_sha256: tuple[bytes, ...] = ()  # digests, 32 bytes each
    identities: tuple[str, ...] = ()  # "uri:spiffe://...", "dns:...", "cn:..."
    rate: Rate | None = None


@dataclass(frozen=True)
class AuthSettings:
    callers: tuple[CallerSpec, ...]
    default_account: str = DEFAULT_ACCOUNT  # owns the payments made before auth
    reflection: bool = True
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_streams: int = DEFAULT_MAX_STREAMS

    @property
    def has_tokens(self) -> bool:
        return any(spec.token_sha256 for spec in self.callers)


def hash_token(token: str) -> str:
    """What ``token_sha256`` holds for ``token`` (``payorch auth hash-token``)."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_trust(
    config: Mapping[str, Any], base: Path
) -> tuple[TlsSettings | None, AuthSettings | None]:
    """``[grpc.tls]`` and ``[auth]`` of a parsed configuration file; file names are relative
    to ``base``, the file's directory."""
    grpc_table = _table(config.get("grpc", {}), "[grpc]")
    _only(grpc_table, {"tls"}, "[grpc]")
    tls = _tls(_table(grpc_table["tls"], "[grpc.tls]"), base) if "tls" in grpc_table else None
    auth = _auth(_table(config["auth"], "[auth]")) if "auth" in config else None
    if tls is not None and tls.token_listen is not None:
        if tls.client_ca is None:
            raise TrustConfigError(
                "[grpc.tls] token_listen is for token callers beside certificate callers: "
                "without client_ca_file, token callers use the main address"
            )
        if auth is None or not auth.has_tokens:
            raise TrustConfigError("[grpc.tls] token_listen needs [auth] callers with tokens")
    if auth is not None:
        certified = [s.caller.name for s in auth.callers if s.identities]
        if certified and (tls is None or tls.client_ca is None):
            raise TrustConfigError(
                f"[auth] callers {certified} are named by client certificates, but "
                "[grpc.tls] has no client_ca_file to verify them"
            )
    return tls, auth


def _tls(table: Mapping[str, Any], base: Path) -> TlsSettings:
    _only(table, {"cert_file", "key_file", "client_ca_file", "token_listen"}, "[grpc.tls]")
    for required in ("cert_file", "key_file"):
        if required not in table:
            raise TrustConfigError(f"[grpc.tls] needs {required}")
    ca, token_listen = table.get("client_ca_file"), table.get("token_listen")
    if token_listen is not None and (not isinstance(token_listen, str) or ":" not in token_listen):
        raise TrustConfigError("[grpc.tls] token_listen must be an address, host:port")
    return TlsSettings(
        certificate_chain=_pem(base, table["cert_file"], "cert_file"),
        private_key=_pem(base, table["key_file"], "key_file"),
        client_ca=_pem(base, ca, "client_ca_file") if ca is not None else None,
        token_listen=token_listen,
    )


def _pem(base: Path, name: object, key: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise TrustConfigError(f"[grpc.tls] {key} must be a file name")
    path = base / name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TrustConfigError(f"[grpc.tls] {key}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TrustConfigError(f"[grpc.tls] {key}: {path} holds no PEM block")
    return data


def _auth(table: Mapping[str, Any]) -> AuthSettings:
    known = {"default_account", "reflection", "max_message_bytes", "max_streams", "callers"}
    _only(table, known, "[auth]")
    entries = table.get("callers", [])
    if not isinstance(entries, list) or not entries:
        raise TrustConfigError("[auth] names no caller: add [[auth.callers]] entries")
    callers = tuple(_caller(_table(entry, "[[auth.callers]]")) for entry in entries)
    _unique(callers)
    max_bytes = _integer(table, "max_message_bytes", MAX_MESSAGE_BYTES, "[auth]")
    if not 1 <= max_bytes <= MAX_MESSAGE_BYTES:
        raise TrustConfigError(
            f"[auth] max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES}, not {max_bytes}"
        )
    max_streams = _integer(table, "max_streams", DEFAULT_MAX_STREAMS, "[auth]")
    if max_streams < 1:
        raise TrustConfigError(f"[auth] max_streams must be at least 1, not {max_streams}")
    reflection = table.get("reflection", True)
    if not isinstance(reflection, bool):
        raise TrustConfigError("[auth] reflection must be true or false")
    return AuthSettings(
        callers=callers,
        default_account=_text(table, "default_account", "[auth]", DEFAULT_ACCOUNT),
        reflection=reflection,
        max_message_bytes=max_bytes,
        max_streams=max_streams,
    )


def _caller(entry: Mapping[str, Any]) -> CallerSpec:
    name = _text(entry, "name", "[[auth.callers]]")
    where = f"caller {name!r}"
    _only(entry, {"name", "account", "roles", "token_sha256", "identities", "scope", "rate"},
          where)  # fmt: skip
    roles = _strings(entry, "roles", where)
    if not roles:
        raise TrustConfigError(f"{where}: roles is empty (known: {sorted(ROLES)})")
    unknown = sorted(set(roles) - ROLES)
    if unknown:
        raise TrustConfigError(f"{where}: unknown roles {unknown} (known: {sorted(ROLES)})")
    hashes = _strings(entry, "token_sha256", where)
    for digest in hashes:
        if not _HEX64.match(digest):
            raise TrustConfigError(
                f"{where}: token_sha256 holds {len(digest)} characters that are not a SHA-256 "
                "(64 hex characters; make one with `payorch auth hash-token`)"
            )
    identities = tuple(_identity(text, where) for text in _strings(entry, "identities", where))
    if not hashes and not identities:
        raise TrustConfigError(f"{where}: needs token_sha256 or identities, or both")
    scope = _text(entry, "scope", where, name)
    caller = Caller(
        name=name,
        account=_text(entry, "account", where),
        roles=frozenset(roles),
        scope=DEFAULT_SCOPE if scope == "default" else scope,
    )
    return CallerSpec(
        caller=caller,
        token_sha256=tuple(bytes.fromhex(h) for h in hashes),
        identities=identities,
        rate=_rate(entry["rate"], where) if "rate" in entry else None,
    )


def _identity(text: str, where: str) -> str:
    """A certificate name in one spelling: ``uri:<URI SAN>``, ``dns:<DNS SAN>``, ``cn:<CN>``."""
    if _URI.match(text):
        return f"uri:{text}"
    kind, _, value = text.partition(":")
    if kind in ("dns", "cn") and value:
        return f"{kind}:{value}"
    raise TrustConfigError(
        f"{where}: identity {text!r} is none of a URI SAN (spiffe://...), dns:<name>, cn:<name>"
    )


def _rate(value: object, where: str) -> Rate:
    table = _table(value, f"{where} rate")
    _only(table, {"per_second", "burst"}, f"{where} rate")
    per_second = table.get("per_second")
    if isinstance(per_second, bool) or not isinstance(per_second, int | float) or per_second <= 0:
        raise TrustConfigError(f"{where}: rate.per_second must be a number above 0")
    burst = table.get("burst", max(1.0, float(per_second)))
    if isinstance(burst, bool) or not isinstance(burst, int | float) or burst < 1:
        raise TrustConfigError(f"{where}: rate.burst must be a number of at least 1")
    return Rate(float(per_second), float(burst))


def _unique(callers: tuple[CallerSpec, ...]) -> None:
    names: set[str] = set()
    owners: dict[object, str] = {}
    for spec in callers:
        name = spec.caller.name
        if name in names:
            raise TrustConfigError(f"[auth] names caller {name!r} twice")
        names.add(name)
        for what, value in [("a token hash", d) for d in spec.token_sha256] + [
            (f"identity {i!r}", i) for i in spec.identities
        ]:
            if value in owners and owners[value] != name:
                raise TrustConfigError(
                    f"[auth] callers {owners[value]!r} and {name!r} share {what}"
                )
            owners[value] = name


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TrustConfigError(f"{where} must be a table")
    return value


def _only(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise TrustConfigError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")


def _text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise TrustConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _strings(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TrustConfigError(f"{where}: {key} must be a list of non-empty strings")
    return list(value)


def _integer(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrustConfigError(f"{where}: {key} must be an integer")
    return value


def exposure(address: str, tls: TlsSettings | None, auth: AuthSettings | None) -> str | None:
    """Why listening on ``address`` would expose the API, or None when it does not: off
    loopback, only TLS with caller authentication is safe."""
    if is_loopback(address) or (tls is not None and auth is not None):
        return None
    missing = " and ".join(
        what for what, absent in (("TLS ([grpc.tls])", tls is None),
                                  ("caller authentication ([auth])", auth is None)) if absent
    )  # fmt: skip
    return f"{address} is not a loopback address and the configuration has no {missing}"


def is_loopback(address: str) -> bool:
    if address.startswith("unix:"):
        return True  # a socket file: only this machine reaches it
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every address), "0.0.0.0"'s peers, or a host name: not loopback
