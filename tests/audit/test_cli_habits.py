"""The audit commands behave as Unix tools do: ``--out -`` is standard output, and progress is
drawn on a terminal, never into a pipe. Each test runs the real CLI in its own process, its
standard error piped or on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.application import Payments
from orchestrator.cli import main
from tests.audit.helpers import a_few_payments
from tests.audit.test_export import fill

pytestmark = pytest.mark.timeout(120)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "--log-level", "WARNING", "audit", *args]


class Piped:
    """A finished run whose standard output and error were pipes."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        done = subprocess.run(command, cwd=cwd, capture_output=True, timeout=60, check=False)
        self.returncode = done.returncode
        self.raw = done.stdout  # bytes, as written: CSV's line endings included
        self.stdout = done.stdout.decode()
        self.stderr = done.stderr.decode()


piped = Piped


def on_a_terminal(command: list[str], cwd: Path) -> tuple[int, str, str]:
    """Runs ``command`` with its standard error on a pseudo-terminal (standard output piped):
    (exit code, standard output, what the terminal showed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal's last writer
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    return process.wait(30), out, shown.decode()


def statement(sandbox: SandboxServer, tmp_path: Path) -> Path:
    path = tmp_path / "ledger.json"
    path.write_text(httpx.get(f"{sandbox.url}/_sandbox/ledger").text)
    return path


def assert_no_progress(stderr: str) -> None:
    assert "\r" not in stderr, f"progress drawn into a pipe: {stderr!r}"
    assert "%" not in stderr, f"progress drawn into a pipe: {stderr!r}"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_to_dash_writes_the_export_to_standard_output(
    app: Payments, database_url: str, tmp_path: Path, fmt: str
) -> None:
    a_few_payments(app)
    to_file = tmp_path / f"events.{fmt}"
    assert main(["audit", "export", "--database-url", database_url, "--format", fmt,
                 "--out", str(to_file), "--quiet"]) == 0  # fmt: skip
    done = piped(cli("export", "--database-url", database_url, "--format", fmt, "--out", "-"),
                 tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.raw == to_file.read_bytes()
    assert done.stdout.count("\n") == 13 + (fmt == "csv")  # the 13 events (and a header)
    assert not (tmp_path / "-").exists()
    assert not (tmp_path / "-.tmp").exists()
    assert_no_progress(done.stderr)
    assert done.stderr.startswith("wrote 13 events to standard output in ")
    assert len(done.stderr.splitlines()) == 1


def test_long_audit_commands_piped_draw_no_progress(
    app: Payments, database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    a_few_payments(app)
    ledger = statement(sandbox, tmp_path)
    exported = piped(cli("export", "--database-url", database_url, "--format", "csv",
                         "--out", str(tmp_path / "e.csv")), tmp_path)  # fmt: skip
    verified = piped(cli("verify", "--database-url", database_url), tmp_path)
    reconciled = piped(cli("reconcile", "--database-url", database_url, "--provider", "sandbox",
                           "--statement", str(ledger)), tmp_path)  # fmt: skip
    assert [exported.returncode, verified.returncode, reconciled.returncode] == [0, 0, 0], (
        exported.stderr + verified.stderr + reconciled.stderr
    )
    for done in (exported, verified, reconciled):
        assert_no_progress(done.stderr)
        assert_no_progress(done.stdout)
    assert verified.stderr == reconciled.stderr == ""


def test_long_audit_commands_on_a_terminal_show_their_progress(
    app: Payments, database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    a_few_payments(app)
    ledger = statement(sandbox, tmp_path)
    code, out, shown = on_a_terminal(
        cli("export", "--database-url", database_url, "--format", "jsonl", "--out", "-"), tmp_path
    )
    assert code == 0, shown
    assert "\rexporting: 100% (position " in shown
    assert len(out.splitlines()) == 13 and "\r" not in out  # the export stays clean
    code, out, shown = on_a_terminal(cli("verify", "--database-url", database_url), tmp_path)
    assert code == 0, shown
    assert "\rverifying the chain: 100% (link " in shown
    assert "\rreplaying payments: 100% (event " in shown
    assert "no findings" in out
    code, out, shown = on_a_terminal(
        cli("reconcile", "--database-url", database_url, "--provider", "sandbox",
            "--statement", str(ledger)), tmp_path,
    )  # fmt: skip
    assert code == 0, shown + out
    assert "\rreading the log: 100% (position " in shown


def test_quiet_keeps_an_export_silent_even_on_a_terminal(
    app: Payments, database_url: str, tmp_path: Path
) -> None:
    a_few_payments(app)
    code, _, shown = on_a_terminal(
        cli("export", "--database-url", database_url, "--format", "csv", "--out", "-", "--quiet"),
        tmp_path,
    )
    assert code == 0, shown
    assert "%" not in shown


def test_an_export_whose_reader_stops_early_ends_quietly(
    app: Payments, database_url: str, tmp_path: Path
) -> None:
    """``payorch audit export --out - | head -1``: the reader closes the pipe long before
    the end (5,000 events, far beyond a pipe's buffer); the export ends with exit code 1 and
    no traceback, as Unix tools do."""
    fill(app, 1000)
    command = cli("export", "--database-url", database_url, "--format", "jsonl", "--out", "-")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b'{"position": 1,')
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(60) == 1, errors
    assert "Traceback" not in errors
    assert "wrote" not in errors
