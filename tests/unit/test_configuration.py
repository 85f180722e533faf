"""Store URLs, provider configuration and routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.sandbox import SandboxAdapter
from orchestrator.bootstrap import Settings, load_router
from orchestrator.routing import Route, Router
from orchestrator.store import parse_database_url


def test_a_relative_sqlite_url_names_a_file_in_the_working_directory() -> None:
    config = parse_database_url("sqlite:///payorch.db")
    assert config.kind == "sqlite"
    assert config.env["SQLITE_DBNAME"] == "payorch.db"


def test_an_absolute_sqlite_url_keeps_its_leading_slash(tmp_path: Path) -> None:
    config = parse_database_url(f"sqlite:///{tmp_path}/x/events.db")
    assert config.env["SQLITE_DBNAME"] == f"{tmp_path}/x/events.db"
    assert (tmp_path / "x").is_dir()


def test_a_postgres_url_sets_the_store_and_hides_the_password_from_display() -> None:
    config = parse_database_url("postgresql://app:pw%40x@db.internal:6543/payments?schema=pay")
    assert config.kind == "postgres"
    assert config.env["POSTGRES_HOST"] == "db.internal"
    assert config.env["POSTGRES_PORT"] == "6543"
    assert config.env["POSTGRES_DBNAME"] == "payments"
    assert config.env["POSTGRES_USER"] == "app"
    assert config.env["POSTGRES_PASSWORD"] == "pw@x"
    assert config.env["POSTGRES_SCHEMA"] == "pay"
    assert "pw" not in config.display
    assert config.display == "postgresql://app@db.internal:6543/payments"


def test_a_postgres_password_can_come_from_a_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("PAYORCH_DATABASE_PASSWORD_FILE", str(secret))
    assert parse_database_url("postgresql://app@h/db").env["POSTGRES_PASSWORD"] == "from-file"


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://", "nonsense"])
def test_unsupported_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_database_url(url)


def test_flags_win_over_environment_which_wins_over_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYORCH_GRPC_LISTEN", "0.0.0.0:1")
    monkeypatch.setenv("PAYORCH_GRPC_WORKERS", "7")
    settings = Settings.from_env(grpc_listen=None, database_url="sqlite:///flag.db")
    assert settings.grpc_listen == "0.0.0.0:1"
    assert settings.grpc_workers == 7
    assert settings.database_url == "sqlite:///flag.db"
    assert Settings.from_env(grpc_listen="127.0.0.1:2").grpc_listen == "127.0.0.1:2"


def _router() -> Router:
    def route(name: str) -> Route:
        return Route(SandboxAdapter("http://127.0.0.1:9", name=name), timeout=1.0)

    return Router(
        {"a": route("a"), "b": route("b"), "c": route("c")},
        {"US": ["a", "b"], "US/EUR": ["c"], "*": ["b"]},
    )


def test_routes_prefer_region_and_currency_then_region_then_the_default() -> None:
    router = _router()
    assert [r.provider.name for r in router.candidates("US", "EUR")] == ["c"]
    assert [r.provider.name for r in router.candidates("US", "USD")] == ["a", "b"]
    assert [r.provider.name for r in router.candidates("IN", "INR")] == ["b"]


def test_routes_naming_unknown_providers_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown providers"):
        Router({}, {"US": ["ghost"]})


def test_the_toml_configuration_names_providers_and_routes(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        '[providers.sandbox-us]\ntype = "sandbox"\nbase_url = "http://127.0.0.1:9"\n'
        'timeout = 2.5\n\n[routes]\nUS = ["sandbox-us"]\n'
    )
    router = load_router(str(path), None)
    (route,) = router.candidates("US", "USD")
    assert route.provider.name == "sandbox-us"
    assert route.timeout == 2.5
    assert router.candidates("EU", "EUR") == []


def test_a_provider_of_unknown_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text('[providers.x]\ntype = "carrier-pigeon"\n')
    with pytest.raises(ValueError, match="unknown type"):
        load_router(str(path), None)


def test_secrets_come_from_the_environment_or_a_file_never_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.secrets import secret_from

    monkeypatch.setenv("STRIPE_TEST_KEY", "sk_test_123")
    secret = secret_from({"secret_key_env": "STRIPE_TEST_KEY"}, "secret_key", owner="stripe")
    assert secret.reveal() == "sk_test_123"
    assert "sk_test_123" not in repr(secret) and "sk_test_123" not in str(secret)
    (tmp_path / "key").write_text("sk_file_456\n")
    from_file = secret_from({"secret_key_file": str(tmp_path / "key")}, "secret_key", owner="s")
    assert from_file.reveal() == "sk_file_456"
    with pytest.raises(ValueError, match="must not be written"):
        secret_from({"secret_key": "sk_live_oops"}, "secret_key", owner="stripe")
    with pytest.raises(ValueError, match="MISSING_VAR"):
        secret_from({"secret_key_env": "MISSING_VAR"}, "secret_key", owner="stripe")
    with pytest.raises(ValueError, match="required"):
        secret_from({}, "secret_key", owner="stripe")


def test_the_readme_configuration_example_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[recovery]" in b)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_x")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_new")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_OLD", "whsec_old")
    monkeypatch.setenv("RAZORPAY_KEY_ID", "rzp_test_x")
    for name in ("adyen_api_key", "razorpay_key_secret"):
        (tmp_path / name).write_text("secret\n")
    (tmp_path / "adyen_hmac_key").write_text(
        "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056\n"
    )
    example = example.replace("/run/secrets/", f"{tmp_path}/")
    path = tmp_path / "providers.toml"
    path.write_text(example)
    from orchestrator.bootstrap import load_configuration

    config = load_configuration(str(path), None)
    assert [r.provider.name for r in config.router.candidates("US", "USD")] == [
        "stripe-us",
        "adyen-us",
    ]
    assert [r.provider.name for r in config.router.candidates("IN", "INR")] == ["razorpay-in"]
    assert config.recovery.schedule[0] == 60
    assert config.listing_interval == 0.5
    stripe = config.router.route("stripe-us")
    assert stripe.timeout == 10.0 and stripe.breaker is not None
    assert stripe.breaker.policy.failure_threshold == 5
    assert stripe.bulkhead is not None
    assert stripe.bulkhead.policy.max_concurrent_calls == 32
    assert stripe.bulkhead.policy.max_calls_per_second == 80
    from orchestrator.bootstrap import webhook_verifiers

    assert {k: [v.name for v in vs] for k, vs in webhook_verifiers(config.router).items()} == {
        "stripe": ["stripe-us"], "adyen": ["adyen-us"], "razorpay": ["razorpay-in"], "sandbox": ["sandbox"],
    }  # fmt: skip


# --- webhook secrets: the sandbox's from the environment, and warnings of the missing ones ---

NOW = 1_750_000_000


def _sandbox_delivery(secret: str) -> tuple[dict[str, str], bytes]:
    """A genuine sandbox webhook, signed with ``secret`` by the sandbox's own signing code."""
    import json

    from adapters.sandbox import sign_standard_webhook

    payment = {"id": "sbx_pay_1", "reference": "", "amount": 1, "currency": "USD",
               "status": "authorized", "idempotency_key": "k"}  # fmt: skip
    event = {"id": "evt_cfg", "type": "payment.authorized", "created": NOW,
             "data": {"payment": payment}}  # fmt: skip
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"webhook-id": "evt_cfg", "webhook-timestamp": str(NOW),
               "webhook-signature": sign_standard_webhook(secret, "evt_cfg", NOW, body)}  # fmt: skip
    return headers, body


