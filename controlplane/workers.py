"""`serve --workers N`: N server processes on the same ports, as replicas on one machine.

A Python process uses one core. Each worker loads the same directory and answers with the same
content-hash versions, so a proxy sent to any of them (the kernel spreads connections over the sockets
bound with SO_REUSEPORT) gets the same config, and one that reconnects to another is sent nothing new.
They share nothing but the cache dir, whose files are written atomically and named by content."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from types import FrameType

log = logging.getLogger(__name__)


def run_workers(count: int, command: list[str]) -> int:
    """Runs `count` copies of `command` until one ends or this process is told to stop (SIGTERM, SIGINT),
    then stops the others; returns the first nonzero exit status."""
    workers = [subprocess.Popen(command) for _ in range(count)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(w.poll() is None for w in workers):
        time.sleep(0.2)
    if not stopping:
        ended = next(w for w in workers if w.poll() is not None)
        log.error("worker %d ended with status %s; stopping the others", ended.pid, ended.returncode)
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    statuses = [w.wait() for w in workers]
    return next((s for s in statuses if s not in (0, -signal.SIGTERM)), 0)
