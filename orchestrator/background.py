"""Where the background workers (recovery, the webhook consumer, the listing projector) run.

``payorch serve --workers``:
- ``here`` (the default): in the serving process, as threads beside the gRPC and HTTP ones.
- ``process``: in a ``payorch work`` child of the serving process, on the same store and
  providers. The child has its own interpreter, so the workers no longer take the GIL from
  the calls being answered (on a machine with a core to spare, webhook acknowledgements and
  their processing then run in parallel). A child that dies is started again.
- ``none``: not in this process: ``payorch work`` runs elsewhere, on this host or another,
  on the same store.

Every worker is safe beside its copies on other replicas (positions and indexes are shared in
the store, see ``orchestrator.tracked``), so any number of ``payorch work`` processes may run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

log = logging.getLogger("payorch")

MODES = ("here", "process", "none")
RESTART_AFTER = 1.0  # seconds between a worker process's death and its next start
# Set in a worker process's environment to its parent's pid: it stops when the parent is gone.
PARENT_VARIABLE = "PAYORCH_WORK_PARENT"


class Stoppable(Protocol):
    """What a drain stops: the workers' loops, or the process they run in."""

    def request_stop(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


def work_command(*, log_level: str, log_format: str) -> list[str]:
    """``payorch work``, logging as the server does."""
    return [
        sys.executable, "-m", "orchestrator.cli",
        "--log-level", log_level, "--log-format", log_format, "work",
    ]  # fmt: skip


class WorkerProcess:
    """A ``payorch work`` child: started with ``env`` (the store's URL and the providers'
    configuration travel in the environment, never on a command line that ``ps`` shows),
    started again when it exits by itself, and stopped with SIGTERM, on which it finishes
    the item it is on."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self._argv = list(argv)
        self._env = {**os.environ, **env, PARENT_VARIABLE: str(os.getpid())}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self.starts = 0
        self.restart_after = RESTART_AFTER

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> WorkerProcess:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="worker-process", daemon=True)
        self._watcher.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():  # under the lock: request_stop signals what it sees
                return None
            # Its output goes where ours does: one log for the server and its workers. Its
            # own session: a terminal's Ctrl-C reaches the server, which drains, then stops it.
            self._process = subprocess.Popen(  # noqa: S603
                self._argv, env=self._env, start_new_session=True
            )
            self.starts += 1
            log.info("worker process started (pid %d)", self._process.pid)
            return self._process

    def _watch(self) -> None:
        process = self._process
        while process is not None:
            code = process.wait()
            if self._stopping.wait(self.restart_after):
                return
            log.error("worker process %d exited (%s): starting another", process.pid, code)
            process = self._spawn()

    def request_stop(self) -> None:
        """SIGTERM, once: a second one would tell it to stop at once."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        with self._lock:
            process = self._process
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker process %d did not stop in %g s: killed", process.pid, timeout)
            process.kill()
            process.wait()
        if self._watcher is not None:
            self._watcher.join(timeout)


def watch_parent(stop: threading.Event, *, every: float = 1.0) -> None:
    """In a worker process started by ``WorkerProcess``: sets ``stop`` once the parent is
    gone (killed with SIGKILL, it could not stop its child), so no worker runs orphaned."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent:
        return

    def watch() -> None:
        while not stop.wait(every):
            if os.getppid() != int(parent):
                log.warning("the server that started this worker process is gone: stopping")
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
