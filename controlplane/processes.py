"""Child processes that `controlplane demo` and the tests start (httpbin, Envoy, the control plane, a
registry): each with its output in a log file, and stopped politely, then firmly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class Process:
    """A child process whose output goes to `log_dir/NAME.log`. It runs in a session of its own, so that
    only `stop` ends it, never a Ctrl-C meant for its parent, which may still need it to clean up."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after 10 seconds."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def controlplane_command(*args: str) -> list[str]:
    """The `controlplane` command run by this interpreter, so that the child runs this code with these packages."""
    return [sys.executable, "-m", "controlplane", *args]
