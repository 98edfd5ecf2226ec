"""The accelerator: TCG, or KVM where a probe shows it usable and fast."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .options import RunOptions
from .process import die_with_parent

KVM_PROBE_SECONDS = 3.0


def probe_image() -> bytes:
    """A multiboot kernel that touches 4 MiB, spins 32M times, then writes 5 to isa-debug-exit."""
    magic, flags, base = 0x1BADB002, 0x00010000, 0x100000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         base, base, 0, 0, base + 32)
    code = bytes.fromhex("BF00002000B90000100031C0F3ABB90000000249" "75FDB005E6F4F4EBFD")
    return header + code


def probe_kvm(qemu: str, timeout: float = KVM_PROBE_SECONDS) -> tuple[bool, str]:
    """Whether KVM is usable *and fast*: a broken or nested-slow KVM is not picked."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    with tempfile.TemporaryDirectory(prefix="ukl-kvm-probe-") as tmp:
        img = Path(tmp) / "probe.bin"
        img.write_bytes(probe_image())
        argv = [qemu, "-M", "pc", "-accel", "kvm", "-m", "16M", "-nodefaults",
                "-no-user-config", "-display", "none",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(img)]
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL,
                                  preexec_fn=die_with_parent(signal.SIGKILL))
        except subprocess.TimeoutExpired:
            return False, f"a KVM probe VM did not finish in {timeout:.0f} s (nested or broken KVM)"
        except OSError as e:
            return False, str(e)
        if proc.returncode != 11:
            return False, f"KVM probe failed: {proc.stderr.decode(errors='replace').strip()[:200]}"
        return True, f"KVM probe finished in {time.monotonic() - start:.2f} s"


def choose_accel(opts: RunOptions, err: TextIO) -> str:
    if opts.accel != "auto":
        return opts.accel
    ok, why = probe_kvm(opts.qemu)
    print(f"[ukl-build] accel auto: {'kvm' if ok else 'tcg'} ({why})", file=err, flush=True)
    return "kvm" if ok else "tcg"
