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

The efi and disk formats boot through UEFI firmware (Debian's OVMF on q35):
their kernel carries its whole command line (``cmdline_builtin`` in the
manifest), so nothing is appended at boot.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict, TypeVar

EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
_PANIC_INIT = re.compile(r"Attempted to kill init! exitcode=(0x[0-9a-fA-F]+)")
_UKL_EXIT = re.compile(r"ukl: exit status (\d+)")
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
KVM_PROBE_SECONDS = 3.0
_FIRMWARE_REFUSED = re.compile(r"BdsDxe: failed to load .*: (Access Denied|Security Violation)"
                               r"|QemuLoadKernelImage.*(Access Denied|Security Violation)")
_CONTROL = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")
# Debian's ovmf package: UEFI firmware for q35 (code read-only, variables per boot).
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_CODE_SECURE_BOOT = "OVMF_CODE_4M.secboot.fd"  # needs SMM: Secure Boot variables stay locked
OVMF_VARS = "OVMF_VARS_4M.fd"  # empty variable store: Secure Boot off
FIRMWARE_FORMATS = ("efi", "disk")  # booted through UEFI firmware: the kernel carries its command line
# The first virtio-mmio transport of QEMU's microvm (acpi=off): 512 bytes at 0xfeb00000, IRQ 5.
MICROVM_NIC_PARAM = "virtio_mmio.device=512@0xfeb00000:5"


Machine = Literal["microvm", "q35"]
Accel = Literal["tcg", "kvm", "auto"]


@dataclass
class RunOptions:
    accel: Accel = "tcg"
    machine: Machine = "microvm"
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
    # efi/disk formats: the UEFI variable store to start from (copied per boot; default:
    # OVMF's empty one) and whether to use the Secure Boot firmware build.
    firmware_vars: str | None = None
    secure_boot: bool = False


class RunError(Exception):
    pass


# manifest.json, schema 1: written by ukl_build.artifacts, read here (and by the launcher
# copy of this file in every wheel, which is why the shape is defined here: stdlib only).
MANIFEST_SCHEMA = 1


class ImageFile(TypedDict):
    file: str  # in the image directory
    sha256: str
    size: int


class KernelConfigFile(TypedDict):
    file: str
    sha256: str  # the resolved .config's key


class KernelRecord(TypedDict):
    release: str  # e.g. 6.1.192
    source: dict[str, Any]  # where the tree came from, with its digest
    patches: list[dict[str, str]]  # name, sha256, in order
    recipes: list[str]
    config: KernelConfigFile


class _AppRecord(TypedDict):
    libc: str
    compiler: str
    sha256: str
    shortcuts: bool


class AppRecord(_AppRecord, total=False):
    binutils: str  # `ld --version`: the linker of the app (and of vmlinux)
    files: list[dict[str, str]]  # sources = [...] builds: each file (path, sha256)
    source: dict[str, Any]  # a fetched app source tree, with its digest
    libc_source: dict[str, Any]  # musl: version and source
    deps: list[dict[str, Any]]  # libraries built from source and linked in


class _RunDefaults(TypedDict):
    machine: Machine
    memory: str
    smp: int
    accel: Accel
    forward: list[str]


class RunDefaults(_RunDefaults, total=False):
    """How the image boots unless told otherwise: RunOptions' defaults, or the project's."""
    image: str  # the format booted by default: the first one built


class _Manifest(TypedDict):
    schema: int
    name: str
    version: str
    module: str  # the launcher's Python module
    mode: str  # "ukl" or "user"
    arch: str
    ukl_build: str  # the version that built it
    source_date_epoch: int
    kernel: KernelRecord
    app: AppRecord
    cmdline: str
    args: list[str]
    init_arg_limit: int
    network: bool
    images: dict[str, ImageFile]  # by format: bzimage, pvh
    run: RunDefaults


class Manifest(_Manifest, total=False):
    qemu: dict[str, str]  # by format: the QEMU command line, for people
    cmdline_builtin: str  # efi/disk builds: the whole command line, built into the kernel
    signed: bool  # efi/disk builds: the EFI image is signed for Secure Boot


def load_manifest(image_dir: Path) -> Manifest:
    path = image_dir / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found (not a ukl-build image directory)") from None
    except ValueError as e:
        raise RunError(f"{path}: not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise RunError(f"{path}: not a ukl-build manifest of schema {MANIFEST_SCHEMA}")
    missing = [k for k in _Manifest.__annotations__ if k not in data]
    if missing:
        raise RunError(f"{path}: missing {', '.join(missing)}")
    manifest: Manifest = data  # type: ignore[assignment]  # checked above, key by key
    return manifest


def wait_status_to_exit(code: int) -> int:
    """A wait(2) status as a shell would report it."""
    if code & 0x7F == 0:
        return (code >> 8) & 0xFF
    return 128 + (code & 0x7F)


# --- child processes --------------------------------------------------------

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


# --- QEMU command -----------------------------------------------------------

# The kernel's command line as init sees it (lib/cmdline.c next_arg(),
# init/main.c repair_env_string() and set_init_arg()).  x86's
# COMMAND_LINE_SIZE is 2048 bytes with the NUL; the kernel cuts longer ones.
COMMAND_LINE_MAX = 2047
DEFAULT_INIT_ARG_LIMIT = 32  # CONFIG_INIT_ENV_ARG_LIMIT: app arguments the kernel passes on
# The kernel's isspace(): lib/ctype.c counts 0xa0 (Latin-1 NBSP) as space too.
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")


def _cstr(buf: bytearray, start: int) -> bytes:
    return bytes(buf[start:buf.index(0, start)])


def _next_arg(line: bytes, pos: int) -> tuple[bytes, bool, int]:
    """One word at ``pos``: (what init gets, whether it had a value, next position)."""
    quoted = line[pos:pos + 1] == b'"'
    if quoted:
        pos += 1
    in_quote, equals, i = quoted, 0, pos
    while i < len(line):
        c = line[i]
        if c in _KERNEL_SPACE and not in_quote:
            break
        if equals == 0 and c == ord("="):
            equals = i - pos
        if c == ord('"'):
            in_quote = not in_quote
        i += 1
    n = i - pos
    buf = bytearray(line[pos:i]) + b"\0"
    val = None
    if equals:
        buf[equals] = 0
        val = equals + 1
        if buf[val] == ord('"'):
            val += 1
            if buf[n - 1] == ord('"'):
                buf[n - 1] = 0
    if quoted and n > 0 and buf[n - 1] == ord('"'):
        buf[n - 1] = 0
    word = _cstr(buf, 0)
    if val is not None:  # repair_env_string(): param=val again, without the value's quote
        word = word + b"=" + _cstr(buf, val)
    nxt = i + 1 if i < len(line) else i
    while nxt < len(line) and line[nxt] in _KERNEL_SPACE:
        nxt += 1
    return word, val is not None, nxt


def kernel_init_args(tail: bytes) -> list[bytes]:
    """What the kernel makes of the command line after ``--``: init's argv[1:]."""
    words: list[bytes] = []
    pos = 0
    while pos < len(tail) and tail[pos] in _KERNEL_SPACE:
        pos += 1
    while pos < len(tail):
        word, has_value, pos = _next_arg(tail, pos)
        if not has_value and word == b"--":
            break  # parse_args() stops at a second "--" too
        words.append(word)
    return words


def quote_app_args(args: Sequence[str]) -> str:
    """App arguments as a kernel command line tail that gives back exactly ``args``.

    Quotes what needs quoting, then checks the whole line against the model
    of the kernel's parser above; ValueError names the first argument that
    no quoting can carry.
    """
    raw = [a.encode("utf-8", "surrogateescape") for a in args]
    words = [b'"' + r + b'"' if not r or _KERNEL_SPACE & set(r) else r for r in raw]
    line = b" ".join(words)
    if kernel_init_args(line) != raw:
        i = next(i for i in range(len(raw))
                 if kernel_init_args(b" ".join(words[:i + 1])) != raw[:i + 1])
        if i > 0 and raw[i - 1].count(b'"') % 2:
            i -= 1  # an odd quote in the one before swallowed this one
        arg = args[i]
        why = ("it is '--', where the kernel stops passing arguments" if arg == "--" else
               "it holds a NUL byte" if "\0" in arg else
               'the kernel has no escape for \'"\': a quote at its start, after "=", next to '
               "a space, or an odd number of them (which swallows what follows) is mangled")
        raise ValueError(f"argument {i + 1} {arg!r} cannot be passed on a kernel command line: "
                         f"{why}")
    return line.decode("utf-8", "surrogateescape")


def check_app_args(args: Sequence[str], limit: int = DEFAULT_INIT_ARG_LIMIT) -> None:
    """ValueError unless the kernel passes ``args`` to the app exactly."""
    quote_app_args(args)
    if len(args) > limit:
        raise ValueError(f"{len(args)} arguments, but the kernel passes at most {limit} to init "
                         f"(CONFIG_INIT_ENV_ARG_LIMIT={limit}); more makes it panic")


# Under TCG every vCPU's TSC is QEMU's one clock (the host's TSC since the VM
# started), so the TSCs are synchronized and stable, but the kernel's
# synchronization test between emulated CPUs sees warps and marks the TSC
# unstable: the clock then falls back to jiffies (4 ms steps, sleeps rounded up
# to ticks).  tsc=reliable skips that test and the watchdog.
TCG_CLOCK_PARAM = "tsc=reliable"
# The wall clock: the CMOS clock counts whole seconds from a random phase, so a
# guest booted from it is up to 1 s behind.  Under TCG the guest's TSC starts
# at 0 when QEMU starts the guest, so QEMU is started paused (-S), the kernel
# is told the host time at which it will be resumed (hostclock=, kernel patch
# "x86/rtc: take the wall clock at boot from the host") and QMP resumes it then.
# QEMU answers QMP 20-100 ms after it starts; the lead is what a boot costs.
HOST_CLOCK_LEAD_NS = 150_000_000
HOST_CLOCK_PLACEHOLDER = 10**18  # as long as any hostclock= value until 2286


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz, which is the guest's under TCG, or None.

    The kernel calibrates the TSC against the PIT at boot; on a loaded host the
    emulated vCPU is descheduled mid-measurement, calibration fails ("Fast TSC
    calibration failed", "Unable to calibrate against PIT"), the TSC is marked
    unstable and the guest lives on jiffies (4-24 ms steps).  Handed the
    frequency (tsc_early_khz=), it does not calibrate.  x86 Linux derives each
    CPU's BogoMIPS from the TSC frequency (loops_per_jiffy = tsc_khz * 1000 /
    HZ), so bogomips * 500 is tsc_khz (to 5 kHz); trusted only for a TSC that
    runs at one rate in every state (constant_tsc, nonstop_tsc).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    bogomips = re.search(r"^bogomips\s*:\s*([0-9.]+)$", cpuinfo, re.M)
    if flags is None or bogomips is None or \
            not {"tsc", "constant_tsc", "nonstop_tsc"} <= set(flags.group(1).split()):
        return None
    khz = round(float(bogomips.group(1)) * 500)
    return khz if khz > 0 else None


def kernel_cmdline(image_cmdline: str, image_args: Sequence[str], opts: RunOptions,
                   network: bool, accel: str = "tcg", host_clock_ns: int | None = None,
                   init_arg_limit: int = DEFAULT_INIT_ARG_LIMIT,
                   tsc_khz: int | None = None) -> str:
    """The kernel command line of a boot: ours, the image's, then ``--`` and the app's argv.

    ``host_clock_ns``: the host's wall clock when QEMU will start the guest
    (see HOST_CLOCK_LEAD_NS).  RunError if the kernel would not hand the app
    its arguments exactly.
    """
    cmdline = ["console=ttyS0", "reboot=t"]
    if accel == "tcg":
        cmdline.append(TCG_CLOCK_PARAM)
        if tsc_khz is not None:
            cmdline.append(f"tsc_early_khz={tsc_khz}")
    if host_clock_ns is not None:
        cmdline.append(f"hostclock={host_clock_ns}")
    if network and opts.machine == "microvm":
        cmdline.append(MICROVM_NIC_PARAM)
    if image_cmdline:
        cmdline.append(image_cmdline)
    if opts.kernel_log:
        cmdline = [" ".join(w for w in c.split() if w != "quiet") for c in cmdline]
        cmdline.append("loglevel=7")
    if opts.extra_cmdline:
        cmdline.append(opts.extra_cmdline)
    args = opts.args if opts.args is not None else list(image_args)
    try:
        check_app_args(args, init_arg_limit)
    except ValueError as e:
        raise RunError(f"app arguments: {e}") from None
    if args:
        cmdline += ["--", quote_app_args(args)]
    append = " ".join(w for w in cmdline if w)
    size = len(append.encode("utf-8", "surrogateescape"))
    if size > COMMAND_LINE_MAX:
        raise RunError(f"kernel command line is {size} bytes; the kernel keeps only "
                       f"{COMMAND_LINE_MAX} and would drop the rest silently (cmdline, args)")
    return append


def builtin_cmdline(image_cmdline: str, image_args: Sequence[str],
                    init_arg_limit: int = DEFAULT_INIT_ARG_LIMIT) -> str:
    """The command line built into an efi/disk kernel: what firmware boots give it.

    Only what holds on any machine: the serial console, the reboot method
    that ends a VM, the image's own parameters and the app's arguments.
    """
    return kernel_cmdline(image_cmdline, image_args, RunOptions(machine="q35"), network=False,
                          accel="", init_arg_limit=init_arg_limit)


def _check_builtin(manifest: Manifest, opts: RunOptions) -> None:
    """RunError for run options an image with a built-in command line cannot honour."""
    if opts.args is not None or opts.extra_cmdline or opts.kernel_log:
        raise RunError("this image has its command line built in (an efi/disk build): "
                       "the app's arguments, --cmdline and --kernel-log are fixed at build "
                       f"time ({manifest['cmdline_builtin']!r}); change cmdline or args and "
                       "rebuild")
    if opts.machine != "q35":
        raise RunError("this image has its command line built in (an efi/disk build), "
                       "made for q35: boot it with --machine q35")


@dataclass(frozen=True)
class FirmwareFiles:
    """What one firmware boot writes or assembles: its own files, in a temporary directory."""

    vars: Path  # a copy of the UEFI variable store (the firmware writes to it)
    esp: Path | None  # efi format: a directory holding EFI/BOOT/BOOTX64.EFI


def _firmware_args(opts: RunOptions, kernel: Path, files: FirmwareFiles | None,
                   check_files: bool) -> list[str]:
    """OVMF as pflash (code read-only, a per-boot copy of the variables) and the image
    on a drive, which the firmware loads and (with Secure Boot) checks like any other."""
    code = OVMF_DIR / (OVMF_CODE_SECURE_BOOT if opts.secure_boot else OVMF_CODE)
    if check_files and not code.is_file():
        raise RunError(f"{code}: missing (apt-get install ovmf): the {opts.image} format "
                       "boots through UEFI firmware")
    if check_files and opts.secure_boot and opts.firmware_vars is None:
        raise RunError("--secure-boot needs --firmware-vars: a variable store with your "
                       "certificate enrolled (see docs/formats.md)")
    args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={files.vars if files else 'vars.fd'}"]
    if opts.secure_boot:
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    # efi: not -kernel, which OVMF falls back to starting without its Secure Boot check,
    # but a FAT drive that QEMU makes of a directory holding EFI/BOOT/BOOTX64.EFI.
    esp = files.esp if files and files.esp else "esp"
    drive = f"fat:{esp}" if opts.image == "efi" else str(kernel)
    return [*args, "-drive", f"if=none,id=disk0,format=raw,readonly=on,file={drive}",
            "-device", "virtio-blk-pci,drive=disk0"]


def _machine(opts: RunOptions) -> tuple[str, list[str]]:
    """QEMU's -M value and the NIC device for ``opts.machine``."""
    if opts.machine == "microvm":
        # No ACPI, and no automatic virtio_mmio.device= on the command line: QEMU
        # would append it after "--", where it would land in the app's argv.
        return ("microvm,x-option-roms=off,acpi=off,auto-kernel-cmdline=off",
                ["-device", "virtio-net-device,netdev=n0,bus=virtio-mmio-bus.0"])
    if opts.machine == "q35":
        # Secure Boot keeps its variables behind SMM, or the OS could rewrite them.
        return "q35,smm=on" if opts.secure_boot else "q35", ["-device", "virtio-net-pci,netdev=n0"]
    raise RunError(f"unknown machine {opts.machine!r} (microvm or q35)")


def _image_path(manifest: Manifest, image_dir: Path, opts: RunOptions,
                check_files: bool) -> Path:
    """The file of the format to boot (just its name when ``check_files`` is off)."""
    images = manifest["images"]
    if opts.image not in images:
        have = ", ".join(sorted(images)) or "none"
        raise RunError(f"image format {opts.image!r} is not in this build (have: {have})")
    if not check_files:
        return Path(images[opts.image]["file"])
    kernel = image_dir / images[opts.image]["file"]
    if not kernel.is_file():
        raise RunError(f"{kernel}: missing")
    if shutil.which(opts.qemu) is None:
        raise RunError(f"{opts.qemu} not found (apt-get install qemu-system-x86)")
    return kernel


def qemu_argv(manifest: Manifest, image_dir: Path, opts: RunOptions, accel: str,
              check_files: bool = True, host_clock: tuple[int, Path] | None = None,
              firmware: FirmwareFiles | None = None) -> list[str]:
    """QEMU's command line.  ``host_clock`` (hostclock= value, QMP socket): start
    paused with a QMP socket, for :func:`resume_at`.  ``firmware``: the files
    of this boot's firmware (efi and disk formats; see :func:`firmware_files`)."""
    image = _image_path(manifest, image_dir, opts, check_files)
    builtin = manifest.get("cmdline_builtin")
    if builtin is not None:
        _check_builtin(manifest, opts)
    elif opts.image in FIRMWARE_FORMATS:
        raise RunError(f"{image_dir}: the {opts.image} image has no built-in command line")
    if opts.forward and not manifest["network"]:
        raise RunError(f"--forward {' '.join(opts.forward)}: {image_dir} has no network "
                       "(its kernel has no virtio-net driver: add the net and virtio-net "
                       "recipes to forward ports to it)")
    network = bool(manifest["network"])
    machine, nic = _machine(opts)
    argv = [opts.qemu, "-M", machine, "-accel", accel, "-m", opts.memory,
            "-smp", str(opts.smp), "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot"]
    if opts.image in FIRMWARE_FORMATS:
        argv += _firmware_args(opts, image, firmware, check_files)
    elif builtin is not None:
        argv += ["-kernel", str(image)]
    else:
        argv += ["-kernel", str(image), "-append",
                 kernel_cmdline(manifest["cmdline"], manifest["args"], opts, network, accel,
                                host_clock[0] if host_clock is not None else None,
                                manifest["init_arg_limit"],
                                host_tsc_khz() if accel == "tcg" else None)]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if host_clock is not None:
        argv += ["-S", "-qmp", f"unix:{host_clock[1]},server=on,wait=off"]
    if network:
        fwds = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in _forwards(opts.forward))
        argv += ["-netdev", f"user,id=n0{fwds}", *nic]
    return argv + list(opts.qemu_args)


def split_forward(spec: str) -> tuple[int, int]:
    """``HOST:GUEST`` TCP ports; ValueError if it is not that."""
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if not m:
        raise ValueError(f"{spec!r}: expected HOST:GUEST ports, e.g. 8080:80")
    ports = int(m.group(1)), int(m.group(2))
    if not all(1 <= port <= 65535 for port in ports):
        raise ValueError(f"{spec!r}: ports are 1 to 65535")
    return ports


def _forwards(specs: Sequence[str]) -> list[tuple[int, int]]:
    try:
        return [split_forward(f) for f in specs]
    except ValueError as e:
        raise RunError(f"--forward {e}") from None


# --- running ----------------------------------------------------------------

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


def run_image(image_dir: Path, opts: RunOptions, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Boot, stream the console to ``out``, return the app's exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    manifest = load_manifest(image_dir)
    accel = choose_accel(opts, err)
    tmp = Path(tempfile.mkdtemp(prefix="ukl-run-"))
    try:
        return _run(manifest, image_dir, opts, accel, tmp, out, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Console:
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


def _kill_after(proc: subprocess.Popen[bytes],
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


def firmware_files(manifest: Manifest, image_dir: Path, opts: RunOptions,
                   tmp: Path) -> FirmwareFiles | None:
    """The files a firmware boot needs, made in ``tmp``: a copy of the variable store
    and, for the efi format, the directory QEMU shows the firmware as a FAT drive."""
    if opts.image not in FIRMWARE_FORMATS or opts.image not in manifest["images"]:
        return None
    src = Path(opts.firmware_vars) if opts.firmware_vars else OVMF_DIR / OVMF_VARS
    try:
        shutil.copyfile(src, tmp / "vars.fd")
    except OSError as e:
        raise RunError(f"{src}: cannot copy the UEFI variable store: {e.strerror}"
                       + (" (apt-get install ovmf)" if not opts.firmware_vars else "")) from None
    esp = None
    if opts.image == "efi":
        esp = tmp / "esp"
        (esp / "EFI" / "BOOT").mkdir(parents=True)
        try:
            shutil.copyfile(image_dir / manifest["images"]["efi"]["file"],
                            esp / "EFI" / "BOOT" / "BOOTX64.EFI")
        except OSError as e:
            raise RunError(f"{image_dir}: cannot copy the efi image: {e.strerror}") from None
    return FirmwareFiles(tmp / "vars.fd", esp)


def _run(manifest: Manifest, image_dir: Path, opts: RunOptions, accel: str,
         tmp: Path, out: TextIO, err: TextIO) -> int:
    start_ns = time.time_ns() + HOST_CLOCK_LEAD_NS
    # The host's clock goes on the command line: not for images that carry theirs.
    clock = accel == "tcg" and "cmdline_builtin" not in manifest
    host_clock = (start_ns, tmp / "qmp.sock") if clock else None
    argv = qemu_argv(manifest, image_dir, opts, accel, host_clock=host_clock,
                     firmware=firmware_files(manifest, image_dir, opts, tmp))
    print(f"[ukl-build] booting {manifest.get('name', image_dir.name)} "
          f"({opts.image}, {opts.machine}, {accel})", file=err, flush=True)
    start = time.monotonic()
    interactive = sys.stdin is not None and sys.stdin.isatty() and out is sys.stdout
    restore = raise_on_termination(lambda signum: SystemExit(128 + signum))  # QEMU killed
    # QEMU dies with us, even on SIGKILL: no orphaned VM holding the forwarded ports.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=None if interactive else subprocess.DEVNULL,
                            preexec_fn=die_with_parent(signal.SIGKILL))
    assert proc.stdout is not None and proc.stderr is not None
    qemu_err: list[bytes] = []
    stderr = proc.stderr
    err_thread = threading.Thread(target=lambda: qemu_err.extend(stderr), daemon=True)
    err_thread.start()
    timer, timed_out = _kill_after(proc, opts.timeout)
    console = _Console(out)
    try:
        if host_clock is not None:
            try:
                late = resume_at(host_clock[1], host_clock[0], proc)
            except RunError as e:  # QEMU refused to start: its own words say why
                proc.kill()
                proc.wait()
                err_thread.join(timeout=2)
                said = b"".join(qemu_err).decode(errors="replace").strip()
                raise RunError(f"{e}\n    QEMU said: {said[-1000:]}" if said else str(e)) \
                    from None
            if late > 5_000_000:
                print(f"[ukl-build] QEMU started up to {late / 1e6:.0f} ms late: the guest's "
                      "wall clock is up to that much behind", file=err, flush=True)
        for raw in proc.stdout:
            console.feed(raw)
            if console.refused is not None:  # the firmware would wait for a key press
                proc.kill()
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
    if timed_out.is_set():
        print(f"[ukl-build] timeout: VM stopped after {opts.timeout:g} s", file=err, flush=True)
        return EXIT_TIMEOUT
    return _outcome(console, time.monotonic() - start, proc.returncode, qemu_err, err)


def _outcome(console: _Console, elapsed: float, qemu_status: int, qemu_err: list[bytes],
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


def default_run() -> RunDefaults:
    """RunOptions' own defaults: the one place they live (settings.RunSettings uses them too)."""
    base = RunOptions()
    return {"accel": base.accel, "machine": base.machine, "memory": base.memory,
            "smp": base.smp, "forward": list(base.forward)}


def run_defaults(manifest: Manifest) -> RunDefaults:
    """The image's ``run`` table over RunOptions' own defaults."""
    out = default_run()
    out.update(manifest["run"])
    return out


_N = TypeVar("_N", int, float)


def _parsed(text: str, convert: Callable[[str], _N], noun: str) -> _N:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def _timeout(text: str) -> float:
    """``--timeout``: seconds, finite, at least one (a boot takes longer than that)."""
    value = _parsed(text, float, "a number of seconds")
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a finite number of seconds, at least 1 (leave the option out "
            "for no timeout)")
    return value


def _vcpus(text: str) -> int:
    """``--smp``: a whole number of virtual CPUs, 1 to 255."""
    value = _parsed(text, int, "a whole number of CPUs")
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{value}: give 1 to 255 virtual CPUs")
    return value


_MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?", re.IGNORECASE)  # as run.memory in settings


def _memory(text: str) -> str:
    """``--memory``: QEMU's size syntax, e.g. 256M or 1G."""
    if not _MEMORY.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 256M or 1G")
    return text


def add_run_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """Run options; ``defaults`` from :func:`run_defaults` (None: filled in later)."""
    parser.add_argument("--accel", choices=typing.get_args(Accel), default=defaults.get("accel"),
                        help="accelerator; auto probes KVM with a short timeout (default: %(default)s)")
    parser.add_argument("--machine", choices=typing.get_args(Machine), default=defaults.get("machine"))
    parser.add_argument("--memory", "-m", type=_memory, default=defaults.get("memory"),
                        help="guest memory, e.g. 256M or 1G")
    parser.add_argument("--smp", type=_vcpus, default=defaults.get("smp"),
                        help="virtual CPUs (1-255)")
    parser.add_argument("--forward", "-p", action="append", metavar="HOST:GUEST",
                        help="forward a host TCP port (127.0.0.1) to a guest port")
    parser.add_argument("--timeout", type=_timeout, default=None,
                        help="stop the VM after this many seconds, at least 1 "
                             "(exit status 124; default: none)")
    parser.add_argument("--format", "--image", dest="image", default=None,
                        choices=("bzimage", "pvh", *FIRMWARE_FORMATS),
                        help="which image format to boot (default: the first one built)")
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--cmdline", default="", help="extra kernel command line")
    parser.add_argument("--kernel-log", action="store_true", help="show the kernel's boot messages")
    parser.add_argument("--firmware-vars", metavar="FILE", default=None,
                        help="efi/disk: UEFI variable store to start from (copied per boot)")
    parser.add_argument("--secure-boot", action="store_true",
                        help="efi/disk: OVMF's Secure Boot build (needs --firmware-vars "
                             "with your certificate enrolled)")
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


def options_from_args(ns: argparse.Namespace, defaults: Mapping[str, Any]) -> RunOptions:
    """Options given on the command line, else the image's ``run`` defaults."""
    def pick(name: str) -> Any:
        value = getattr(ns, name)
        return defaults[name] if value is None else value

    forward = ns.forward if ns.forward is not None else list(defaults["forward"])
    return RunOptions(accel=pick("accel"), machine=pick("machine"), memory=pick("memory"),
                      smp=pick("smp"), forward=forward, timeout=ns.timeout,
                      image=ns.image or defaults.get("image", RunOptions.image), qemu=ns.qemu,
                      extra_cmdline=ns.cmdline, kernel_log=ns.kernel_log,
                      args=getattr(ns, "app_args", None), qemu_args=list(ns.qemu_arg),
                      firmware_vars=ns.firmware_vars, secure_boot=ns.secure_boot)


def launcher_main(image_dir: Path, argv: Sequence[str] | None = None) -> int:
    """Entry point of an installed app wheel: ``python -m <app> [options]``."""
    try:
        manifest = load_manifest(image_dir)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    defaults = run_defaults(manifest)
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
