"""Volumes: an image's disks (the manifest's ``volumes``), each backed by a host file
that ``--volume NAME=PATH`` names, created and formatted on first use; without one, a
scratch file that ends with the VM (said on stderr).

The kernel mounts them before the app starts (kernel patch "init: mount volumes
named on the command line"): ``volume=/dev/vdX:DIR:FSTYPE:rw|ro:OPTIONS`` each,
the disks attached in the order of their names, so the kernel names them vda,
vdb, ... in that order.  Standard library only (the wheel's launcher has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypedDict

from .options import RunError

# ext4's defaults, said explicitly (a host's mke2fs.conf can store other defaults in the
# superblock): metadata journalled, data written before the metadata that points to it
# commits, cache flushes ordered around each commit; a file system error makes it
# read-only rather than going on writing.
MOUNT_OPTIONS = {"ext4": "data=ordered,barrier=1,errors=remount-ro"}
MIN_SIZE = 8 << 20  # ext4's journal alone takes 4 MiB of a small file system
MAX_VOLUMES = 6
# QEMU's microvm (acpi=off): virtio-mmio transport i at 0xfeb00000 + 512 i, IRQ 5 + i.
# Transport 0 is the NIC's; transport 3's IRQ 8 is the RTC's.
MICROVM_TRANSPORTS = (1, 2, 4, 5, 6, 7)
_MMIO_BASE = 0xFEB00000
_MMIO_IRQ_BASE = 5


class VolumeRecord(TypedDict):
    mount: str  # the directory in the image
    size: int  # bytes: of the file created on first use
    filesystem: str  # "ext4"
    read_only: bool


@dataclass(frozen=True)
class Attached:
    """A volume with the host file that backs it in this boot."""

    name: str
    record: VolumeRecord
    file: Path
    scratch: bool = False  # no --volume for it: a file of this boot's, deleted after it


def kernel_params(volumes: Sequence[VolumeRecord], machine: str) -> list[str]:
    """The kernel's volume= for each of ``volumes`` (in name order), and on microvm the
    virtio-mmio transports their disks sit on."""
    params = []
    for i, v in enumerate(volumes):
        access = "ro" if v["read_only"] else "rw"
        params.append(f"volume=/dev/vd{chr(ord('a') + i)}:{v['mount']}:{v['filesystem']}:"
                      f"{access}:{MOUNT_OPTIONS[v['filesystem']]}")
        if machine == "microvm":
            t = MICROVM_TRANSPORTS[i]
            params.append(f"virtio_mmio.device=512@{_MMIO_BASE + 512 * t:#x}:{_MMIO_IRQ_BASE + t}")
    return params


def in_order(volumes: Mapping[str, VolumeRecord]) -> list[tuple[str, VolumeRecord]]:
    """The order the disks are attached in, and the kernel names them: by name."""
    return sorted(volumes.items())


def attach(volumes: Mapping[str, VolumeRecord], specs: Sequence[str],
           scratch_dir: Path | None) -> list[Attached]:
    """Each volume of the image with its file from ``specs`` (``NAME=PATH`` each), or a
    scratch file in ``scratch_dir`` (NAME.img); RunError for a malformed, unknown or
    repeated one, and for a read-only one without a file."""
    files = _files(volumes, specs)
    out = []
    for name, record in in_order(volumes):
        if name in files:
            out.append(Attached(name, record, files[name]))
        elif record["read_only"] or scratch_dir is None:
            why = "is read-only" if record["read_only"] else "has no file"
            raise RunError(f"volume {name} ({record['mount']}) {why}: pass "
                           f"--volume {name}=PATH")
        else:
            out.append(Attached(name, record, scratch_dir / f"{name}.img", scratch=True))
    return out


def _files(volumes: Mapping[str, VolumeRecord], specs: Sequence[str]) -> dict[str, Path]:
    """``--volume NAME=PATH`` options by name."""
    files: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise RunError(f"--volume {spec}: expected NAME=PATH")
        if name not in volumes:
            known = ", ".join(sorted(volumes)) or "none"
            raise RunError(f"--volume {spec}: this image has no volume {name!r} "
                           f"(its volumes: {known})")
        if name in files:
            raise RunError(f"--volume {name}: given twice")
        files[name] = Path(path).absolute()
    return files


def drive_args(attached: Sequence[Attached], machine: str) -> list[str]:
    """QEMU's disks, in order.  cache=writeback: the guest's cache flushes (ext4's
    commits, the app's fsync) reach the host file with fdatasync."""
    argv = []
    for i, a in enumerate(attached):
        drive = f"file={a.file},if=none,id=vol-{a.name},format=raw,cache=writeback"
        if a.record["read_only"]:
            drive += ",readonly=on"
        device = (f"virtio-blk-device,drive=vol-{a.name},bus=virtio-mmio-bus."
                  f"{MICROVM_TRANSPORTS[i]}" if machine == "microvm"
                  else f"virtio-blk-pci,drive=vol-{a.name}")
        argv += ["-drive", drive, "-device", device]
    return argv


def prepare(attached: Sequence[Attached], err: TextIO) -> None:
    """Create and format the file of each volume that has none yet; RunError for a
    read-only volume without one or a path that is not a regular file."""
    for a in attached:
        if a.file.exists():
            if not a.file.is_file():
                raise RunError(f"volume {a.name}: {a.file} is not a regular file")
            continue
        if a.record["read_only"]:
            raise RunError(f"volume {a.name} is read-only and {a.file} does not exist: "
                           "a read-only volume's file is not created")
        _create(a, err)
        if a.scratch:
            print(f"[ukl-build] volume {a.name} ({a.record['mount']}): no --volume "
                  f"{a.name}=PATH, so a scratch file that is deleted when the VM ends",
                  file=err, flush=True)


def mkfs_command(filesystem: str) -> str:
    """The formatter's path: on PATH, or in the sbin directories a user's PATH may lack."""
    name = f"mkfs.{filesystem}"
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RunError(f"{name} not found: it formats a volume's new file "
                       "(apt-get install e2fsprogs)")
    return found


def _create(a: Attached, err: TextIO) -> None:
    """A new file system in a sparse file, made beside the target and linked into place:
    an interrupted run leaves no half-formatted volume behind, and of two runs that
    create one volume at once, the second uses the first's (a link never replaces a
    file, where a rename would swap it under a VM that has it open)."""
    if not a.file.parent.is_dir():
        raise RunError(f"volume {a.name}: {a.file.parent} is not a directory")
    mkfs = mkfs_command(a.record["filesystem"])
    tmp = a.file.with_name(f".{a.file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "xb") as f:
            f.truncate(a.record["size"])
        # root_owner: the app runs as root in the image, whoever formats the file; the
        # inode tables and journal are written now, not by a kernel thread during the run.
        result = subprocess.run(
            [mkfs, "-q", "-F", "-L", a.name[:16], "-E",
             "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0", str(tmp)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RunError(f"volume {a.name}: {mkfs} failed (exit status "
                           f"{result.returncode}): {result.stderr.strip()[-500:]}")
        try:
            os.link(tmp, a.file)
        except FileExistsError:
            return
        except OSError as e:
            raise RunError(f"volume {a.name}: cannot create {a.file}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    if not a.scratch:
        print(f"[ukl-build] volume {a.name}: created {a.file} ({a.record['size'] >> 20} MiB, "
              f"{a.record['filesystem']})", file=err, flush=True)
