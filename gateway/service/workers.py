"""``maagw serve --workers N``: several gateway processes behind one partner port.

The supervisor starts N worker processes (``maagw serve --worker-index i``). Every
worker binds the partner port with ``SO_REUSEPORT`` (the kernel spreads new
connections over them), consumes the partner queues (competing consumers on the
same quorum queues), and writes to the same state store and audit chain (SQLite
in WAL mode serialises the writers; each audit batch reads the chain head inside
its own write transaction, so there is one chain, not one per process). Only
worker 0 serves the admin listener.

Signals: SIGTERM/SIGINT stop every worker gracefully; SIGHUP reloads every worker;
worker 0 asks for the others' reload with SIGUSR1 after an admin ``/v1/reload``.
A worker that dies is restarted after a pause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


#: seconds to wait for workers after SIGTERM before killing them
STOP_GRACE_SECONDS = 30.0


#: pause before a dead worker is started again
RESTART_PAUSE_SECONDS = 1.0


class Supervisor:
    """Starts, watches, signals and stops the worker processes."""

    def __init__(self, config: Path, workers: int, log_args: Sequence[str]) -> None:
        self.config = config
        self.count = workers
        self.log_args = list(log_args)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._reload_others = False
        self._reload_all = False

    def command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            *self.log_args,
            "serve",
            "--config",
            str(self.config),
            "--worker-index",
            str(index),
            "--workers",
            str(self.count),
        ]

    def start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(self.command(index))
        log.info("worker_started", worker=index, pid=self.procs[index].pid)

    def run(self) -> int:
        """Supervise until told to stop; returns the exit status."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload_all", True))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "_reload_others", True))
        for index in range(self.count):
            self.start(index)
        while not self._stopping:
            self._forward_reloads()
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is not None and not self._stopping:
                    log.error("worker_died", worker=index, code=code)
                    time.sleep(RESTART_PAUSE_SECONDS)
                    self.start(index)
            time.sleep(0.2)
        return self._stop_all()

    def _on_stop(self, *_: object) -> None:
        self._stopping = True

    def _forward_reloads(self) -> None:
        if self._reload_all or self._reload_others:
            skip = set() if self._reload_all else {0}
            self._reload_all = self._reload_others = False
            for index, proc in self.procs.items():
                if index not in skip and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)

    def _stop_all(self) -> int:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        worst = 0
        for index, proc in self.procs.items():
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", worker=index)
                proc.kill()
                code = proc.wait()
            worst = max(worst, abs(code))
        log.info("workers_stopped", count=self.count)
        return 0 if worst == 0 else 1


def ask_supervisor_to_reload_others() -> None:
    """From worker 0: have the supervisor reload the other workers too."""
    os.kill(os.getppid(), signal.SIGUSR1)
