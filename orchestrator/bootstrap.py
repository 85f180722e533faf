"""The composition root: settings in, a wired application (store, providers, routes) out."""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.sandbox import SandboxAdapter
from orchestrator.application import Payments
from orchestrator.routing import DEFAULT_ROUTE, Route, Router
from orchestrator.store import DEFAULT_DATABASE_URL, parse_database_url, schema_lock

log = logging.getLogger("payorch")

DEFAULT_PROVIDER_TIMEOUT = 3.0


@dataclass(frozen=True)
class Settings:
    grpc_listen: str = "127.0.0.1:50051"
    database_url: str = DEFAULT_DATABASE_URL
    config: str | None = None
    sandbox_listen: str = "127.0.0.1:8181"
    sandbox_url: str | None = None
    grpc_workers: int = 64

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Flags win over PAYORCH_* environment variables, which win over defaults."""
        env = {
            "grpc_listen": os.environ.get("PAYORCH_GRPC_LISTEN"),
            "database_url": os.environ.get("PAYORCH_DATABASE_URL"),
            "config": os.environ.get("PAYORCH_CONFIG"),
            "sandbox_listen": os.environ.get("PAYORCH_SANDBOX_LISTEN"),
            "sandbox_url": os.environ.get("PAYORCH_SANDBOX_URL"),
            "grpc_workers": os.environ.get("PAYORCH_GRPC_WORKERS"),
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "grpc_workers" in values:
            values["grpc_workers"] = int(values["grpc_workers"])
        return cls(**values)


def load_router(config_path: str | None, sandbox_url: str | None) -> Router:
    """Providers and routes from the TOML file; without one, every region goes to the
    sandbox at ``sandbox_url``."""
    if config_path is None:
        if sandbox_url is None:
            raise ValueError("no provider configuration and no sandbox URL")
        route = Route(SandboxAdapter(sandbox_url), timeout=DEFAULT_PROVIDER_TIMEOUT)
        return Router({"sandbox": route}, {DEFAULT_ROUTE: ["sandbox"]})
    config = tomllib.loads(Path(config_path).read_text())
    providers = {
        name: _build_route(name, spec, sandbox_url)
        for name, spec in config.get("providers", {}).items()
    }
    routes = {str(key): list(names) for key, names in config.get("routes", {}).items()}
    return Router(providers, routes)


def _build_route(name: str, spec: dict[str, Any], sandbox_url: str | None) -> Route:
    kind = spec.get("type", name)
    timeout = float(spec.get("timeout", DEFAULT_PROVIDER_TIMEOUT))
    if kind == "sandbox":
        base_url = spec.get("base_url") or sandbox_url
        if not base_url:
            raise ValueError(f"provider {name!r}: base_url is required")
        adapter = SandboxAdapter(base_url, name=name)
        return Route(adapter, timeout=timeout)
    raise ValueError(f"provider {name!r}: unknown type {kind!r}")


def build_payments(database_url: str, router: Router) -> Payments:
    store = parse_database_url(database_url)
    log.info("event store: %s", store.display)
    with schema_lock(store):
        return Payments(env=store.env, router=router)
