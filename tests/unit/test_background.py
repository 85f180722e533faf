"""A worker process as ``payorch serve --workers process`` keeps it: started again when it
dies, stopped with one SIGTERM (a second means "stop now"), never started after a stop. The
child here is a small script that records what it receives."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from orchestrator.background import WorkerProcess

CHILD = """
import os, signal, sys, time
from pathlib import Path
record = Path(sys.argv[1])
with record.open("a") as f:
    f.write("start\\n")
def on_term(signum, frame):
    with record.open("a") as f:
        f.write("term\\n")
signal.signal(signal.SIGTERM, on_term)
if record.read_text().count("start") == 1 and "--die-first" in sys.argv:
    sys.exit(3)
for _ in range(100):  # runs on after SIGTERM for a while, finishing its item
    if record.read_text().count("term"):
        time.sleep(0.5)
        sys.exit(0)
    time.sleep(0.05)
"""


def child(tmp_path: Path, *flags: str) -> tuple[WorkerProcess, Path]:
    script, record = tmp_path / "child.py", tmp_path / "record.txt"
    script.write_text(CHILD)
    worker = WorkerProcess([sys.executable, str(script), str(record), *flags], {})
    worker.restart_after = 0.05
    return worker, record


def wait_for(record: Path, line: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while not record.exists() or record.read_text().split().count(line) < count:
        assert time.monotonic() < deadline, record.read_text() if record.exists() else "nothing"
        time.sleep(0.02)


def test_a_drain_sends_one_sigterm_however_often_it_asks(tmp_path: Path) -> None:
    worker, record = child(tmp_path)
    worker.start()
    wait_for(record, "start", 1)

    worker.request_stop()
    wait_for(record, "term", 1)  # handled: a second signal now would not merge with it
    worker.request_stop()
    worker.stop(timeout=10)

    assert record.read_text().split() == ["start", "term"]


def test_a_worker_process_that_dies_is_started_again(tmp_path: Path) -> None:
    worker, record = child(tmp_path, "--die-first")
    worker.start()
    wait_for(record, "start", 2)
    worker.stop(timeout=10)

    assert worker.starts == 2
    assert record.read_text().split() == ["start", "start", "term"]


def test_no_worker_process_starts_after_a_stop(tmp_path: Path) -> None:
    worker, record = child(tmp_path)
    worker.start()
    wait_for(record, "start", 1)
    worker.stop(timeout=10)
    time.sleep(0.3)  # several restart intervals

    assert worker.starts == 1
    assert record.read_text().split() == ["start", "term"]
