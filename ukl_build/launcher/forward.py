"""Forwarded ports, opened when the guest listens on them.

QEMU's user network opens a ``hostfwd`` host port as soon as QEMU starts and
accepts every client at once; a connection made while the guest boots sends
the guest a SYN it cannot see yet, and slirp sends it again only after its
retransmission timeout (6 s measured: docs/performance.md).  Kernels with
our patch 0020 say on an I/O port (``listen_notify=``, QEMU's isa-debugcon)
whenever a TCP socket starts to listen; the launcher then opens the forwards
to that port over QMP (``hostfwd_add``).  Until then a client is refused at
once, as by any server that is not listening yet, and can retry.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .options import RunError
from .qmp import Qmp

LISTEN_NOTIFY_PORT = 0xE9  # the I/O port of isa-debugcon's customary address
NETDEV_ID = "n0"  # the user-network backend's id on QEMU's command line
_NOTICE = re.compile(rb"tcp (\d{1,5})")


def check_host_ports(forwards: Sequence[tuple[int, int]]) -> None:
    """RunError if a forward's host port is taken now (QEMU would only find out later,
    when the guest listens)."""
    for host, guest in forwards:
        with socket.socket() as probe:
            # As slirp binds it: SO_REUSEADDR, so a port in TIME_WAIT is not "taken".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", host))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                raise RunError(f"--forward {host}:{guest}: 127.0.0.1:{host} is in use") from None


class ListenForwarder:
    """Receives the guest's listen notices on a Unix socket (QEMU's chardev connects to
    it at start-up) and opens each forward whose guest port starts listening.

    ``connect`` once QEMU runs; then ``poll`` does the work without waiting for
    notices: call it whenever QEMU's console has output, before passing that output
    on, so nothing the guest prints after it listens reaches anyone before the
    forward is open.
    """

    def __init__(self, notify: Path, qmp: Path, forwards: Sequence[tuple[int, int]],
                 err: TextIO):
        self._qmp_path = qmp
        self._pending = list(forwards)
        self._err = err
        self._buf = b""
        self._conn: socket.socket | None = None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(notify))
        self.server.listen(1)

    def fileno(self) -> int:
        """The notices' socket, once QEMU has connected (for selectors)."""
        assert self._conn is not None
        return self._conn.fileno()

    def connect(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
        """Wait for QEMU to connect its chardev, which it does while it starts; False
        if QEMU ended first."""
        self.server.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            try:
                self._conn, _ = self.server.accept()
            except socket.timeout:  # noqa: UP041  (the launcher runs on 3.9: not TimeoutError there)
                if time.monotonic() > deadline:
                    raise RunError(f"QEMU did not connect to the listen notices' socket "
                                   f"in {timeout:g} s") from None
                continue
            self._conn.setblocking(False)
            return True
        return False

    def poll(self, proc: subprocess.Popen[bytes]) -> bool:
        """Take the notices that have arrived; open the forwards they make ready.
        False once QEMU has closed the socket; RunError if QEMU cannot open a forward."""
        assert self._conn is not None
        open_ = True
        while True:
            try:
                chunk = self._conn.recv(4096)
            except BlockingIOError:
                break
            if not chunk:
                open_ = False
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        ports = {int(m.group(1)) for line in lines if (m := _NOTICE.fullmatch(line))}
        ready = [(h, g) for h, g in self._pending if g in ports]
        if ready:
            self._open(ready, proc)
        return open_

    def _open(self, ready: list[tuple[int, int]], proc: subprocess.Popen[bytes]) -> None:
        with Qmp(self._qmp_path, proc, timeout=30) as qmp:
            for host, guest in ready:
                rule = f"tcp:127.0.0.1:{host}-:{guest}"
                said = qmp.execute("human-monitor-command",
                                   {"command-line": f"hostfwd_add {NETDEV_ID} {rule}"})
                if said:
                    raise RunError(f"--forward {host}:{guest}: QEMU said: {str(said).strip()}")
                self._pending.remove((host, guest))
                print(f"[ukl-build] guest port {guest} is listening: forwarded from "
                      f"127.0.0.1:{host}", file=self._err, flush=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.server.close()
