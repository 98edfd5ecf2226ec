"""The serial console as it streams past: the app's output, its exit status, panics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TextIO

from .options import EXIT_NO_STATUS

_PANIC_INIT = re.compile(r"Attempted to kill init! exitcode=(0x[0-9a-fA-F]+)")
_UKL_EXIT = re.compile(r"ukl: exit status (\d+)")
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
_FIRMWARE_REFUSED = re.compile(r"BdsDxe: failed to load .*: (Access Denied|Security Violation)"
                               r"|QemuLoadKernelImage.*(Access Denied|Security Violation)")


_CONTROL = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")


def wait_status_to_exit(code: int) -> int:
    """A wait(2) status as a shell would report it."""
    if code & 0x7F == 0:
        return (code >> 8) & 0xFF
    return 128 + (code & 0x7F)


@dataclass
class Console:
    """The serial console as it streams past: copied to ``out`` until the app's exit
    status (or a panic) appears; the kernel's dying words after that are dropped."""

    out: TextIO
    status: int | None = None
    panic: str | None = None
    refused: str | None = None  # the firmware would not start the image

    def feed(self, raw: bytes) -> None:
        # UEFI firmware clears the screen with terminal control sequences: not the app's.
        line = _CONTROL.sub("", raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        if self.status is not None or self.panic is not None or self.refused is not None:
            return
        if _FIRMWARE_REFUSED.search(line):
            self.refused = line.strip()
        if m := _UKL_EXIT.search(line):
            self.status = int(m.group(1))
            return
        if m := _PANIC_INIT.search(line):
            self.status = wait_status_to_exit(int(m.group(1), 16))
            return
        if m := _PANIC.search(line):
            self.panic = m.group(1)
        self.out.write(line + "\n")
        self.out.flush()


def outcome(console: Console, elapsed: float, qemu_status: int, qemu_err: list[bytes],
             err: TextIO) -> int:
    """Say how the VM ended; the launcher's exit status."""
    if console.status is not None:
        print(f"[ukl-build] app exited with status {console.status} ({elapsed:.2f} s)",
              file=err, flush=True)
        return console.status
    if console.panic is not None:
        print(f"[ukl-build] kernel panic: {console.panic}", file=err, flush=True)
        return EXIT_NO_STATUS
    if console.refused is not None:
        print(f"[ukl-build] the firmware refused to start the image ({console.refused}): "
              "with Secure Boot on, it must be signed by a key in the db", file=err, flush=True)
        return EXIT_NO_STATUS
    tail = b"".join(qemu_err).decode(errors="replace").strip()
    print(f"[ukl-build] VM ended (QEMU status {qemu_status}) without the app's exit status"
          + (f": {tail[-500:]}" if tail else ""), file=err, flush=True)
    return EXIT_NO_STATUS
