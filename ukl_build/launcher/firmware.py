"""UEFI firmware boots (the efi and disk formats): OVMF and the files of one boot."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .manifest import Manifest
from .options import FIRMWARE_FORMATS, RunError, RunOptions

# Debian's ovmf package: UEFI firmware for q35 (code read-only, variables per boot).
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_CODE_SECURE_BOOT = "OVMF_CODE_4M.secboot.fd"  # needs SMM: Secure Boot variables stay locked
OVMF_VARS = "OVMF_VARS_4M.fd"  # empty variable store: Secure Boot off


@dataclass(frozen=True)
class FirmwareFiles:
    """What one firmware boot writes or assembles: its own files, in a temporary directory."""

    vars: Path  # a copy of the UEFI variable store (the firmware writes to it)
    esp: Path | None  # efi format: a directory holding EFI/BOOT/BOOTX64.EFI


def firmware_args(opts: RunOptions, kernel: Path, files: FirmwareFiles | None,
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
