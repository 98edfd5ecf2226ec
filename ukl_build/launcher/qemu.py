"""QEMU's command line for a boot: machine, image, command line, network."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cmdline import BootClock, ImageLine, host_tsc_khz, kernel_cmdline
from .firmware import FirmwareFiles, firmware_args
from .forward import LISTEN_NOTIFY_PORT, NETDEV_ID
from .manifest import Manifest
from .options import FIRMWARE_FORMATS, RunError, RunOptions
from .volumes import Attached, attach, drive_args, in_order


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


@dataclass(frozen=True)
class BootFiles:
    """What one boot brings beyond the image: QEMU's QMP socket; with ``host_clock_ns``,
    QEMU starts paused and is resumed at that host time (run.resume_at; the kernel is
    told that time); with ``listen``, the forwards open when the guest listens
    (forward.ListenForwarder listens on that socket for QEMU's chardev; needs ``qmp``);
    the efi and disk formats' firmware files (firmware_files())."""

    qmp: Path | None = None
    scratch: Path | None = None  # where volumes without a --volume file get one
    host_clock_ns: int | None = None
    listen: Path | None = None
    firmware: FirmwareFiles | None = None


def _check_request(manifest: Manifest, image_dir: Path, opts: RunOptions) -> None:
    """RunError for what this image cannot do as asked."""
    if manifest.get("cmdline_builtin") is not None:
        _check_builtin(manifest, opts)
    elif opts.image in FIRMWARE_FORMATS:
        raise RunError(f"{image_dir}: the {opts.image} image has no built-in command line")
    if opts.forward and not manifest["network"]:
        raise RunError(f"--forward {' '.join(opts.forward)}: {image_dir} has no network "
                       "(its kernel has no virtio-net driver: add the net and virtio-net "
                       "recipes to forward ports to it)")


def _boot_args(manifest: Manifest, image: Path, opts: RunOptions, accel: str,
               boot: BootFiles, check_files: bool) -> list[str]:
    """How QEMU starts the image: through firmware, or -kernel with our command line
    (none for a kernel that carries its own)."""
    if opts.image in FIRMWARE_FORMATS:
        return firmware_args(opts, image, boot.firmware, check_files)
    if manifest.get("cmdline_builtin") is not None:
        return ["-kernel", str(image)]
    line = ImageLine(manifest["cmdline"], manifest["args"], bool(manifest["network"]),
                     manifest["init_arg_limit"],
                     [v for _, v in in_order(manifest.get("volumes", {}))])
    clock = BootClock(accel, boot.host_clock_ns, host_tsc_khz() if accel == "tcg" else None)
    return ["-kernel", str(image), "-append",
            kernel_cmdline(line, opts, clock, listen_notify=boot.listen is not None)]


def qemu_argv(manifest: Manifest, image_dir: Path, opts: RunOptions, accel: str,
              check_files: bool = True, boot: BootFiles = BootFiles()) -> list[str]:
    """QEMU's command line for booting the image in ``image_dir`` as ``opts`` ask, with
    ``boot``'s files; with ``check_files`` off, without looking at any file (the
    command line a manifest shows)."""
    image = _image_path(manifest, image_dir, opts, check_files)
    _check_request(manifest, image_dir, opts)
    machine, nic = _machine(opts)
    argv = [opts.qemu, "-M", machine, "-accel", accel, "-m", opts.memory,
            "-smp", str(opts.smp), "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot",
            *_boot_args(manifest, image, opts, accel, boot, check_files)]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if boot.host_clock_ns is not None:
        argv.append("-S")
    if boot.qmp is not None:
        argv += ["-qmp", f"unix:{boot.qmp},server=on,wait=off"]
    if manifest["network"]:
        argv += _network_args(forwards(opts.forward), nic, boot.listen)
    argv += drive_args(_volumes(manifest, opts, boot, check_files), opts.machine)
    return argv + list(opts.qemu_args)


def _volumes(manifest: Manifest, opts: RunOptions, boot: BootFiles,
             check_files: bool) -> list[Attached]:
    """The image's volumes with their files; the command line a manifest shows names
    each NAME.img."""
    volumes = manifest.get("volumes", {})
    if not check_files and not opts.volumes:
        return [Attached(name, v, Path(f"{name}.img")) for name, v in in_order(volumes)]
    return attach(volumes, opts.volumes, boot.scratch)


def _network_args(fwds: list[tuple[int, int]], nic: list[str], listen: Path | None) -> list[str]:
    """The user network and its NIC; the forwards at once, or (``listen``) when the guest
    listens, told through an isa-debugcon device (forward.ListenForwarder)."""
    if listen is None:
        rules = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in fwds)
        return ["-netdev", f"user,id={NETDEV_ID}{rules}", *nic]
    # Named after its forwards, so that `ps` (and pgrep) still finds the VM by its ports.
    name = " ".join(f"127.0.0.1:{h}->{g}" for h, g in fwds)
    return ["-netdev", f"user,id={NETDEV_ID}", *nic, *(["-name", name] if fwds else []),
            "-chardev", f"socket,id=ukl-listen,path={listen},server=off",
            "-device", f"isa-debugcon,iobase={LISTEN_NOTIFY_PORT:#x},chardev=ukl-listen"]


def split_forward(spec: str) -> tuple[int, int]:
    """``HOST:GUEST`` TCP ports; ValueError if it is not that."""
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if not m:
        raise ValueError(f"{spec!r}: expected HOST:GUEST ports, e.g. 8080:80")
    ports = int(m.group(1)), int(m.group(2))
    if not all(1 <= port <= 65535 for port in ports):
        raise ValueError(f"{spec!r}: ports are 1 to 65535")
    return ports


def forwards(specs: Sequence[str]) -> list[tuple[int, int]]:
    """``--forward`` specs as (host, guest) ports; RunError for a bad one."""
    try:
        return [split_forward(f) for f in specs]
    except ValueError as e:
        raise RunError(f"--forward {e}") from None
