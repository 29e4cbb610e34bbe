"""How the long-running commands stop: SIGTERM reaches them whichever thread the kernel picks,
and a server that does not stop leaves its threads' stacks in the report."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading

from reloop2_serving.process import ROOT, DevServerProcess

# SIGTERM sent to a thread other than the main one (the kernel may pick any thread that does
# not block it; gRPC and TensorFlow start dozens): Python runs the handler only in the main
# thread, and only once it runs bytecode again. A main thread asleep in `Event.wait()` never does.
_OTHER_THREAD = """
import signal, sys, threading, time
from reloop2_serving import signals

stop = signals.StopSignal()
started = threading.Event()
worker = threading.Thread(target=lambda: (started.set(), time.sleep(60)), daemon=True)
worker.start()
started.wait()
threading.Timer(0.2, signal.pthread_kill, (worker.ident, signal.SIGTERM)).start()
began = time.monotonic()
assert stop.wait() == signal.SIGTERM
print(f"stopped after {time.monotonic() - began:.2f} s", flush=True)
"""

_STUCK = """
import signal, threading, time
from reloop2_serving import signals

signals.StopSignal()
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a server that will not stop

def blocked_here():
    time.sleep(120)

threading.Thread(target=blocked_here, name="stuck-worker", daemon=True).start()
print("ready", flush=True)
time.sleep(120)
"""


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_sigterm_delivered_to_another_thread_stops_the_wait():
    proc = _python(_OTHER_THREAD)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    seconds = float(out.split("stopped after ")[1].split()[0])
    assert seconds < 5, out  # a main thread blocked in `Event.wait()` would sleep until killed


def test_a_server_that_does_not_stop_leaves_its_stacks_in_the_report():
    server = DevServerProcess.__new__(DevServerProcess)  # the helper's stop, on a stand-in
    server.proc = _python(_STUCK)
    server.lines = collections.deque(maxlen=500)
    assert server.proc.stdout.readline() == "ready\n"
    server._drain = threading.Thread(target=server._read_rest, daemon=True)
    server._drain.start()
    assert server.stop(timeout=1.0) == -9
    report = "".join(server.lines)
    assert "most recent call first" in report and "in blocked_here" in report, report
