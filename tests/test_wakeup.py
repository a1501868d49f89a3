"""The event a signal handler may set: Event's behaviour, set from threads and from signal handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from jobcompd.wakeup import Wakeup


def test_it_behaves_as_an_event() -> None:
    wakeup = Wakeup()
    assert not wakeup.is_set() and not wakeup.wait(0.01)
    wakeup.set()
    wakeup.set()
    assert wakeup.is_set() and wakeup.wait(0) and wakeup.wait()  # set stays set
    wakeup.clear()
    started = time.monotonic()
    assert not wakeup.wait(0.05) and time.monotonic() - started >= 0.05  # no token left over
    threading.Timer(0.05, wakeup.set).start()
    assert wakeup.wait(30)


def test_a_signal_handler_sets_it_while_the_main_thread_waits_on_it() -> None:
    # Thousands of signals land while the main thread waits on, and clears, the very event their
    # handler sets: each wait ends, and the process ends (a handler that waited for a lock its
    # own thread holds would hang it).
    code = """
import os, signal, threading, time
from jobcompd.wakeup import Wakeup
wakeup = Wakeup()
signal.signal(signal.SIGUSR1, lambda *_: wakeup.set())
end = time.monotonic() + 2
def pester():
    while time.monotonic() < end:
        os.kill(os.getpid(), signal.SIGUSR1)
threading.Thread(target=pester, daemon=True).start()
woken = 0
while time.monotonic() < end:
    woken += wakeup.wait(0.01)
    wakeup.clear()
print(woken)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout) > 10


def test_the_daemon_stops_on_the_first_sigterm_however_busy_its_main_thread_is() -> None:
    # jobcompd.daemon's handler: stop() sets a Wakeup and wakes the reader (another Wakeup).
    code = """
import signal, threading, time
from jobcompd.wakeup import Wakeup
stop, wake = Wakeup(), Wakeup()
signal.signal(signal.SIGTERM, lambda *_: (stop.set(), wake.set()))
print("ready", flush=True)
while not stop.is_set():
    wake.wait(0.001)
    wake.clear()
print("stopped", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout.read() == "stopped\n"


def test_its_waiter_serves_the_descriptors_it_watches_in_its_own_thread() -> None:
    # The reader waits for inotify's descriptor beside its wake-up (no thread hands events over): a
    # descriptor readable while it waits, or when it asks without waiting, is served by the waiting
    # thread, which may set the wake-up or wait on.
    wakeup = Wakeup()
    r, w = os.pipe()
    served: list[tuple[threading.Thread, bytes]] = []

    def ready() -> None:
        data = os.read(r, 100)
        served.append((threading.current_thread(), data))
        if b"x" in data:
            wakeup.set_in_wait()  # (the waiting thread itself: nothing written to wake it)

    wakeup.watch(r, ready)
    try:
        os.write(w, b"a")
        started = time.monotonic()
        assert not wakeup.wait(0.05) and time.monotonic() - started >= 0.05  # served, not set
        assert served == [(threading.current_thread(), b"a")]
        os.write(w, b"x")
        assert wakeup.wait(0) and served[-1] == (threading.current_thread(), b"x")  # no wait
        wakeup.clear()
        threading.Timer(0.05, os.write, (w, b"x")).start()
        assert wakeup.wait(30) and served[-1] == (threading.current_thread(), b"x")
        wakeup.clear()
        wakeup.unwatch(r)
        os.write(w, b"x")
        assert not wakeup.wait(0.05) and len(served) == 3  # no longer watched
        wakeup.set()  # from any thread, as before
        assert wakeup.wait(0)
        wakeup.clear()
        assert not wakeup.wait(0.05)  # what set() wrote was read by clear()
    finally:
        os.close(r)
        os.close(w)
