"""The kernel command line of a boot, and a model of how the kernel parses it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .options import RunError, RunOptions

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


# The first virtio-mmio transport of QEMU's microvm (acpi=off): 512 bytes at 0xfeb00000, IRQ 5.
MICROVM_NIC_PARAM = "virtio_mmio.device=512@0xfeb00000:5"


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