def _configuration_file(tmp_path: Path, *tables: str) -> str:
    path = tmp_path / "providers.toml"
    path.write_text("\n".join(tables) + '\n[routes]\n"*" = ["sandbox-eu"]\n')
    return str(path)


SANDBOX_TABLE = '[providers.sandbox-eu]\ntype = "sandbox"\nbase_url = "http://127.0.0.1:9"\n'


def test_a_configured_sandbox_without_its_own_secret_verifies_with_the_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.sandbox import new_webhook_secret
    from orchestrator.bootstrap import (
        load_configuration,
        sandbox_webhook_secret_from_env,
        webhook_verifiers,
    )

    secret = new_webhook_secret()
    monkeypatch.setenv("PAYORCH_SANDBOX_WEBHOOK_SECRET", secret)
    config = load_configuration(
        _configuration_file(tmp_path, SANDBOX_TABLE),
        "http://127.0.0.1:8181",
        sandbox_webhook_secret=sandbox_webhook_secret_from_env(),
    )
    (sandbox,) = webhook_verifiers(config.router)["sandbox"]
    headers, body = _sandbox_delivery(secret)
    [event] = sandbox.verifier.verify_webhook(headers, body, now=NOW)
    assert (sandbox.name, event.event_id) == ("sandbox-eu", "evt_cfg")


