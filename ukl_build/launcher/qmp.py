"""QMP: resume a QEMU started paused at a given host time."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from .options import RunError


def resume_at(sock_path: Path, when_ns: int, proc: subprocess.Popen[bytes],
              timeout: float = 60.0) -> int:
    """Resume a QEMU started with -S at host time ``when_ns`` through its QMP socket.

    Returns how many ns late the resume was, at most: measured when QEMU has
    acknowledged ``cont`` (a loaded host can keep QEMU's main loop from taking
    the command for tens of milliseconds, and the guest's clock starts then).
    RunError if QEMU ends or does not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:
            try:
                sock.connect(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None:
                    raise RunError(f"QEMU ended (status {proc.returncode}) before it "
                                   "could be started") from None
                if time.monotonic() > deadline:
                    raise RunError(f"QEMU's QMP socket did not answer in {timeout:g} s") from None
                time.sleep(0.002)
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        replies = sock.makefile("rb")

        def command(name: str) -> None:
            sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
            for raw in replies:
                reply = json.loads(raw)
                if "error" in reply:
                    raise RunError(f"QMP {name}: {reply['error'].get('desc', reply)}")
                if "return" in reply:
                    return
            raise RunError(f"QMP {name}: QEMU closed the connection")

        try:
            if not json.loads(replies.readline() or b"{}").get("QMP"):
                raise RunError("QMP: no greeting from QEMU")
            command("qmp_capabilities")
            wait = (when_ns - time.time_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            command("cont")
            late = max(0, time.time_ns() - when_ns)
        except (OSError, ValueError) as e:
            raise RunError(f"QMP: {e}") from None
    return late
