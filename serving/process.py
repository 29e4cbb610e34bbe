"""The development server in a child process, for the demo and the tests."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_READY = re.compile(r"serving .* on (127\.0\.0\.1:\d+)")
_REST = re.compile(r"REST API at (http://[^/\s]+)")


class DevServerProcess:
    """``python -m reloop2_serving.dev_server`` on a free loopback port; ``target`` is ``HOST:PORT``.

    The child's output is drained by a thread for its whole life (a full pipe would block the
    server) and the last lines are kept in ``lines`` for error reports.
    """

    def __init__(self, model_dir, model_name: str = "reloop2", extra_args=(),
                 startup_seconds: float = 180.0):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reloop2_serving.dev_server", "--model-dir", str(model_dir),
             "--port", "0", "--model-name", model_name, *extra_args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: collections.deque[str] = collections.deque(maxlen=500)
        self.target: str | None = None
        deadline = time.monotonic() + startup_seconds
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = _READY.search(line)
            if match:
                self.target = match.group(1)
                break
        if self.target is None:
            self.stop()
            raise RuntimeError("dev server did not start:\n" + "".join(self.lines))
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    @property
    def rest_url(self) -> str | None:
        """``http://HOST:PORT`` of the REST API when the server was started with ``--rest-port``."""
        for line in list(self.lines):
            match = _REST.search(line)
            if match:
                return match.group(1)
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_rest(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signals the server, waits for it to exit (kills it after ``timeout``), returns its code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._dump_stacks()
                self.proc.kill()
                self.proc.wait()
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.join(timeout=5)
        else:
            rest = self.proc.stdout.read()
            if rest:
                self.lines.append(rest)
        return self.proc.returncode

    def _dump_stacks(self) -> None:
        """Asks a server that did not stop for its threads' stacks (SIGUSR1), for the report."""
        try:
            self.proc.send_signal(signal.SIGUSR1)
            self.proc.wait(timeout=3)  # time to write the stacks; the server is killed next
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "DevServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
