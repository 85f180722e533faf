"""What caller authentication costs: CreatePayment and its replays, with bearer tokens and
with mutual TLS, as ratios to the same server configuration without auth, in one run.

One sandbox provider process; then, one after the other, four ``payorch serve`` processes on
fresh SQLite stores, with the same providers and routes, that differ only in trust:
  plain   no TLS, no [auth] (no interceptor): the baseline
  tls     TLS, no [auth]: what the encryption alone costs
  token   TLS and [auth]; the load generator sends 'authorization: Bearer ...'
  mtls    TLS with client certificates and [auth]; the caller is named by its certificate
Each server gets the same load (bench/loadgen.py, closed loop): CreatePayment with new keys,
then replays of those keys. Certificates are made for the run (tests/certs.py).

Run from the repository root: ``PYTHONPATH=.:bench .venv/bin/python bench/auth.py``. Numbers
on a shared machine are noisy: run under ``flock /tmp/bench.lock``, compare ratios within one
run, not across runs, and use ``--runs 3`` for medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from create_payment import (
    _PAYORCH_LISTENING,
    RESULTS,
    BenchError,
    Child,
    run_json,
    start_sandbox,
)

from orchestrator.api.trust import hash_token
from tests.certs import Authority

BENCH = Path(__file__).resolve().parent
CONFIGS = ("plain", "tls", "token", "mtls")
TOKEN_VARIABLE = "BENCH_AUTH_TOKEN"  # not PAYORCH_*: child_env() drops those


def trust_files(work: Path, token: str) -> dict[str, Path]:
    ca = Authority("bench CA")
    (work / "ca.pem").write_bytes(ca.pem)
    ca.server_certificate().write(work, "server")
    ca.issue("bench", uris=("spiffe://bench/loadgen",)).write(work, "client")
    tables = {
        "plain": "",
        "tls": '[grpc.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n',
        "token": '[grpc.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n',
        "mtls": '[grpc.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n'
        'client_ca_file = "ca.pem"\n',
    }
    callers = (
        '[auth]\n[[auth.callers]]\nname = "bench"\naccount = "bench"\n'
        'roles = ["payments.write", "payments.read"]\n'
    )
    tables["token"] += callers + f'token_sha256 = ["{hash_token(token)}"]\n'
    tables["mtls"] += callers + 'identities = ["spiffe://bench/loadgen"]\n'
    return {name: _write(work / f"{name}.toml", table) for name, table in tables.items()}


def _write(path: Path, table: str) -> Path:
    path.write_text(table)
    return path


def serve(work: Path, name: str, config: Path, sandbox_url: str) -> Child:
    provider = f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox_url}"\n'
    config.write_text(provider + '[routes]\n"*" = ["sandbox"]\n' + config.read_text())
    return Child(
        f"payorch serve ({name})",
        [sys.executable, "-m", "orchestrator.cli", "serve", "--grpc-listen=127.0.0.1:0",
         f"--database-url=sqlite:///{work / f'{name}.db'}", f"--config={config}",
         "--http-listen=127.0.0.1:0"],
        work / f"{name}.log",
    )  # fmt: skip


def loadgen(
    args: argparse.Namespace, name: str, target: str, mode: str, work: Path, watch: str
) -> dict[str, Any]:
    argv = [
        sys.executable, str(BENCH / "loadgen.py"), f"--target={target}", f"--mode={mode}",
        f"--concurrency={args.concurrency}", f"--warmup={args.warmup}",
        f"--duration={args.duration}", "--call-timeout=10", f"--watch=server={watch}",
    ]  # fmt: skip
    keys = work / f"{name}-keys.txt"
    argv.append(f"--keys-out={keys}" if mode == "create" else f"--keys-in={keys}")
    if name != "plain":
        argv.append(f"--tls-ca={work / 'ca.pem'}")
    if name == "mtls":
        argv += [f"--tls-cert={work / 'client.pem'}", f"--tls-key={work / 'client.key'}"]
    if name == "token":
        argv.append(f"--token-env={TOKEN_VARIABLE}")
    return run_json(f"load generator ({name} {mode})", argv, args.warmup + args.duration + 80)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    token = secrets.token_urlsafe(32)
    os.environ[TOKEN_VARIABLE] = token  # the load generator's environment, never its argv
    configs = trust_files(work, token)
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        _, sandbox_url = start_sandbox(stack, work, 30)
        for round_ in range(args.runs):
            for name in CONFIGS:
                config = _copy(configs[name], work, round_)
                server = serve(work, f"{name}-{round_}", config, sandbox_url)
                try:
                    target = server.wait_for(_PAYORCH_LISTENING, 30)[1]
                    time.sleep(0.5)  # the load generator waits for the channel itself
                    phases = {
                        mode: loadgen(args, name, target, mode, work, str(server.pid))
                        for mode in ("create", "replay")
                    }
                finally:
                    server.stop()
                for mode, result in phases.items():
                    if result["non_ok_total"]:
                        raise BenchError(f"{name} {mode}: non-OK answers {result['non_ok_codes']}")
                    results.setdefault(name, {}).setdefault(mode, []).append(result)
    return results


def _copy(config: Path, work: Path, round_: int) -> Path:
    copy = work / f"{config.stem}-{round_}.toml"
    copy.write_text(config.read_text())
    return copy


def summarize(results: dict[str, Any]) -> list[str]:
    def median(name: str, mode: str, key: str) -> float:
        values = sorted(r[key] for r in results[name][mode])
        return float(values[len(values) // 2])

    lines = [f"{'config':8} {'create/s':>9} {'ratio':>6} {'p50 ms':>7} "
             f"{'replay/s':>9} {'ratio':>6} {'p50 ms':>7}"]  # fmt: skip
    base = {mode: median("plain", mode, "throughput") for mode in ("create", "replay")}
    for name in CONFIGS:
        row = [f"{name:8}"]
        for mode in ("create", "replay"):
            rate = median(name, mode, "throughput")
            row += [f"{rate:9.0f}", f"{rate / base[mode]:6.2f}",
                    f"{median(name, mode, 'p50_ms'):7.1f}"]  # fmt: skip
        lines.append(" ".join(row))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="repeat all; report medians")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="payorch-bench-auth-") as tmp:
        try:
            results = run(args, Path(tmp))
        except BenchError as e:
            print(f"bench/auth.py: {e}", file=sys.stderr)
            return 2
    lines = summarize(results)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auth-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"options": vars(args), "results": results}, indent=1))
    print(f"raw numbers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
