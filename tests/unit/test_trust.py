"""The [grpc.tls] and [auth] configuration, checked at start-up, and the listen policy."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from orchestrator.accounts import DEFAULT_ACCOUNT
from orchestrator.api._generated import payments_pb2
from orchestrator.api.auth import METHOD_ROLES, PAYMENTS_SERVICE
from orchestrator.api.identity import PAYMENTS_READ, PAYMENTS_WRITE
from orchestrator.api.trust import (
    MAX_MESSAGE_BYTES,
    TrustConfigError,
    exposure,
    hash_token,
    is_loopback,
    read_trust,
)
from orchestrator.domain.command import DEFAULT_SCOPE

HASH = hash_token("s3cret")
CALLER = (
    f'name = "checkout"\naccount = "shop"\nroles = ["payments.write"]\ntoken_sha256 = ["{HASH}"]\n'
)


def read(toml: str, base: Path | None = None) -> tuple[object, object]:
    return read_trust(tomllib.loads(toml), base or Path("/nonexistent"))


def with_caller(extra: str = "", auth: str = "") -> str:
    return f"[auth]\n{auth}\n[[auth.callers]]\n{CALLER}{extra}"


def test_hash_token_is_the_hex_sha256_of_the_token() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_caller_reads_with_its_defaults() -> None:
    tls, auth = read_trust(tomllib.loads(with_caller()), Path("."))
    assert tls is None and auth is not None
    (spec,) = auth.callers
    assert spec.caller.name == spec.caller.scope == "checkout"
    assert spec.caller.account == "shop"
    assert spec.caller.roles == frozenset({PAYMENTS_WRITE})
    assert spec.token_sha256 == (bytes.fromhex(HASH),)
    assert spec.rate is None
    assert (auth.default_account, auth.reflection) == (DEFAULT_ACCOUNT, True)
    assert (auth.max_message_bytes, auth.max_streams) == (MAX_MESSAGE_BYTES, 8)


def test_scope_default_continues_the_pre_auth_scope_and_rate_burst_defaults_to_the_rate() -> None:
    _, auth = read_trust(
        tomllib.loads(with_caller('scope = "default"\nrate = {per_second = 5}\n')), Path(".")
    )
    assert auth is not None
    assert auth.callers[0].caller.scope == DEFAULT_SCOPE
    assert auth.callers[0].rate is not None
    assert (auth.callers[0].rate.per_second, auth.callers[0].rate.burst) == (5.0, 5.0)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (with_caller().replace('"payments.write"', '"payments.admin"'), "unknown roles"),
        (with_caller().replace(HASH, HASH[:-1]), "64 hex"),
        (with_caller().replace(HASH, "z" * 64), "64 hex"),
        (with_caller() + f"\n[[auth.callers]]\n{CALLER}", "names caller 'checkout' twice"),
        (
            with_caller() + "\n[[auth.callers]]\n" + CALLER.replace('"checkout"', '"other"'),
            "share a token hash",
        ),
        ("[auth]\nreflection = true\n", "names no caller"),
        (with_caller(auth="max_message_bytes = 2097152"), "max_message_bytes must be between"),
        (with_caller(auth="max_streams = 0"), "max_streams must be at least 1"),
        (with_caller(auth="reflection = 1"), "reflection must be true or false"),
        (with_caller(auth="colour = 1"), "unknown keys ['colour']"),
        (with_caller("tokens = []\n"), "unknown keys ['tokens']"),
        (with_caller().replace('roles = ["payments.write"]', "roles = []"), "roles is empty"),
        (with_caller().replace(f'token_sha256 = ["{HASH}"]', ""), "needs token_sha256"),
        (with_caller('identities = ["spiffe://shop/checkout"]\n'), "no client_ca_file"),
        (with_caller('identities = ["checkout"]\n'), "none of a URI SAN"),
        (with_caller("rate = {per_second = 0}\n"), "per_second must be a number above 0"),
        (with_caller("rate = {per_second = 1, burst = 0}\n"), "burst must be a number"),
        (with_caller().replace('account = "shop"\n', ""), "account must be a non-empty"),
        ('[grpc.tls]\ncert_file = "c.pem"\n', "[grpc.tls] needs key_file"),
        ('[grpc.tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n', "cannot read"),
    ],
)
def test_a_configuration_mistake_stops_the_start_with_a_clear_message(
    toml: str, message: str
) -> None:
    with pytest.raises(TrustConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read(toml)


def test_tls_files_are_read_relative_to_the_configuration_file(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_bytes(pem)
    (tmp_path / "empty.pem").write_bytes(b"not a pem")
    tls, _ = read_trust(
        tomllib.loads(
            '[grpc.tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\nclient_ca_file = "ca.pem"'
        ),
        tmp_path,
    )
    assert tls is not None and tls.client_ca == pem
    assert "BEGIN" not in repr(tls)  # key material never reaches a log line
    with pytest.raises(TrustConfigError, match="holds no PEM block"):
        read_trust(
            tomllib.loads('[grpc.tls]\ncert_file = "c.pem"\nkey_file = "empty.pem"'), tmp_path
        )


def test_every_method_of_the_payments_service_needs_a_role() -> None:
    service = payments_pb2.DESCRIPTOR.services_by_name["PaymentOrchestrator"]
    assert service.full_name == PAYMENTS_SERVICE
    assert set(METHOD_ROLES) == {m.name for m in service.methods}
    assert METHOD_ROLES["GetPayment"] == PAYMENTS_READ


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:0", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/payorch.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("payments.internal:50051", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_off_loopback_needs_both_tls_and_caller_auth() -> None:
    _, auth = read_trust(tomllib.loads(with_caller()), Path("."))
    assert exposure("127.0.0.1:50051", None, None) is None
    problem = exposure("0.0.0.0:50051", None, auth)
    assert problem is not None and "TLS ([grpc.tls])" in problem and "[auth]" not in problem
    problem = exposure("0.0.0.0:50051", None, None)
    assert problem is not None and "TLS ([grpc.tls]) and caller authentication" in problem


@pytest.mark.parametrize(
    ("tls", "auth", "message"),
    [
        ('token_listen = "127.0.0.1:0"\n', with_caller(), "without client_ca_file"),
        (
            'client_ca_file = "ca.pem"\ntoken_listen = "127.0.0.1:0"\n',
            "",
            "needs [auth] callers with tokens",
        ),
        ('client_ca_file = "ca.pem"\ntoken_listen = 50052\n', with_caller(), "host:port"),
    ],
)
def test_a_token_listener_needs_a_client_ca_beside_it_and_token_callers(
    tmp_path: Path, tls: str, auth: str, message: str
) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_bytes(
            b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
        )
    toml = f'[grpc.tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n{tls}{auth}'
    with pytest.raises(TrustConfigError, match=re.escape(message)):
        read(toml, tmp_path)
