"""Boot an image under QEMU, stream its serial console, return the app's exit status.

Standard library only, and no imports from ukl_build: this file is copied
verbatim into every app wheel as its launcher (``python -m <app>``).

The image directory holds ``manifest.json`` (written by ukl_build.artifacts)
and the image files it names.  How the app's exit status reaches the host,
read from the serial console:

- user mode: /init exiting makes the kernel panic with "Attempted to kill
  init! exitcode=0x...", which carries the wait status; the kernel
  (``CONFIG_PANIC_TIMEOUT=-1``) then reboots, and ``-no-reboot`` ends QEMU.
  This needs no kernel patch and works for any static /init.
- UKL mode: the kernel prints "ukl: exit status N" and restarts.

On microvm, ``reboot=t`` (triple fault) is the reboot method that ends QEMU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
_PANIC_INIT = re.compile(r"Attempted to kill init! exitcode=(0x[0-9a-fA-F]+)")
_UKL_EXIT = re.compile(r"ukl: exit status (\d+)")
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
KVM_PROBE_SECONDS = 3.0
# The first virtio-mmio transport of QEMU's microvm (acpi=off): 512 bytes at 0xfeb00000, IRQ 5.
MICROVM_NIC_PARAM = "virtio_mmio.device=512@0xfeb00000:5"


@dataclass
class RunOptions:
    accel: str = "tcg"
    machine: str = "microvm"
    memory: str = "256M"
    smp: int = 1
    forward: list[str] = field(default_factory=list)
    timeout: float | None = None
    image: str = "bzimage"
    qemu: str = "qemu-system-x86_64"
    extra_cmdline: str = ""
    kernel_log: bool = False
    args: list[str] | None = None  # replaces the manifest's app arguments
    qemu_args: list[str] = field(default_factory=list)  # appended to QEMU's command line


class RunError(Exception):
    pass


def load_manifest(image_dir: Path) -> dict[str, Any]:
    path = image_dir / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found (not a ukl-build image directory)") from None


def wait_status_to_exit(code: int) -> int:
    """A wait(2) status as a shell would report it."""
    if code & 0x7F == 0:
        return (code >> 8) & 0xFF
    return 128 + (code & 0x7F)


# --- accelerator ------------------------------------------------------------

def _probe_image() -> bytes:
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
        img.write_bytes(_probe_image())
        argv = [qemu, "-M", "pc", "-accel", "kvm", "-m", "16M", "-nodefaults",
                "-no-user-config", "-display", "none",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(img)]
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
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


# --- QEMU command -----------------------------------------------------------

def qemu_argv(manifest: dict[str, Any], image_dir: Path, opts: RunOptions, accel: str,
              check_files: bool = True) -> list[str]:
    images = manifest.get("images", {})
    if opts.image not in images:
        have = ", ".join(sorted(images)) or "none"
        raise RunError(f"image format {opts.image!r} is not in this build (have: {have})")
    kernel = image_dir / images[opts.image]["file"]
    if check_files and not kernel.is_file():
        raise RunError(f"{kernel}: missing")
    if check_files and shutil.which(opts.qemu) is None:
        raise RunError(f"{opts.qemu} not found (apt-get install qemu-system-x86)")
    network = bool(opts.forward or manifest.get("network"))
    if opts.machine == "microvm":
        # No ACPI, and no automatic virtio_mmio.device= on the command line: QEMU
        # would append it after "--", where it would land in the app's argv.
        machine = "microvm,x-option-roms=off,acpi=off,auto-kernel-cmdline=off"
        nic = ["-device", "virtio-net-device,netdev=n0,bus=virtio-mmio-bus.0"]
        devices = [MICROVM_NIC_PARAM] if network else []
    elif opts.machine == "q35":
        machine = "q35"
        nic = ["-device", "virtio-net-pci,netdev=n0"]
        devices = []
    else:
        raise RunError(f"unknown machine {opts.machine!r} (microvm or q35)")

    cmdline = ["console=ttyS0", "reboot=t", *devices]
    if manifest.get("cmdline"):
        cmdline.append(manifest["cmdline"])
    if opts.kernel_log:
        cmdline = [" ".join(w for w in c.split() if w != "quiet") for c in cmdline]
        cmdline.append("loglevel=7")
    if opts.extra_cmdline:
        cmdline.append(opts.extra_cmdline)
    args = opts.args if opts.args is not None else manifest.get("args", [])
    if args:
        cmdline.append("--")
        cmdline.extend(args)

    argv = [opts.qemu, "-M", machine, "-accel", accel, "-m", opts.memory,
            "-smp", str(opts.smp), "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel) if check_files else images[opts.image]["file"],
            "-append", " ".join(w for w in cmdline if w)]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if network:
        fwds = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}"
                       for h, g in (_split_forward(f) for f in opts.forward))
        argv += ["-netdev", f"user,id=n0{fwds}", *nic]
    return argv + list(opts.qemu_args)


def _split_forward(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if not m:
        raise RunError(f"--forward {spec!r}: expected HOST:GUEST")
    return int(m.group(1)), int(m.group(2))


# --- running ----------------------------------------------------------------

def run_image(image_dir: Path, opts: RunOptions, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Boot, stream the console to ``out``, return the app's exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    manifest = load_manifest(image_dir)
    accel = choose_accel(opts, err)
    argv = qemu_argv(manifest, image_dir, opts, accel)
    print(f"[ukl-build] booting {manifest.get('name', image_dir.name)} "
          f"({opts.image}, {opts.machine}, {accel})", file=err, flush=True)
    start = time.monotonic()
    interactive = sys.stdin is not None and sys.stdin.isatty() and out is sys.stdout
    restore = _exit_on_sigterm()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=None if interactive else subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    qemu_err: list[bytes] = []
    err_thread = threading.Thread(target=lambda: qemu_err.extend(proc.stderr), daemon=True)
    err_thread.start()
    timer: threading.Timer | None = None
    timed_out = threading.Event()
    if opts.timeout:
        def expire() -> None:
            timed_out.set()
            proc.kill()
        timer = threading.Timer(opts.timeout, expire)
        timer.start()

    status: int | None = None
    panic: str | None = None
    first_line: float | None = None
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if status is not None or panic is not None:
                continue  # the kernel's dying words after the app's status
            if m := _UKL_EXIT.search(line):
                status = int(m.group(1))
                continue
            if m := _PANIC_INIT.search(line):
                status = wait_status_to_exit(int(m.group(1), 16))
                continue
            if m := _PANIC.search(line):
                panic = m.group(1)
            if first_line is None and line.strip():
                first_line = time.monotonic() - start
            out.write(line + "\n")
            out.flush()
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        print("\n[ukl-build] interrupted; VM stopped", file=err)
        return 130
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # also on SIGTERM: never leave an orphaned VM behind
            proc.kill()
            proc.wait()
        restore()
    err_thread.join(timeout=2)
    elapsed = time.monotonic() - start
    if timed_out.is_set():
        print(f"[ukl-build] timeout: VM stopped after {opts.timeout:g} s", file=err, flush=True)
        return EXIT_TIMEOUT
    if status is not None:
        print(f"[ukl-build] app exited with status {status} ({elapsed:.2f} s)", file=err, flush=True)
        return status
    if panic is not None:
        print(f"[ukl-build] kernel panic: {panic}", file=err, flush=True)
        return EXIT_NO_STATUS
    tail = b"".join(qemu_err).decode(errors="replace").strip()
    print(f"[ukl-build] VM ended (QEMU status {proc.returncode}) without the app's exit status"
          + (f": {tail[-500:]}" if tail else ""), file=err, flush=True)
    return EXIT_NO_STATUS


def _exit_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into SystemExit while a VM runs, so cleanup kills QEMU."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def add_run_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    parser.add_argument("--accel", choices=["tcg", "kvm", "auto"], default=defaults.get("accel", "tcg"),
                        help="accelerator; auto probes KVM with a short timeout (default: %(default)s)")
    parser.add_argument("--machine", choices=["microvm", "q35"],
                        default=defaults.get("machine", "microvm"))
    parser.add_argument("--memory", "-m", default=defaults.get("memory", "256M"))
    parser.add_argument("--smp", type=int, default=defaults.get("smp", 1))
    parser.add_argument("--forward", "-p", action="append", metavar="HOST:GUEST",
                        help="forward a host TCP port (127.0.0.1) to a guest port")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop the VM after this many seconds (exit status 124)")
    parser.add_argument("--image", default="bzimage", help="which image format to boot")
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--cmdline", default="", help="extra kernel command line")
    parser.add_argument("--kernel-log", action="store_true", help="show the kernel's boot messages")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="append ARG to QEMU's command line (repeatable), e.g. "
                             "--qemu-arg=-icount --qemu-arg=shift=0")


def split_app_args(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``[options] -- app args``: the app's arguments replace the built-in ones.

    Split by hand: argparse cannot give a trailing ``--`` group to a positional
    once an earlier positional (the image path) has been matched.
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def options_from_args(ns: argparse.Namespace, defaults: dict[str, Any]) -> RunOptions:
    forward = ns.forward if ns.forward is not None else list(defaults.get("forward", []))
    return RunOptions(accel=ns.accel, machine=ns.machine, memory=ns.memory, smp=ns.smp,
                      forward=forward, timeout=ns.timeout, image=ns.image, qemu=ns.qemu,
                      extra_cmdline=ns.cmdline, kernel_log=ns.kernel_log,
                      args=getattr(ns, "app_args", None), qemu_args=list(ns.qemu_arg))


def launcher_main(image_dir: Path, argv: Sequence[str] | None = None) -> int:
    """Entry point of an installed app wheel: ``python -m <app> [options]``."""
    try:
        manifest = load_manifest(image_dir)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    defaults = manifest.get("run", {})
    parser = argparse.ArgumentParser(
        prog=f"python -m {manifest.get('module', 'app')}",
        description=f"Boot {manifest.get('name', 'the app')} {manifest.get('version', '')} "
        "(a ukl-build unikernel) under QEMU.")
    add_run_arguments(parser, defaults)
    parser.usage = "%(prog)s [options] [-- APP ARGS...]"
    own, app_args = split_app_args(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(own)
    ns.app_args = app_args
    try:
        return run_image(image_dir, options_from_args(ns, defaults))
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
