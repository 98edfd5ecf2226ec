"""Child processes that never outlive their owner.

Standard library only and no imports from ukl_build: ukl-build runs this
file as a script (``python supervise.py PARENT_PID -- COMMAND...``), so it
needs no import path.  For a process that forks nothing (QEMU),
``launcher.process.die_with_parent`` is enough; this is for commands that fork trees
of their own (make -> sh -> gcc).  The supervisor dies-with-parent
  on SIGTERM, runs COMMAND in a process group of its own and adopts every
  orphan below it (``PR_SET_CHILD_SUBREAPER``).  On SIGTERM/SIGINT/SIGHUP it
  kills the whole group and returns only when every descendant is reaped.
  File descriptors passed to it (a cache lock) therefore stay held until
  nothing that could write under that lock is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> None:  # launcher/process.py has its own: each stands alone
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def supervised(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` under this supervisor."""
    return [sys.executable, os.path.abspath(__file__), str(os.getpid()), "--", *argv]


def _reap_all() -> None:
    """Wait for every child and adopted orphan until none is left."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue


def main(args: Sequence[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: supervise.py PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    owner = int(args[0])
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != owner:
        return 128 + signal.SIGTERM
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)

    command = list(args[2:])
    stopping: list[int] = []
    child_pid = 0

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        if child_pid:
            # The leader is our unreaped child, so its group id is still ours.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child_pid, signal.SIGKILL)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            os.setpgid(0, 0)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the lock stays with us
            os.execvp(command[0], command)
        except OSError as e:
            print(f"{command[0]}: {e.strerror}", file=sys.stderr, flush=True)
            os._exit(127)
    child_pid = pid
    # Also from this side, so there is no window without the group; the child
    # may have done it (and exec'd) already.
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpgid(pid, pid)
    if stopping:  # a signal came before child_pid was known
        stop(stopping[0], None)

    # Wait for the leader without reaping it: while it is a zombie its group id
    # cannot be reused, so killing the group can only hit processes of ours.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # strays the command left behind
    _, status = os.waitpid(pid, 0)
    _reap_all()
    if stopping:
        return 128 + stopping[0]
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
