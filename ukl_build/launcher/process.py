"""Child processes that die with the launcher, and signals that end it cleanly."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: deliver ``sig`` to the child when its parent dies.

    Checks the parent after arming, so a parent that died between fork and
    prctl is not missed.  The "parent" is the thread that forked: call from
    the thread that also waits for the child.
    """
    parent = os.getpid()

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return arm


def raise_on_termination(exc: Callable[[int], BaseException]) -> Callable[[], None]:
    """Make SIGTERM and SIGHUP raise ``exc(signum)`` in the main thread (as SIGINT
    raises KeyboardInterrupt), so the cleanup an exception runs runs for them too;
    returns what puts the old handlers back.  Elsewhere (a thread): nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise exc(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def kill_after(proc: subprocess.Popen[bytes],
                timeout: float | None) -> tuple[threading.Timer | None, threading.Event]:
    """Kill ``proc`` after ``timeout`` seconds (0 or None: never); the event tells that it did."""
    timed_out = threading.Event()
    if not timeout:
        return None, timed_out

    def expire() -> None:
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, expire)
    timer.start()
    return timer, timed_out
