"""How the long-running commands (the dev server, ``reloop2 memory keep``) wait for their stop.

``StopSignal()`` catches SIGTERM and SIGINT; its ``wait()`` blocks until one arrives. The
handler only records the signal (taking no lock: a handler that sets a ``threading.Event`` can
deadlock on the event's own lock when the signal lands while the main thread is inside
``Event.wait``), and ``wait`` sleeps in short steps, so the main thread runs Python's handlers
even when the kernel hands the signal to one of the many other threads gRPC and TensorFlow
start. SIGUSR1 prints every thread's stack to stderr (``faulthandler`` does it from the signal
handler itself, so it works even when the Python threads are stuck); the test helpers send it
before they kill a server that did not stop.
"""

from __future__ import annotations

import faulthandler
import signal
import time


class StopSignal:
    """Installs the handlers (call it from the main thread); ``signum`` is the signal received."""

    def __init__(self):
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._received)
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _received(self, signum, frame) -> None:
        self.signum = signum

    def wait(self, poll_seconds: float = 0.25) -> int:
        """Blocks until SIGTERM or SIGINT arrives; returns it."""
        while self.signum is None:
            time.sleep(poll_seconds)
        return self.signum
