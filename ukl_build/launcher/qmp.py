"""QMP: QEMU's machine protocol, for starting a paused QEMU on time and opening forwards."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .options import RunError


class Qmp:
    """One QMP connection to a QEMU started with ``-qmp unix:PATH,server=on,wait=off``.

    The socket serves one client at a time and takes the next when it closes;
    use the connection as a context manager.  RunError if QEMU ends, does not
    answer within ``timeout`` or refuses a command.
    """

    def __init__(self, sock_path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            while True:
                try:
                    self._sock.connect(str(sock_path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if proc.poll() is not None:
                        raise RunError(f"QEMU ended (status {proc.returncode}) before it "
                                       "could be started") from None
                    if time.monotonic() > deadline:
                        raise RunError(f"QEMU's QMP socket did not answer in {timeout:g} s") \
                            from None
                    time.sleep(0.002)
            self._sock.settimeout(max(1.0, deadline - time.monotonic()))
            self._replies = self._sock.makefile("rb")
            if not json.loads(self._replies.readline() or b"{}").get("QMP"):
                raise RunError("QMP: no greeting from QEMU")
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as e:
            self.close()
            raise RunError(f"QMP: {e}") from None
        except RunError:
            self.close()
            raise

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command; its ``return`` value (events on the way are skipped)."""
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            for raw in self._replies:
                reply = json.loads(raw)
                if "error" in reply:
                    raise RunError(f"QMP {name}: {reply['error'].get('desc', reply)}")
                if "return" in reply:
                    return reply["return"]
        except (OSError, ValueError) as e:
            raise RunError(f"QMP {name}: {e}") from None
        raise RunError(f"QMP {name}: QEMU closed the connection")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resume_at(sock_path: Path, when_ns: int, proc: subprocess.Popen[bytes],
              timeout: float = 60.0) -> int:
    """Resume a QEMU started with -S at host time ``when_ns`` through its QMP socket.

    Returns how many ns late the resume was, at most: measured when QEMU has
    acknowledged ``cont`` (a loaded host can keep QEMU's main loop from taking
    the command for tens of milliseconds, and the guest's clock starts then).
    RunError if QEMU ends or does not answer within ``timeout``.
    """
    with Qmp(sock_path, proc, timeout) as qmp:
        wait = (when_ns - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        qmp.execute("cont")
        return max(0, time.time_ns() - when_ns)
