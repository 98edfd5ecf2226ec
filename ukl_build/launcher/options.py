"""What a boot is asked for (RunOptions), and how the launcher fails or ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The launcher's exit status when the app's own is not known.
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
FIRMWARE_FORMATS = ("efi", "disk")  # booted through UEFI firmware: the kernel carries its command line

Machine = Literal["microvm", "q35"]
Accel = Literal["tcg", "kvm", "auto"]


@dataclass
class RunOptions:
    accel: Accel = "tcg"
    machine: Machine = "microvm"
    memory: str = "256M"
    smp: int = 1
    forward: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # NAME=PATH: the file backing each
    # Open the forwards when QEMU starts, not when the guest listens (for comparison:
    # a client connecting during the boot then waits for slirp's retransmission).
    forward_at_start: bool = False
    timeout: float | None = None
    image: str = "bzimage"
    qemu: str = "qemu-system-x86_64"
    extra_cmdline: str = ""
    kernel_log: bool = False
    args: list[str] | None = None  # replaces the manifest's app arguments
    qemu_args: list[str] = field(default_factory=list)  # appended to QEMU's command line
    # efi/disk formats: the UEFI variable store to start from (copied per boot; default:
    # OVMF's empty one) and whether to use the Secure Boot firmware build.
    firmware_vars: str | None = None
    secure_boot: bool = False


class RunError(Exception):
    pass
