"""How the long-running commands (the dev server, ``reloop2 memory keep``) wait for their stop.

``stop_event()`` is set by SIGTERM or SIGINT; ``wait(stop)`` blocks until it is. The wait wakes
twice a second, so the main thread runs Python's signal handlers even when the kernel hands the
signal to one of the many other threads gRPC and TensorFlow start. SIGUSR1 prints every thread's
stack to stderr (``faulthandler`` does it from the signal handler, so it works even when the
Python threads are stuck); the test helpers send it before they kill a server that did not stop.
"""

from __future__ import annotations

import faulthandler
import signal
import threading


def stop_event() -> threading.Event:
    """An event SIGTERM or SIGINT sets; also makes SIGUSR1 dump the threads' stacks."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return stop


def wait(stop: threading.Event, poll_seconds: float = 0.5) -> None:
    """Blocks until ``stop`` is set, waking every ``poll_seconds``."""
    while not stop.wait(poll_seconds):
        pass
