"""``run_sandbox`` (what ``payorch sandbox`` runs) in a child process, for the tests of its
command-line life: start-up lines, SIGTERM."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def sandbox_process(**options: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The child and its port (a free one); ``options`` are ``run_sandbox``'s keywords.
    Killed on the way out, whatever the test did."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    arguments = "".join(f", {name}={value!r}" for name, value in options.items())
    script = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from adapters.sandbox.server import run_sandbox;"
        f"run_sandbox('127.0.0.1:{port}'{arguments})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process, port
    finally:
        process.kill()
        process.wait()


def stderr_until(process: subprocess.Popen[str], marker: str, *, lines: int = 5) -> list[str]:
    """The child's first stderr lines, up to the one holding ``marker`` (at most ``lines``)."""
    assert process.stderr is not None
    seen: list[str] = []
    while len(seen) < lines and not any(marker in line for line in seen):
        seen.append(process.stderr.readline())
    return seen