def test_a_configured_sandbox_keeps_its_own_secret_over_the_one_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.sandbox import new_webhook_secret
    from orchestrator.bootstrap import load_configuration, webhook_verifiers
    from orchestrator.ports import WebhookRejected
    from orchestrator.secrets import Secret

    own, from_env = new_webhook_secret(), new_webhook_secret()
    monkeypatch.setenv("SANDBOX_EU_WHSEC", own)
    table = SANDBOX_TABLE + 'webhook_secret_env = "SANDBOX_EU_WHSEC"\n'
    config = load_configuration(
        _configuration_file(tmp_path, table),
        None,
        sandbox_webhook_secret=Secret(from_env, "$PAYORCH_SANDBOX_WEBHOOK_SECRET"),
    )
    (sandbox,) = webhook_verifiers(config.router)["sandbox"]
    sandbox.verifier.verify_webhook(*_sandbox_delivery(own), now=NOW)
    with pytest.raises(WebhookRejected) as refused:
        sandbox.verifier.verify_webhook(*_sandbox_delivery(from_env), now=NOW)
    assert refused.value.status == 401


STRIPE_TABLES = (  # two providers of one type, one with its webhook secret
    '[providers.stripe-us]\ntype = "stripe"\nsecret_key_env = "SK_TEST"\n'
    'webhook_secret_env = "STRIPE_US_WHSEC"\n'
    '[providers.stripe-eu]\ntype = "stripe"\nsecret_key_env = "SK_TEST"\n'
)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_every_webhook_endpoint_without_a_secret_is_warned_of_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrator.bootstrap import load_configuration, warn_of_webhooks_without_secret

    monkeypatch.setenv("SK_TEST", "sk_test_x")
    monkeypatch.setenv("STRIPE_US_WHSEC", "whsec_stripe_us_secret_value")
    path = _configuration_file(tmp_path, SANDBOX_TABLE, STRIPE_TABLES)
    config = load_configuration(path, None)
    with caplog.at_level("WARNING", logger="payorch"):
        warn_of_webhooks_without_secret(config)
    sandbox, stripe = _warnings(caplog)
    assert "'sandbox-eu'" in sandbox and "/webhooks/sandbox" in sandbox
    assert "'stripe-eu'" in stripe and "/webhooks/stripe" in stripe
    assert all("refused" in warning for warning in (sandbox, stripe))
    assert "whsec_stripe_us_secret_value" not in caplog.text and "stripe-us" not in caplog.text


def test_the_sandbox_without_a_configuration_or_a_secret_is_warned_of_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from orchestrator.bootstrap import load_configuration, warn_of_webhooks_without_secret

    config = load_configuration(None, "http://127.0.0.1:8181")
    with caplog.at_level("WARNING", logger="payorch"):
        warn_of_webhooks_without_secret(config)
    (warning,) = _warnings(caplog)
    assert "'sandbox'" in warning and "/webhooks/sandbox" in warning and "refused" in warning


