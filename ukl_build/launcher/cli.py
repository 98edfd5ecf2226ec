"""The launcher's command line (``python -m <app>``, and ``ukl_build run``'s options)."""

from __future__ import annotations

import argparse
import math
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .manifest import load_manifest, run_defaults
from .options import FIRMWARE_FORMATS, Accel, Machine, RunError, RunOptions
from .run import run_image

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
                        help="forward a host TCP port (127.0.0.1) to a guest port; opened "
                             "when the guest listens on it")
    parser.add_argument("--forward-at-start", action="store_true",
                        help="open the forwards when QEMU starts instead (a client that "
                             "connects during the boot waits for TCP's retransmission)")
    parser.add_argument("--volume", "-v", dest="volumes", action="append", default=[],
                        metavar="NAME=PATH",
                        help="the file backing the image's volume NAME (created and "
                             "formatted if it does not exist; without it, a scratch file "
                             "that ends with the VM)")
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
                      smp=pick("smp"), forward=forward, volumes=list(ns.volumes),
                      forward_at_start=ns.forward_at_start, timeout=ns.timeout,
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
