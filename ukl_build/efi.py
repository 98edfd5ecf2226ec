"""Stage 7a: the UEFI formats: the kernel as an EFI application (signed or not), and a disk.

``efi``: the bzImage of a kernel built with ``CONFIG_EFI_STUB`` is a PE/COFF
EFI application already; with ``[tool.ukl-build.sign]`` sbsigntool signs it
for Secure Boot.  ``disk``: a raw GPT disk whose EFI system partition (FAT32)
holds it as ``\\EFI\\BOOT\\BOOTX64.EFI``, the path UEFI firmware boots from
removable media and disks without boot entries.

The disk is built with maintained tools that write to a file, so no root and
no loop devices: sfdisk (util-linux) writes the GPT, mtools formats the FAT
file system inside it and copies the file in.  Neither tool leaves anything
to chance: the disk and partition GUIDs and the volume serial are derived
from the EFI image's digest, and mtools takes its timestamps from
SOURCE_DATE_EPOCH, so equal images give equal disks.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ukl_build.errors import BuildError, ConfigError
from ukl_build.files import file_sha256
from ukl_build.progress import Reporter

ESP_PATH = "::/EFI/BOOT/BOOTX64.EFI"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # UEFI spec: EFI system partition
SECTOR = 512
MIB = 1 << 20
# FAT32 needs at least 65525 clusters; with 512-byte clusters that is 32 MiB of
# data plus the FATs.  The UEFI spec asks FAT32 of a disk's system partition
# (FAT12/16 only of removable media), and some firmware holds to it.
ESP_MIN = 33 * MIB
_NAMESPACE = uuid.UUID("9a5c4b1e-3f0d-4c59-8a55-7d6b1f0e2c11")  # ukl-build's GUIDs


@dataclass(frozen=True)
class Signer:
    """The Secure Boot signing key and certificate, resolved from ``[tool.ukl-build.sign]``."""

    cert: Path
    key: Path | None  # a PEM file, or
    key_env: str | None  # the name of a variable holding the PEM text
    cert_origin: str  # where each setting came from, for errors
    key_origin: str


def is_efi_application(path: Path) -> bool:
    """A PE/COFF file (MZ header pointing at a PE signature), what UEFI firmware loads."""
    with path.open("rb") as f:
        head = f.read(0x40)
        if len(head) < 0x40 or head[:2] != b"MZ":
            return False
        f.seek(struct.unpack_from("<I", head, 0x3C)[0])
        return f.read(4) == b"PE\0\0"


def make_efi(bzimage: Path, dest: Path, signer: Signer | None, env: dict[str, str],
             reporter: Reporter) -> None:
    """The efi format: the EFI-stub kernel, signed when ``signer`` is given."""
    if not is_efi_application(bzimage):
        raise BuildError(f"efi: {bzimage} is not an EFI application (is CONFIG_EFI_STUB set? "
                         "the efi recipe sets it)")
    if signer is None:
        shutil.copyfile(bzimage, dest)
        return
    _sign(bzimage, dest, signer, env, reporter)


def _sign(src: Path, dest: Path, signer: Signer, env: dict[str, str], reporter: Reporter) -> None:
    if not signer.cert.is_file():
        raise ConfigError(f"{signer.cert_origin}: {signer.cert}: no such file")
    with tempfile.TemporaryDirectory(prefix="ukl-sign-") as tmp:
        if signer.key_env is not None:
            pem = os.environ.get(signer.key_env)
            if not pem:
                raise ConfigError(f"{signer.key_origin}: the environment variable "
                                  f"{signer.key_env} is not set (it holds the PEM private key)")
            key = Path(tmp) / "key.pem"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem if pem.endswith("\n") else pem + "\n")
        else:
            assert signer.key is not None
            key = signer.key
            if not key.is_file():
                raise ConfigError(f"{signer.key_origin}: {key}: no such file")
        reporter.stage("sign", f"signing the EFI image with {signer.cert.name} (sbsign)")
        # The signature's signingTime attribute is the clock's: the build's fixed time
        # instead (libfaketime, clock stopped), so equal inputs give equal signed images.
        # Firmware ignores the time (EDK2 verifies Authenticode without time checks).
        when = time.strftime("%Y-%m-%d %H:%M:%S",
                             time.gmtime(int(env.get("SOURCE_DATE_EPOCH", "0"))))
        reporter.run(["faketime", "-f", when, "sbsign", "--key", key, "--cert", signer.cert,
                      "--output", dest, src],
                     step="sign the EFI image (sbsign)", env={**env, "TZ": "UTC"})
    # A key that does not belong to the certificate makes a signature no firmware accepts.
    reporter.run(["sbverify", "--cert", signer.cert, dest],
                 step="check the signature against the certificate (sbverify)", env=env)


def _guid(efi_digest: str, what: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{efi_digest}:{what}")).upper()


def make_disk(efi: Path, dest: Path, env: dict[str, str], reporter: Reporter) -> None:
    """The disk format: GPT, one EFI system partition (FAT32) holding ``efi`` as BOOTX64.EFI."""
    efi_digest = file_sha256(efi)
    size = efi.stat().st_size
    esp = max(ESP_MIN, -(-(size + MIB) // MIB) * MIB)  # room for FAT metadata, MiB-aligned
    start = MIB  # the first MiB: protective MBR, GPT header and entries, alignment
    total = start + esp + MIB  # the last MiB holds the backup GPT
    tool_env = {**env, "MTOOLSRC": os.devnull, "MTOOLS_SKIP_CHECK": "1"}
    part = f"{dest}@@{start}"
    with dest.open("wb") as f:
        f.truncate(total)
    script = (
        "label: gpt\n"
        f"label-id: {_guid(efi_digest, 'disk')}\n"
        f"first-lba: {start // SECTOR}\n"
        f"start={start // SECTOR}, size={esp // SECTOR}, type={ESP_TYPE}, "
        f"uuid={_guid(efi_digest, 'esp')}, name=\"EFI system partition\"\n"
    )
    script_file = dest.with_name(dest.name + ".sfdisk")
    script_file.write_text(script)
    try:
        reporter.run(["sh", "-c", 'exec sfdisk --no-reread --no-tell-kernel -q "$1" < "$2"',
                      "sfdisk", dest, script_file],
                     step="disk: GPT partition table (sfdisk)", env=tool_env)
    finally:
        script_file.unlink()
    serial = efi_digest[:8]
    reporter.run(["mformat", "-i", part, "-F", "-c", "1", "-T", str(esp // SECTOR),
                  "-H", str(start // SECTOR), "-N", serial, "-v", "UKL-ESP", "::"],
                 step="disk: FAT32 file system (mformat)", env=tool_env)
    reporter.run(["mmd", "-i", part, "::/EFI", "::/EFI/BOOT"],
                 step="disk: \\EFI\\BOOT (mmd)", env=tool_env)
    reporter.run(["mcopy", "-i", part, efi, ESP_PATH],
                 step="disk: BOOTX64.EFI (mcopy)", env=tool_env)
    # Read it back: the file in the disk must be the EFI image, byte for byte.
    check = dest.with_name(dest.name + ".check")
    try:
        reporter.run(["mcopy", "-n", "-i", part, ESP_PATH, check],
                     step="disk: read BOOTX64.EFI back (mcopy)", env=tool_env)
        if file_sha256(check) != efi_digest:
            raise BuildError(f"disk: {ESP_PATH} in {dest} is not the EFI image; not shipping it")
    finally:
        check.unlink(missing_ok=True)