def test_no_warning_is_logged_when_every_webhook_endpoint_has_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from adapters.sandbox import new_webhook_secret
    from orchestrator.bootstrap import (
        load_configuration,
        sandbox_webhook_secret_from_env,
        warn_of_webhooks_without_secret,
    )

    secret = new_webhook_secret()
    monkeypatch.setenv("PAYORCH_SANDBOX_WEBHOOK_SECRET", secret)
    path = _configuration_file(tmp_path, SANDBOX_TABLE)
    config = load_configuration(
        path, None, sandbox_webhook_secret=sandbox_webhook_secret_from_env()
    )
    with caplog.at_level("DEBUG"):
        warn_of_webhooks_without_secret(config)
    assert _warnings(caplog) == []
    assert secret not in caplog.text


# --- outbound limits: the bulkhead of each provider ---------------------------------------


def test_a_provider_table_sets_its_outbound_limits(tmp_path: Path) -> None:
    limited = SANDBOX_TABLE + "max_concurrent_calls = 4\nmax_calls_per_second = 2.5\n"
    router = load_router(_configuration_file(tmp_path, limited), None)
    route = router.route("sandbox-eu")
    assert route.bulkhead is not None
    assert route.bulkhead.policy.max_concurrent_calls == 4
    assert route.bulkhead.policy.max_calls_per_second == 2.5
    for _ in range(4):
        route.bulkhead.enter()
    assert not route.available()


def test_without_outbound_limits_a_provider_is_unlimited(tmp_path: Path) -> None:
    router = load_router(_configuration_file(tmp_path, SANDBOX_TABLE), None)
    bulkhead = router.route("sandbox-eu").bulkhead
    assert bulkhead is not None and bulkhead.policy.unlimited


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_concurrent_calls = 0", "max_concurrent_calls must be a whole number of at least 1"),
        ("max_concurrent_calls = 2.5", "max_concurrent_calls must be a whole number"),
        ('max_concurrent_calls = "8"', "max_concurrent_calls must be a whole number"),
        ("max_calls_per_second = 0", "max_calls_per_second must be a positive number"),
        ("max_calls_per_second = -3", "max_calls_per_second must be a positive number"),
        ("max_calls_per_second = true", "max_calls_per_second must be a positive number"),
    ],
)
def test_outbound_limits_that_mean_nothing_are_refused_naming_the_provider(
    tmp_path: Path, setting: str, message: str
) -> None:
    path = _configuration_file(tmp_path, SANDBOX_TABLE + setting + "\n")
    with pytest.raises(ValueError, match=f"provider 'sandbox-eu': {message}"):
        load_router(path, None)


def test_the_listing_interval_comes_from_the_file_and_must_be_positive(tmp_path: Path) -> None:
    from orchestrator.bootstrap import load_configuration

    path = tmp_path / "providers.toml"
    base = '[providers.sandbox]\nbase_url = "http://127.0.0.1:1"\n[routes]\n"*" = ["sandbox"]\n'
    path.write_text(base + "[listing]\ninterval = 2.5\n")
    assert load_configuration(str(path), None).listing_interval == 2.5
    path.write_text(base)
    assert load_configuration(str(path), None).listing_interval == 0.5
    path.write_text(base + "[listing]\ninterval = 0\n")
    with pytest.raises(ValueError, match=r"\[listing\] interval"):
        load_configuration(str(path), None)


def test_the_drain_grace_comes_from_the_environment_and_must_be_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PAYORCH_DRAIN_GRACE", raising=False)
    assert Settings.from_env().drain_grace == 20.0
    monkeypatch.setenv("PAYORCH_DRAIN_GRACE", "2.5")
    assert Settings.from_env().drain_grace == 2.5
    assert Settings.from_env(drain_grace=7.0).drain_grace == 7.0
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("PAYORCH_DRAIN_GRACE", bad)
        with pytest.raises(ValueError, match="PAYORCH_DRAIN_GRACE"):
            Settings.from_env()
