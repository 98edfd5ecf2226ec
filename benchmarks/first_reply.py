"""QEMU start -> the first reply, for a client that connects at once (issue 29).

The Redis example boots under the launcher while a client connects to its
forwarded port from the first moment, retrying every 10 ms while it is
refused, and sends PING: the time from the launcher's start (QEMU's start is
a few ms later) to +PONG, beside the time Redis says "Ready to accept
connections" on the console.  Two variants, alternated: forwards opened when
the guest listens (the default, kernel patch 0020) and when QEMU starts
(``--forward-at-start``, as before: slirp accepts the client at once and the
SYN it sends into the booting guest is lost until TCP's retransmission).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

from benchmarks.harness import Context, alternate, free_port, median, stop_vms
from ukl_build.launcher.run import run_image

READY = "Ready to accept connections"


class _Console(io.StringIO):
    """The console, with the moment the server said it was ready."""

    def __init__(self, start: float):
        super().__init__()
        self.start = start
        self.ready: float | None = None

    def write(self, s: str) -> int:
        if self.ready is None and READY in s:
            self.ready = time.monotonic() - self.start
        return super().write(s)


def _first_pong(port: int, start: float, deadline: float) -> float | None:
    """Seconds from ``start`` to the first +PONG of a client that connects at once."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return time.monotonic() - start
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
            pass
        time.sleep(0.01)
    return None


def boot_once(ctx: Context, mode: str, at_start: bool) -> dict[str, float]:
    """One boot of the Redis example: seconds to the first reply and to "ready"."""
    result = ctx.build("redis", mode, baseline=False)
    port = free_port()
    opts = ctx.options(forward=[f"{port}:6379"], forward_at_start=at_start, timeout=60)
    start = time.monotonic()
    console = _Console(start)
    vm = threading.Thread(target=run_image, args=(result.images.directory, opts, console,
                                                  io.StringIO()), daemon=True)
    vm.start()
    first = _first_pong(port, start, start + 50)
    ready = console.ready
    stop_vms(port)
    vm.join(timeout=30)
    return {"first_reply_s": round(first, 3) if first is not None else float("nan"),
            "ready_s": round(ready, 3) if ready is not None else float("nan")}


def first_reply(ctx: Context) -> None:
    """Median seconds to the first reply and to "ready", per mode and forward variant."""
    res: dict[str, Any] = {}
    for mode in ("ukl", "user"):
        samples = alternate({
            "at-listen": lambda m=mode: boot_once(ctx, m, at_start=False),  # type: ignore[misc]
            "at-start": lambda m=mode: boot_once(ctx, m, at_start=True),  # type: ignore[misc]
        }, ctx.rounds)
        for variant, runs in samples.items():
            res[f"{mode}.{variant}"] = {
                key: median(r[key] for r in runs) for key in ("first_reply_s", "ready_s")}
            res[f"{mode}.{variant}"]["runs"] = [r["first_reply_s"] for r in runs]
    ctx.note("python -m ukl_build run <image> --forward PORT:6379 [--forward-at-start] "
             "while a client connects at once (benchmarks/first_reply.py)")
    ctx.results["first_reply"] = res
