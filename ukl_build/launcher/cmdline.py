"""The kernel command line of a boot, and a model of how the kernel parses it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .forward import LISTEN_NOTIFY_PORT
from .options import RunError, RunOptions
from .volumes import VolumeRecord, kernel_params

# The kernel's command line as init sees it (lib/cmdline.c next_arg(),
# init/main.c repair_env_string() and set_init_arg()).  x86's
# COMMAND_LINE_SIZE is 2048 bytes with the NUL; the kernel cuts longer ones.
COMMAND_LINE_MAX = 2047
DEFAULT_INIT_ARG_LIMIT = 32  # CONFIG_INIT_ENV_ARG_LIMIT: app arguments the kernel passes on
# The kernel's isspace(): lib/ctype.c counts 0xa0 (Latin-1 NBSP) as space too.
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")


def _cstr(buf: bytearray, start: int) -> bytes:
    return bytes(buf[start:buf.index(0, start)])


def _skip_spaces(line: bytes, pos: int) -> int:
    while pos < len(line) and line[pos] in _KERNEL_SPACE:
        pos += 1
    return pos


def _scan(line: bytes, pos: int, quoted: bool) -> tuple[int, int]:
    """Where the word at ``pos`` ends (a space outside quotes), and the offset of its
    first "=" in it (0: none), as next_arg() finds them."""
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
    return i, equals


def _split_word(raw: bytes, quoted: bool, equals: int) -> tuple[bytes, bool]:
    """What init gets for one word, and whether it had a value: next_arg() cuts it at
    the "=" and drops the value's and the word's closing quotes (NULs in place), then
    repair_env_string() joins param=val again."""
    n = len(raw)
    buf = bytearray(raw) + b"\0"
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
    if val is None:
        return word, False
    return word + b"=" + _cstr(buf, val), True


def _next_arg(line: bytes, pos: int) -> tuple[bytes, bool, int]:
    """One word at ``pos``: (what init gets, whether it had a value, next position)."""
    quoted = line[pos:pos + 1] == b'"'
    if quoted:
        pos += 1
    end, equals = _scan(line, pos, quoted)
    word, has_value = _split_word(line[pos:end], quoted, equals)
    return word, has_value, _skip_spaces(line, end + 1 if end < len(line) else end)


def kernel_init_args(tail: bytes) -> list[bytes]:
    """What the kernel makes of the command line after ``--``: init's argv[1:]."""
    words: list[bytes] = []
    pos = _skip_spaces(tail, 0)
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
# QEMU's local APIC timer runs at 1 GHz: told so (kernel patch 0021), the kernel
# skips calibrating it against the PIT, 220 ms of guest time idle in every boot.
# And freed init memory is left unpoisoned (patch 0022): writing over translated
# init text takes TCG 160 ms; the pages are non-executable and zeroed on reuse.
TCG_BOOT_PARAMS = ("lapic_timer_khz=1000000", "init_poison=off")
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


# The first virtio-mmio transport of QEMU's microvm (acpi=off): 512 bytes at 0xfeb00000, IRQ 5.
MICROVM_NIC_PARAM = "virtio_mmio.device=512@0xfeb00000:5"


@dataclass(frozen=True)
class ImageLine:
    """What an image brings to its kernel command line (its manifest's fields)."""

    cmdline: str
    args: Sequence[str]
    network: bool = False  # a NIC that microvm must be told about
    init_arg_limit: int = DEFAULT_INIT_ARG_LIMIT
    volumes: Sequence[VolumeRecord] = ()  # in the order they are attached


@dataclass(frozen=True)
class BootClock:
    """How the guest's clocks start: under TCG, the host's wall clock when QEMU starts
    the guest (``host_clock_ns``, see HOST_CLOCK_LEAD_NS) and the host's TSC
    frequency (``tsc_khz``, see host_tsc_khz())."""

    accel: str = "tcg"
    host_clock_ns: int | None = None
    tsc_khz: int | None = None


def _platform_params(opts: RunOptions, image: ImageLine, clock: BootClock) -> list[str]:
    """Ours: the console, the reboot method that ends a VM, the clocks, microvm's NIC,
    the volumes."""
    params = ["console=ttyS0", "reboot=t"]
    if clock.accel == "tcg":
        params += [TCG_CLOCK_PARAM, *TCG_BOOT_PARAMS]
        if clock.tsc_khz is not None:
            params.append(f"tsc_early_khz={clock.tsc_khz}")
    if clock.host_clock_ns is not None:
        params.append(f"hostclock={clock.host_clock_ns}")
    if image.network and opts.machine == "microvm":
        params.append(MICROVM_NIC_PARAM)
    return params + kernel_params(image.volumes, opts.machine)


def _app_tail(args: Sequence[str], limit: int) -> list[str]:
    """``--`` and the app's arguments, quoted; RunError if the kernel would not pass
    them exactly."""
    try:
        check_app_args(args, limit)
    except ValueError as e:
        raise RunError(f"app arguments: {e}") from None
    return ["--", quote_app_args(args)] if args else []


def kernel_cmdline(image: ImageLine, opts: RunOptions, clock: BootClock = BootClock(),
                   listen_notify: bool = False) -> str:
    """The kernel command line of a boot: ours, the image's, then ``--`` and the app's argv;
    with ``listen_notify``, the kernel tells the launcher which TCP ports listen
    (forward.ListenForwarder).

    RunError if the kernel would not hand the app its arguments exactly, or
    would cut the line.
    """
    cmdline = [*_platform_params(opts, image, clock), image.cmdline]
    if listen_notify:
        cmdline.append(f"listen_notify={LISTEN_NOTIFY_PORT:#x}")
    if opts.kernel_log:
        cmdline = [" ".join(w for w in c.split() if w != "quiet") for c in cmdline]
        cmdline.append("loglevel=7")
    cmdline.append(opts.extra_cmdline)
    cmdline += _app_tail(opts.args if opts.args is not None else list(image.args),
                         image.init_arg_limit)
    append = " ".join(w for w in cmdline if w)
    size = len(append.encode("utf-8", "surrogateescape"))
    if size > COMMAND_LINE_MAX:
        raise RunError(f"kernel command line is {size} bytes; the kernel keeps only "
                       f"{COMMAND_LINE_MAX} and would drop the rest silently (cmdline, args)")
    return append


def builtin_cmdline(image_cmdline: str, image_args: Sequence[str],
                    init_arg_limit: int = DEFAULT_INIT_ARG_LIMIT,
                    volumes: Sequence[VolumeRecord] = ()) -> str:
    """The command line built into an efi/disk kernel: what firmware boots give it.

    Only what holds on any machine: the serial console, the reboot method
    that ends a VM, the image's own parameters, its volumes (q35's disks, in
    order) and the app's arguments.
    """
    return kernel_cmdline(ImageLine(image_cmdline, image_args, init_arg_limit=init_arg_limit,
                                    volumes=volumes),
                          RunOptions(machine="q35"), BootClock(accel=""))
